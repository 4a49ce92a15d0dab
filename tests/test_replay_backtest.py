"""Bad replay data through the real supervisor and actors: refused before the run (and the
run directory left as it was), or counted where the user sees it; multi-symbol files."""

import csv
import json
import math
import os

import pytest

from tests.sup_util import log_events, run_backtest

pytestmark = pytest.mark.timeout(120)

HDR = "date,symbol,open,high,low,close,volume\n"


def bars(symbols=("AAA",), days=80, start=(2024, 1, 1)):
    """Deterministic daily OHLCV rows, every symbol on every day (shared timestamps)."""
    import datetime as dt

    d0 = dt.date(*start)
    out = []
    for i in range(days):
        day = (d0 + dt.timedelta(days=i)).isoformat()
        for k, s in enumerate(symbols):
            c = round(100 + 10 * math.sin(i / (5 + k)) + i * 0.05, 2)
            o = round(c - 0.5 + (i % 3) * 0.3, 2)
            out.append([day, s, f"{o:.2f}", f"{max(o, c) + 1:.2f}", f"{min(o, c) - 1:.2f}", f"{c:.2f}", "1000"])
    return out


def write(run_dir, name, rows, header=HDR):
    path = os.path.join(run_dir, name)
    with open(path, "w") as f:
        f.write(header + "".join(",".join(r) + "\n" for r in rows))
    return path


def backtest(procs, run_dir, data, *sets):
    inst = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + "-inst.csv")
    with open(inst, "w") as f:
        f.write("symbol,kind,tick_size\nAAA,equity,0.01\nBBB,equity,0.01\n")
    try:
        return run_backtest(procs, run_dir, f'market_data.path="{data}"', f'market_data.instruments="{inst}"',
                            'market_data.symbol=""', "strategy.params={ fast = 2, slow = 5, qty = 10 }", *sets,
                            ok=False)
    finally:
        os.unlink(inst)


def latest(run_dir):
    """The newest backtest's own directory (each backtest has one under the run dir)."""
    return os.path.realpath(os.path.join(run_dir, "latest"))


def init_failure(run_dir, err):
    """The refusal's reason, as the log has it and as the user sees it: stderr's last line, exit 2."""
    [e] = [e for e in log_events(latest(run_dir)) if e["event"] == "actor init failed"]
    assert e["actor"] == "market-data"
    assert err.strip().splitlines()[-1] == f"supervisor: config error: market-data: {e['reason']}", err[-2000:]
    return e["reason"]


def snapshot(d):
    return {n: open(os.path.join(d, n), "rb").read()
            for n in ("fills.csv", "trades.csv", "equity.csv", "summary.json")}


def test_out_of_order_file_is_refused_before_the_run_and_changes_nothing(procs, run_dir, data_dir):
    good = write(data_dir, "good.csv", bars())
    rc, out, err = backtest(procs, run_dir, good)
    assert rc == 0, err[-3000:]
    first = latest(run_dir)
    before = snapshot(first)
    rows = bars()
    rows[40], rows[41] = rows[41], rows[40]  # two days swapped: lines 42 and 43
    bad = write(data_dir, "swapped.csv", rows)
    rc, out, err = backtest(procs, run_dir, bad)
    assert rc == 2
    reason = init_failure(run_dir, err)
    assert (f"{bad}: row 43: timestamp 2024-02-10T00:00:00Z of AAA is before row 42's 2024-02-11T00:00:00Z: "
            "timestamps must increase; set market_data.sort = true") in reason, reason
    assert snapshot(first) == before  # no new fills next to an old summary
    assert not any(os.path.exists(os.path.join(latest(run_dir), n)) for n in ("fills.csv", "summary.json"))
    # With sort = true the same file runs, and gives the good file's results.
    rc, out, err = backtest(procs, run_dir, bad, "market_data.sort=true")
    assert rc == 0, err[-3000:]
    assert snapshot(latest(run_dir))["fills.csv"] == before["fills.csv"]


@pytest.mark.parametrize("case", ["header-only", "bad-row-error", "duplicate"])
def test_unreplayable_files_are_init_failures_naming_file_and_row(procs, run_dir, case, data_dir):
    rows, sets = bars(days=10), []
    if case == "header-only":
        rows, want = [], "no data rows (only a header)"
    elif case == "bad-row-error":
        rows[4][5] = "n/a"
        sets, want = ['market_data.on_bad_row="error"'], "row 6, column 'close': 'n/a' is not a number"
    else:
        rows.insert(3, rows[2])
        want = "row 5: timestamp 2024-01-03T00:00:00Z of AAA repeats row 4's"
    path = write(data_dir, f"{case}.csv", rows)
    rc, out, err = backtest(procs, run_dir, path, *sets)
    assert rc == 2 and "no bars" not in out
    reason = init_failure(run_dir, err)
    assert f"{path}: {want}" in reason, reason
    assert not os.path.exists(os.path.join(latest(run_dir), "summary.json"))


def test_skipped_rows_are_counted_in_the_warning_summary_json_and_text(procs, run_dir, data_dir):
    rows = bars()
    rows[9][3] = ""        # line 11: empty high
    rows[19][4] = "NaN"    # line 21: low not a number
    path = write(data_dir, "holes.csv", rows)
    rc, out, err = backtest(procs, run_dir, path)
    assert rc == 0, err[-3000:]
    summary = json.load(open(os.path.join(latest(run_dir), "summary.json")))
    assert summary["rows_skipped"] == 2 and summary["bars"] == 78
    assert "2 rows skipped" in out
    assert "2 rows of 80 skipped: rows 11, 21" in err  # on the console, tty or not
    [w] = [e for e in log_events(latest(run_dir)) if e["event"] == "actor warning"]
    assert w["actor"] == "market-data" and w["level"] == "warning"
    assert w["warning"].startswith(f"{path}: 2 rows of 80 skipped: rows 11, 21; the first: row 11, "
                                   "column 'high' is empty")


def test_two_symbols_sharing_timestamps_run_to_the_end(procs, run_dir, data_dir):
    path = write(data_dir, "two.csv", bars(("AAA", "BBB")))
    rc, out, err = backtest(procs, run_dir, path)
    assert rc == 0, err[-3000:]
    summary = json.load(open(os.path.join(latest(run_dir), "summary.json")))
    assert summary["bars"] == 80 and summary["rows_skipped"] == 0 and summary["trades"] > 0
    with open(os.path.join(latest(run_dir), "equity.csv")) as f:
        ts = [r[0] for r in list(csv.reader(f))[1:]]
    assert len(ts) == 80 and ts == sorted(set(ts))  # one row per timestamp
    with open(os.path.join(latest(run_dir), "fills.csv")) as f:
        assert {r["symbol"] for r in csv.DictReader(f)} == {"AAA", "BBB"}

"""The two kernels (docs/ARCHITECTURE.md, "Two kernels"): the in-process one and the actors
give byte-identical fills.csv, trades.csv and equity.csv and equal summary.json on the
same config and data; the in-process one keeps the run directory rules and stops in
order on Ctrl+C."""

import json
import os
import signal
import subprocess

import pytest

from tests.harness import PY, wait_for
from tests.sup_util import log_events

pytestmark = pytest.mark.timeout(180)

RESULTS = ("fills.csv", "trades.csv", "equity.csv")


def backtest(procs, run_dir, *sets, cwd=None):
    args = [PY, "supervisor.py", "--config", "config/backtest.toml", "--run-dir", run_dir]
    for s in sets:
        args += ["--set", s]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **({"cwd": cwd} if cwd else {}))
    out, err = p.communicate(timeout=170)
    assert p.returncode == 0, err.decode()[-3000:]
    return os.path.realpath(os.path.join(run_dir, "latest")), out.decode()


def results(d):
    files = {n: open(os.path.join(d, n), "rb").read() for n in RESULTS}
    return files, json.load(open(os.path.join(d, "summary.json")))


def both(procs, run_dir, *sets):
    """The same backtest under each kernel, each in a backtest directory of its own."""
    a, out_a = backtest(procs, os.path.join(run_dir, "inprocess"), "service.kernel=inprocess", *sets)
    b, out_b = backtest(procs, os.path.join(run_dir, "actors"), "service.kernel=actors", *sets)
    assert json.load(open(os.path.join(a, "run.json")))["kernel"] == "inprocess"
    assert "kernel" not in json.load(open(os.path.join(b, "run.json")))
    assert out_a.replace(a, "X") == out_b.replace(b, "X")  # the printed summary too
    return results(a), results(b)


def test_goog_gives_the_same_results_under_both_kernels(procs, run_dir):
    (files_a, summary_a), (files_b, summary_b) = both(procs, run_dir)
    for name in RESULTS:
        assert files_a[name] == files_b[name], name
    assert summary_a == summary_b and summary_a["fills"] == 94 and summary_a["final_equity"] == 1108409.28


def write_generated(path, n, seed=11):
    """A random walk of ``n`` one-minute bars on the cent grid (many equal closes, so SMA
    ties and crosses happen often)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    close = np.round(100.0 + np.cumsum(rng.choice([-0.02, -0.01, 0.0, 0.01, 0.02], n)), 2)
    open_ = np.round(np.concatenate([[100.0], close[:-1]]) + rng.choice([-0.01, 0.0, 0.01], n), 2)
    high = np.round(np.maximum(open_, close) + rng.choice([0.0, 0.01, 0.02], n), 2)
    low = np.round(np.minimum(open_, close) - rng.choice([0.0, 0.01, 0.02], n), 2)
    ts = 1_600_000_000 + 60 * np.arange(n, dtype=np.int64)
    pd.DataFrame({"ts": ts, "open": open_, "high": high, "low": low, "close": close,
                  "volume": rng.integers(100, 10_000, n)}).to_csv(path, index=False, float_format="%.2f")


def gen_sets(data_dir, n):
    path = os.path.join(data_dir, f"gen{n}.csv")
    write_generated(path, n)
    inst = os.path.join(data_dir, "inst.csv")
    with open(inst, "w") as f:
        f.write("symbol,kind,tick_size\nGEN,equity,0.01\n")
    return [f'market_data.path="{path}"', f'market_data.instruments="{inst}"', "market_data.symbol=GEN",
            "market_data.timestamp_column=ts"]


def test_a_generated_100000_bar_file_gives_the_same_results_under_both_kernels(procs, run_dir, data_dir):
    (files_a, summary_a), (files_b, summary_b) = both(procs, run_dir, *gen_sets(data_dir, 100_000))
    for name in RESULTS:
        assert files_a[name] == files_b[name], name
    assert summary_a == summary_b
    assert summary_a["bars"] == 100_000 and summary_a["fills"] > 1000  # it traded: a comparison of substance


STALL = """\
import os
from actors.strategies.sma_cross import SmaCross

class Stall(SmaCross):
    '''SmaCross that, on bar 5000, says so in a file and waits for a byte on a FIFO.'''
    def __init__(self, fifo, **kw):
        super().__init__(**kw)
        self.fifo, self.n = fifo, 0

    def on_bar(self, bar):
        self.n += 1
        if self.n == 5000:
            open(self.fifo + ".reached", "w").close()
            with open(self.fifo, "rb") as f:
                f.read(1)
        super().on_bar(bar)
"""


def test_ctrl_c_stops_the_in_process_kernel_in_order(procs, run_dir, data_dir):
    """SIGINT while a bar is being handled: the run stops at the next batch, exports what
    was traded, records its end (run.json, runs.jsonl, the ledger) and exits 0, writing no
    summary of a run that did not end (as under the actor kernel)."""
    os.mkdir(os.path.join(data_dir, "mystrats"))
    with open(os.path.join(data_dir, "mystrats", "stall.py"), "w") as f:
        f.write(STALL)
    fifo = os.path.join(data_dir, "go")
    os.mkfifo(fifo)
    bt = os.path.join(run_dir, "bt")
    args = [PY, os.path.abspath("supervisor.py"), "--config", os.path.abspath("config/backtest.toml"),
            "--run-dir", bt, "--set", "strategy.plugin=mystrats.stall:Stall",
            "--set", f'strategy.params={{ fifo = "{fifo}", fast = 3, slow = 8, qty = 10 }}',
            *[x for s in gen_sets(data_dir, 20_000) for x in ("--set", s)]]
    p = procs.spawn(args, cwd=data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(fifo + ".reached") or p.poll() is not None, 60, "bar 5000")
    assert p.poll() is None, p.stderr.read().decode()[-3000:]
    p.send_signal(signal.SIGINT)
    with open(fifo, "wb") as f:  # let the plugin go on: the kernel stops at the next batch
        f.write(b"x")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()[-3000:]
    d = os.path.realpath(os.path.join(bt, "latest"))
    rec = json.load(open(os.path.join(d, "run.json")))
    assert rec["exit_code"] == 0 and rec["reason"] == "SIGINT" and rec["ended"]
    stopped = [e for e in log_events(d) if e["event"] == "backtest stopped"]
    assert stopped and 5000 <= stopped[0]["bars"] < 20_000
    with open(os.path.join(d, "fills.csv")) as f:
        assert len(f.read().splitlines()) > 1  # what was traded is exported
    assert not os.path.exists(os.path.join(d, "summary.json")) and "results" not in out.decode()
    import sqlite3
    db = sqlite3.connect(os.path.join(d, "ledger.sqlite"))
    assert db.execute('SELECT "end" IS NOT NULL, end_equity IS NOT NULL FROM runs').fetchall() == [(1, 1)]
    db.close()


@pytest.mark.parametrize("sets,line", [
    (["service.mode=live"], "key service.kernel: \"inprocess\" runs backtests only"),
    (["market_data.feed=synthetic"], "key service.kernel: \"inprocess\" replays a file"),
])
def test_the_in_process_kernel_refuses_what_it_cannot_run(procs, run_dir, sets, line):
    args = [PY, "supervisor.py", "--config", "config/backtest.toml", "--run-dir", run_dir]
    for s in sets:
        args += ["--set", s]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("supervisor: config error: ") and line in last, last
    assert os.listdir(run_dir) == []  # nothing was made


@pytest.mark.parametrize("kernel", ["inprocess", "actors"])
def test_a_full_disk_stops_either_kernel_naming_the_ledger(procs, run_dir, kernel):
    """The 6th fill's write fails as on a full disk (the PAPERBUS_FAULT test hook): exit 1,
    the reason as the last line, in the same words under both kernels; no summary."""
    args = [PY, "supervisor.py", "--config", "config/backtest.toml", "--run-dir", run_dir,
            "--set", f"service.kernel={kernel}"]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env={"PAPERBUS_FAULT": "ledger.fill:ENOSPC:after=5"})
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err.decode()[-2000:]
    d = os.path.realpath(os.path.join(run_dir, "latest"))
    last = err.decode().strip().splitlines()[-1]
    assert last == (f"supervisor: paper-exchange: disk error: writing {d}/ledger.sqlite: "
                    "[Errno 28] No space left on device"), last
    assert not os.path.exists(os.path.join(d, "summary.json"))

"""Run directories: one mode each, backtests kept per run, run history, files a person reads.

Issue 12, "No silent data loss": a backtest run on a directory holding a live
ledger deleted it and exited 0; a live run on a backtest directory inherited the
backtest's GOOG position. Now the directory's mode is checked before anything in
it is touched (actors/rundir.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pty
import re
import shutil
import sqlite3
import subprocess

import pytest

from actors import rundir
from actors.ledger import Ledger, LedgerModeError
from scripts.ctl import request
from tests.harness import PY, ROOT, wait_for
from tests.sup_util import run_backtest as backtest, start_supervisor, status

pytestmark = pytest.mark.timeout(120)

LIVE = ["market_data.rate_hz=50", "strategy.plugin=actors.strategies.pingpong:PingPong",
        "strategy.params={ qty = 1 }", "exchange.export_every_ms=0"]


def tree(d: str) -> dict[str, str]:
    """Every file under d with a hash of its bytes: 'nothing was changed' is then one comparison."""
    out = {}
    for root, _dirs, files in os.walk(d):
        for n in files:
            p = os.path.join(root, n)
            if os.path.islink(p):
                out[os.path.relpath(p, d)] = "-> " + os.readlink(p)
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _ledger_fills(run_dir: str) -> int:
    path = os.path.join(run_dir, "ledger.sqlite")
    if not os.path.exists(path):
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
    except sqlite3.OperationalError:  # created, its tables not yet
        return 0
    finally:
        db.close()


def live_run(procs, run_dir: str, fills: int = 3) -> None:
    """A short live run that trades, shut down in order."""
    before = _ledger_fills(run_dir)
    p = start_supervisor(procs, run_dir, config="config/default.toml", sets=LIVE)
    # Fills of this run, counted in the ledger: a restarted exchange's status may count the
    # ledger's earlier runs too, and a second run would stop before trading.
    wait_for(lambda: _ledger_fills(run_dir) >= before + fills, 30, f"{fills} fills in this run")
    assert request(run_dir, "shutdown", timeout=5).ok
    assert p.wait(30) == 0, p.stderr.read().decode()


def test_backtest_on_a_live_directory_is_refused_and_changes_nothing(procs, run_dir):
    live_run(procs, run_dir)
    before = tree(run_dir)
    code, _out, err = backtest(procs, run_dir, ok=False)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"supervisor: run directory {run_dir} belongs to live trading: its ledger holds 1 run, ")
    assert "fills" in last and "Nothing was changed" in last
    assert tree(run_dir) == before  # not one byte: the ledger, logs, run.json all as they were


def test_live_run_on_a_backtest_directory_is_refused_and_changes_nothing(procs, run_dir):
    backtest(procs, run_dir)
    before = tree(run_dir)
    latest = os.path.realpath(os.path.join(run_dir, "latest"))
    for target in (run_dir, latest):  # the backtest run dir, and one backtest's own directory
        p = procs.spawn([PY, "supervisor.py", "--run-dir", target], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 2, err.decode()
        last = err.decode().strip().splitlines()[-1]
        assert last.startswith(f"supervisor: run directory {target} belongs to backtests (")
        assert "A live run there would trade on from a backtest's positions" in last
    assert "GOOG 100" in last  # what its ledger holds: the position a live run would have inherited
    assert tree(run_dir) == before


def test_each_backtest_keeps_its_own_directory(procs, run_dir):
    backtest(procs, run_dir)
    first = os.readlink(os.path.join(run_dir, "latest"))
    first_files = tree(os.path.join(run_dir, first))
    assert {"fills.csv", "trades.csv", "equity.csv", "summary.json", "report.png", "ledger.sqlite"} <= set(first_files)
    # A failing backtest (a bad strategy param) gets its own directory and leaves the first untouched.
    code, _out, _err = backtest(procs, run_dir, "strategy.params={ fast = 10, slow = 20, qty = -5, bogus = 1 }",
                                ok=False)
    assert code != 0
    second = os.readlink(os.path.join(run_dir, "latest"))
    assert second != first
    assert tree(os.path.join(run_dir, first)) == first_files
    assert not os.path.exists(os.path.join(run_dir, second, "summary.json"))
    # A third, good one: its results are complete and the first's are still there.
    _code, out, _err = backtest(procs, run_dir)
    third = os.readlink(os.path.join(run_dir, "latest"))
    assert len({first, second, third}) == 3
    assert f"results       {os.path.join(run_dir, third)}" in out
    with open(os.path.join(run_dir, first, "fills.csv"), "rb") as a, open(os.path.join(run_dir, third, "fills.csv"),
                                                                          "rb") as b:
        assert a.read() == b.read()  # same config, same data: byte-identical, each in its own place


def test_make_clean_never_deletes_a_ledger(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ledger.sqlite").write_bytes(b"positions")
    (tmp_path / "run-backtest").mkdir()
    (tmp_path / "run-backtest" / "summary.json").write_bytes(b"{}")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "build").mkdir()
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), "clean"], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert not (tmp_path / ".venv").exists() and not (tmp_path / "build").exists()
    assert (tmp_path / "run" / "ledger.sqlite").read_bytes() == b"positions"
    assert (tmp_path / "run-backtest" / "summary.json").exists()


def test_ledger_refuses_the_other_mode(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    led = Ledger(path)
    led.start_run("r1", json.dumps({"service": {"mode": "live"}}), 1000.0, mode="live")
    led.close()
    led = Ledger(path)
    with pytest.raises(LedgerModeError, match="is a live ledger; a backtest run cannot use it"):
        led.start_run("r2", "{}", 1000.0, mode="backtest")
    led.close()
    assert rundir.ledger_facts(path)["runs"] == 1  # the refused run wrote nothing


def test_a_ledger_from_before_the_mode_key_is_read_from_its_config(tmp_path):
    """Ledgers written before meta.mode existed: the config each run recorded says the mode."""
    path = str(tmp_path / "ledger.sqlite")
    led = Ledger(path)
    led.start_run("old", json.dumps({"service": {"mode": "live"}}), 1000.0, mode="live")
    led.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'mode'")
    db.commit()
    db.close()
    assert rundir.dir_mode(str(tmp_path))[0] == "live"
    with pytest.raises(rundir.ModeError, match="belongs to live trading"):
        rundir.check_mode(str(tmp_path), "backtest")


def test_ctl_runs_lists_live_and_backtest_runs(procs, run_dir):
    live_run(procs, run_dir)
    live_run(procs, run_dir)
    r = subprocess.run([PY, "scripts/ctl.py", "runs", "--run-dir", run_dir, "--json"], capture_output=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    runs = json.loads(r.stdout)
    assert len(runs) == 2
    a, b = runs
    assert b["previous_run_id"] == a["run_id"] and a["previous_run_id"] is None
    assert [x["mode"] for x in runs] == ["live", "live"] and [x["exit_code"] for x in runs] == [0, 0]
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    total = db.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
    db.close()
    assert a["fills"] >= 3 and b["fills"] >= 3 and a["fills"] + b["fills"] == total
    assert all(isinstance(x["final_equity"], float) and x["start"] and x["end"] for x in runs)
    table = subprocess.run([PY, "scripts/ctl.py", "runs", "--run-dir", run_dir], capture_output=True, timeout=30,
                           cwd=ROOT).stdout.decode()
    assert table.splitlines()[0].split() == ["RUN_ID", "PREVIOUS", "MODE", "START", "END", "EXIT", "FILLS", "FINAL",
                                            "EQUITY"]
    assert a["run_id"] in table and b["run_id"] in table

    bt = run_dir + "-bt"
    try:
        backtest(procs, bt)
        backtest(procs, bt)
        runs = json.loads(subprocess.run([PY, "scripts/ctl.py", "runs", "--run-dir", bt, "--json"],
                                         capture_output=True, timeout=30, cwd=ROOT).stdout)
        assert [x["mode"] for x in runs] == ["backtest", "backtest"]
        assert [x["fills"] for x in runs] == [94, 94] and [x["final_equity"] for x in runs] == [1108409.28] * 2
        assert runs[1]["run_id"] == os.readlink(os.path.join(bt, "latest"))
    finally:
        shutil.rmtree(bt, ignore_errors=True)


def test_run_files_are_readable_and_private(procs, run_dir):
    backtest(procs, run_dir)
    d = os.path.join(run_dir, "latest")
    with open(os.path.join(d, "fills.csv")) as f:
        fills = list(csv.DictReader(f))
    assert fills[0]["time"] == "2004-11-17T00:00:00Z" and fills[0]["ts"] == "1100649600000000000"
    money = re.compile(r"^-?\d+\.\d{2}$")
    assert all(money.match(r["fee"]) and money.match(r["realized"]) and money.match(r["price"]) for r in fills)
    with open(os.path.join(d, "trades.csv")) as f:
        trades = list(csv.DictReader(f))
    assert trades[0]["entry_time"] == "2004-11-17T00:00:00Z" and trades[0]["exit_time"] == "2004-12-06T00:00:00Z"
    assert all(money.match(t[k]) for t in trades for k in ("pnl", "fees", "net_pnl", "entry_price", "exit_price"))
    with open(os.path.join(d, "equity.csv")) as f:
        eq = list(csv.DictReader(f))
    assert all(money.match(r["equity"]) for r in eq)
    summary = json.loads(open(os.path.join(d, "summary.json")).read())
    for k in report_money_keys():
        v = summary[k]
        assert v is None or round(v, 2) == v, (k, v)
    for k, v in summary.items():  # no binary float noise such as 0.7000000000000739
        if isinstance(v, float):
            assert len(repr(v).split(".")[-1]) <= 10, (k, v)
    # every file in the run dir is private (0600), results included
    loose = [(p, oct(os.stat(os.path.join(root, p)).st_mode & 0o777)) for root, _d, files in os.walk(run_dir)
             for p in files if os.stat(os.path.join(root, p)).st_mode & 0o077]
    assert loose == []


def report_money_keys():
    from actors.report import MONEY_KEYS
    return MONEY_KEYS


@pytest.mark.parametrize("kernel", ["inprocess", "actors"])
def test_progress_bar_ends_its_line_and_finished_line_is_short(procs, run_dir, kernel):
    """On a terminal: the progress bar's line ends before anything else is printed."""
    master, slave = pty.openpty()
    try:
        p = procs.spawn([PY, "supervisor.py", "--config", "config/backtest.toml", "--run-dir", run_dir,
                         "--set", f"service.kernel={kernel}"],
                        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not b:
                break
            chunks.append(b)
        assert p.wait(60) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    # The last draw of the bar is complete and its line ends before the next line.
    bar = re.search(r"\[#{30}\] 2,148/2,148 bars[^\n]*\n", text)
    assert bar, text[-2000:]
    finished = [ln for ln in text.splitlines() if "supervisor: backtest finished" in ln]
    assert len(finished) == 1 and len(re.sub(r"\x1b\[[0-9;]*m", "", finished[0])) <= 160, finished

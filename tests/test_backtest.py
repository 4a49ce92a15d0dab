"""Backtests on the same supervisor and actors: end to end, determinism, parity with backtrader."""

import json
import os

import pytest

from scripts.bt_reference import paperbus_fills, run_backtrader
from tests.sup_util import run_backtest

pytestmark = pytest.mark.timeout(120)


def read(run_dir, name):
    """A result of the latest backtest: each backtest writes into <run_dir>/<run_id>/, `latest` links the newest."""
    with open(os.path.join(run_dir, "latest", name), "rb") as f:
        return f.read()


def test_backtest_end_to_end_and_parity_with_backtrader(procs, run_dir):
    _, out, _ = run_backtest(procs, run_dir)
    res = os.path.join(run_dir, "latest")
    for name in ("fills.csv", "trades.csv", "equity.csv", "summary.json", "report.png"):
        assert os.path.getsize(os.path.join(res, name)) > 0, name
    assert read(run_dir, "report.png")[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(read(run_dir, "summary.json"))
    with open(os.path.join(res, "equity.csv")) as f:
        assert sum(1 for _ in f) == 2148 + 1  # one row per bar, plus the header
    assert "1,108,409.28" in out and "win rate" in out  # the text summary is printed at the end

    # Parity: same fills (date, side, qty, price) and final equity to the cent as backtrader
    bt = run_backtrader()
    ours = [(x.date, x.side, x.qty, x.price) for x in paperbus_fills(res)]
    theirs = [(x.date, x.side, x.qty, x.price) for x in bt.fills]
    assert len(theirs) == 94
    assert ours == theirs
    assert round(summary["final_equity"], 2) == round(bt.final_equity, 2) == 1108409.28
    assert summary["trades"] > 0 and summary["fees"] > 0  # never a summary of zeros


def test_backtest_is_deterministic(procs, run_dir):
    second = run_dir + "-2"
    os.makedirs(second, mode=0o700)
    try:
        run_backtest(procs, run_dir)
        run_backtest(procs, second)
        for name in ("fills.csv", "trades.csv", "equity.csv"):
            assert read(run_dir, name) == read(second, name), name
        # a rerun in the same backtest directory gets a directory (and an empty ledger) of its own
        first = read(run_dir, "fills.csv")
        run_backtest(procs, run_dir)
        assert read(run_dir, "fills.csv") == first
        assert len([d for d in os.listdir(run_dir) if d != "latest"]) == 2
    finally:
        import shutil
        shutil.rmtree(second, ignore_errors=True)

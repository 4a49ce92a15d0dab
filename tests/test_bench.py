"""scripts/bench.py --quick runs in the suite: it must work; its timings are not asserted."""

import subprocess

import pytest

from tests.harness import PY

pytestmark = pytest.mark.timeout(240)


def test_bench_quick_runs_and_prints_every_figure(procs):
    p = procs.spawn([PY, "scripts/bench.py", "--quick"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    new_session=True)
    out, err = p.communicate(timeout=220)
    text = out.decode()
    assert p.returncode == 0, err.decode()[-3000:]
    for needle in ("bars/s", "paperbus in-process kernel", "paperbus actor kernel", "backtesting.py", "raw pyzmq PUB/SUB",
                   "backtrader", "peak RSS", "p50", "raw REQ/REP", "cold start to all READY",
                   "supervisor SIGKILL to last actor gone", "total", "Black-Scholes price + 4 greeks",
                   "synthetic quotes of 54 options", "options backtest, shipped sample"):
        assert needle in text, needle
    # the two kernels agree on the same data, in the bench as in tests/test_kernels.py
    assert "same results from both kernels (fills.csv, trades.csv, equity.csv byte for byte; summary.json): yes" in text

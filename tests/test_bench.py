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
    for needle in ("bars/s", "raw pyzmq PUB/SUB", "backtrader", "p50", "raw REQ/REP", "cold start to all READY",
                   "supervisor SIGKILL to last actor gone", "total"):
        assert needle in text, needle

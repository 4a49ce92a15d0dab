"""scripts/bench_venue.py runs end to end and prints every figure (speed is not asserted)."""

import subprocess

import pytest

from tests.harness import PY, ROOT

pytestmark = pytest.mark.timeout(180)


def test_bench_venue_prints_every_figure():
    r = subprocess.run([PY, "-m", "scripts.bench_venue", "--seconds", "4", "--rounds", "1", "--outage", "1.5",
                        "--hour-rate", "5"], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    for needle in ("venue trade -> strategy on_tick: n=", "reconnect after a 1.5 s outage", "6-minute session",
                   "60-minute session"):
        assert needle in r.stdout, r.stdout

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import Procs  # noqa: E402


@pytest.fixture
def run_dir():
    # Short path: ipc socket paths must fit in sun_path (108 bytes).
    d = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)
    # The dashboard's backtests go beside the run dir by default (scripts/dashboard.py).
    shutil.rmtree(d + "-backtest", ignore_errors=True)


@pytest.fixture
def data_dir(run_dir):
    """Data files beside the run directory (not in it: a backtest directory holds only runs)."""
    d = run_dir + "-data"
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs(run_dir):
    """Spawn processes through this; any survivor fails the test after being killed.

    It asks for ``run_dir`` so that pytest tears it down first: every process is
    gone before the run directory is removed (else a still-running actor could
    write into it while it is being removed, and leave it behind)."""
    p = Procs()
    yield p
    left = p.cleanup()
    assert not left, f"test left processes running: {left}"

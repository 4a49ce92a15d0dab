"""Start the real supervisor for a test and talk to it over its real endpoints.

scripts/testkit.py does the work (the scripts use it too); this binds it to the
``procs`` fixture, so every process is tagged and reaped, and keeps the
supervisor's stdout and stderr in pipes the test can read.
"""

from __future__ import annotations

import subprocess

from scripts import testkit
from scripts.testkit import field, log_events, phase, pid_alive, status, status_now, wait_gone  # noqa: F401
from tests.harness import Procs

DUMMIES = "tests/fixtures/dummies.toml"


def start_supervisor(procs: Procs, run_dir: str, config: str = DUMMIES, sets: list[str] | None = None,
                     env: dict[str, str] | None = None, wait_running: bool = True, timeout: float = 15):
    return testkit.start_supervisor(run_dir, config, sets or [], env, spawn=procs.spawn, wait_running=wait_running,
                                    timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_backtest(procs: Procs, run_dir: str, *sets: str, ok: bool = True, timeout: float = 100) -> tuple[int, str, str]:
    """A backtest through the supervisor's command line, to its end: (exit code, stdout, stderr)."""
    rc, out, err = testkit.run_backtest(run_dir, sets, spawn=procs.spawn, timeout=timeout)
    if ok:
        assert rc == 0, err[-3000:]
    return rc, out, err

"""Start the real supervisor for a test and talk to it over its real endpoints."""

from __future__ import annotations

import json
import os
import time

from scripts.ctl import request
from tests.harness import PY, Procs, wait_for

DUMMIES = "tests/fixtures/dummies.toml"


def start_supervisor(procs: Procs, run_dir: str, config: str = DUMMIES, sets: list[str] | None = None,
                     env: dict[str, str] | None = None, wait_running: bool = True, timeout: float = 15):
    args = [PY, "supervisor.py", "--config", config, "--run-dir", run_dir]
    for s in sets or []:
        args += ["--set", s]
    import subprocess
    p = procs.spawn(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait_running:
        wait_for(lambda: p.poll() is not None or phase(run_dir) == "running", timeout, "supervisor running")
        assert p.poll() is None, f"supervisor exited {p.returncode}: {p.stderr.read().decode()}"
    return p


def status(run_dir: str, timeout: float = 2.0) -> dict | None:
    try:
        return request(run_dir, "status", timeout=timeout).data
    except RuntimeError:
        return None


def status_now(run_dir: str, timeout: float = 10.0) -> dict:
    """The supervisor's status, asking again if one request times out on a loaded machine."""
    return wait_for(lambda: status(run_dir), timeout, "a status reply")


def field(run_dir: str, *keys: str, default=None):
    """One value of the supervisor's status, or ``default`` when the request timed
    out (a loaded machine) or the key is not there yet: safe inside wait_for."""
    d = status(run_dir)
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def phase(run_dir: str) -> str | None:
    if not os.path.exists(os.path.join(run_dir, "endpoints.json")):
        return None
    st = status(run_dir)
    if st is None:
        return None
    if st["phase"] == "running" and all(a["state"] == "running" for a in st["actors"].values()):
        return "running"
    return st["phase"]


def log_events(run_dir: str, process: str = "supervisor") -> list[dict]:
    path = os.path.join(run_dir, "logs", f"{process}.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pid_alive(pid: int) -> bool:
    from tests.harness import pid_state
    st = pid_state(pid)
    return st is not None and st != "Z"


def wait_gone(pids: list[int], timeout: float) -> float:
    t0 = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout, f"pids {pids} gone", interval=0.001)
    return time.monotonic() - t0

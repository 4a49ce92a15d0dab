"""The supervisor's files in the run directory: the lock, run.json, runs.jsonl, endpoints.json.

actors/rundir.py has the rules about a run directory's mode and history; this
module writes what one supervisor's run leaves in it.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import secrets
from typing import Any

import msgspec

import config as config_mod
from actors import rundir
from bus.fileio import atomic_write
from bus.sockets import ensure_run_dir

LOCK_NAME = "supervisor.lock"
ENDPOINTS_NAME = "endpoints.json"
RUN_NAME = rundir.RUN_JSON  # this run's id and the one it follows; "ended" once it shut down in order


class AlreadyRunning(Exception):
    pass


def new_run_id() -> str:
    """Time-ordered and unique: sorting run ids sorts runs by start (ctl runs, backtest dirs)."""
    return dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def acquire_lock(run_dir: str) -> int:
    """Take the run directory's lock or raise AlreadyRunning naming the holder.

    flock is released by the kernel when the holder dies, so a SIGKILLed
    supervisor never leaves a lock that blocks the next start.
    """
    path = os.path.join(run_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            info = {}
        os.close(fd)
        raise AlreadyRunning(f"already running (pid {info.get('pid', '?')}, since {info.get('since', '?')})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": dt.datetime.now().isoformat(timespec="seconds")})
              .encode(), 0)
    return fd


def lock_holder(run_dir: str) -> dict | None:
    """The live supervisor's {pid, since} for a run directory, or None (used by ctl)."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return json.loads(os.pread(fd, 4096, 0) or b"{}") or {"pid": "?"}
            except ValueError:
                return {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_previous_run(run_dir: str) -> dict:
    """The run record the last supervisor in this directory left, or {} (first run / unreadable)."""
    rec = rundir.read_json(os.path.join(run_dir, RUN_NAME))
    return rec if isinstance(rec.get("run_id"), str) else {}


class RunRecord:
    """This run in run.json (replaced atomically) and runs.jsonl (appended): its start, then its end."""

    def __init__(self, run_dir: str, run_id: str, mode: str, config_path: str, extra: dict[str, Any] | None = None):
        self.run_dir, self.run_id, self.mode, self.config_path = run_dir, run_id, mode, config_path
        self.extra = dict(extra or {})  # e.g. {"kernel": "inprocess"}: in run.json and the start line
        self.since = now_iso()
        # A record without "ended" means that supervisor died (SIGKILL, OOM, power): its
        # actors died with it (PDEATHSIG), and this run resumes from the ledger.
        self.previous = read_previous_run(run_dir)
        self.previous_run_id: str | None = self.previous.get("run_id")
        self.previous_clean = bool(self.previous.get("ended")) if self.previous else None

    def write(self, **extra: Any) -> None:
        rec = {"run_id": self.run_id, "previous_run_id": self.previous_run_id, "pid": os.getpid(),
               "since": self.since, "mode": self.mode, **self.extra, **extra}
        atomic_write(os.path.join(self.run_dir, RUN_NAME), json.dumps(rec, indent=2).encode())

    def started(self) -> None:
        self.write()
        rundir.append_history(self.run_dir, {"run_id": self.run_id, "previous_run_id": self.previous_run_id,
                                             "mode": self.mode, "start": self.since, "pid": os.getpid(),
                                             "config": self.config_path, **self.extra})

    def ended(self, exit_code: int, reason: str) -> None:
        """Raises OSError (a full or read-only disk): the caller logs it; the next start sees an unclean end."""
        end = now_iso()
        self.write(ended=end, exit_code=exit_code, reason=reason)
        rundir.append_history(self.run_dir, {"run_id": self.run_id, "end": end, "exit_code": exit_code,
                                             "reason": reason})


def claim_run_dir(run_dir: str, mode: str, run_id: str) -> tuple[str, int]:
    """The directory this run writes in, created private and locked: (its path, the lock's fd).

    A backtest gets a directory of its own under the backtest run directory (and
    ``latest`` points to it): results are never overwritten and never mixed with
    another run's. Raises AlreadyRunning, or OSError naming the path."""
    if mode == "backtest":
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        base, run_dir = run_dir, os.path.join(run_dir, run_id)
    ensure_run_dir(run_dir)
    lock_fd = acquire_lock(run_dir)
    if mode == "backtest":
        rundir.point_latest(base, run_id)
    return run_dir, lock_fd


def write_effective_config(run_dir: str, cfg: config_mod.Config, endpoints: Any) -> str:
    """config.json, what every actor loads: the config after --set, with every endpoint's
    address in it (an actor knows only its own declared endpoints, and a tcp port
    must not depend on which ones a process knows)."""
    path = os.path.join(run_dir, "config.json")
    eff = msgspec.structs.replace(cfg, bus=msgspec.structs.replace(cfg.bus, endpoints=endpoints.as_dict()))
    atomic_write(path, config_mod.to_json_bytes(eff))
    return path


def publish_endpoints(run_dir: str, published: dict[str, Any]) -> None:
    """endpoints.json: where clients find every endpoint (and the CURVE keys, no secret)."""
    atomic_write(os.path.join(run_dir, ENDPOINTS_NAME), json.dumps(published, indent=2).encode())


def unpublish_endpoints(run_dir: str) -> None:
    try:
        os.unlink(os.path.join(run_dir, ENDPOINTS_NAME))
    except OSError:
        pass

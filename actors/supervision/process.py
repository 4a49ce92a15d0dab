"""One actor's OS process (circus: the process): spawn, signal, reap, and what it left behind.

The process runs ``python -m MODULE`` in a process group of its own (a terminal
Ctrl+C reaches only the supervisor), with its stdout and stderr appended to
``logs/<actor>.stderr``; it dies with the supervisor (PR_SET_PDEATHSIG, set by
actors/base.py, checked against ``$PAPERBUS_SUPERVISOR_PID``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from bus import log as logmod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stderr_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, "logs", f"{name}.stderr")


def describe_exit(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


class ActorProcess:
    def __init__(self, popen: subprocess.Popen, stderr_at: int):
        self.popen = popen
        self.stderr_at = stderr_at  # size of logs/<name>.stderr at spawn: what follows is this process's

    @classmethod
    def spawn(cls, module: str, name: str, run_dir: str, config_path: str, run_id: str,
              log: Any) -> "ActorProcess":
        env = dict(os.environ)
        env["PAPERBUS_SUPERVISOR_PID"] = str(os.getpid())
        env["PAPERBUS_RUN_ID"] = run_id
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        errpath = stderr_path(run_dir, name)
        stderr_at = 0
        try:
            err = open(errpath, "ab")
            stderr_at = os.fstat(err.fileno()).st_size
        except OSError as e:  # full or read-only run dir: the actor's stderr goes to ours instead
            log.error("cannot open actor stderr file", actor=name, path=errpath, error=str(e))
            err = None
        try:
            # cwd stays ours so relative paths in the config (data files) mean the same
            # to the actors as to the user; PYTHONPATH finds the project's modules.
            # process_group=0: own group, so a terminal Ctrl+C reaches only the supervisor.
            popen = subprocess.Popen(
                [sys.executable, "-m", module, "--run-dir", run_dir, "--config", config_path,
                 "--name", name, "--run-id", run_id],
                env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL, stdout=err, stderr=err, process_group=0,
                close_fds=True,
            )
        finally:
            if err is not None:
                err.close()
        return cls(popen, stderr_at)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def reap(self) -> bool:
        """Collect the exit status if it exited (waitpid WNOHANG); True once it has."""
        return self.popen.returncode is not None or self.popen.poll() is not None

    def wait(self) -> int:
        return self.popen.wait()

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

def exit_cause(run_dir: str, name: str, proc: ActorProcess | None, init_error: str = "") -> str:
    """The actor's own one-line reason for exiting, or "".

    Its InitFailed reason if that arrived; else the exit_reason it logged on
    the way out (in its log file before it exited, so never late); else, for a
    process that died before its logging was up (a module that does not
    import, a broken install), the last line it wrote to stderr.
    """
    if init_error:
        return init_error
    if proc is None:
        return ""
    rc = proc.returncode or 0
    cause = logmod.last_exit_reason(run_dir, name, proc.pid)
    if cause or rc <= 0:  # killed by a signal: whatever is on stderr is not why
        return cause
    try:
        with open(stderr_path(run_dir, name), "rb") as f:
            f.seek(max(proc.stderr_at, os.fstat(f.fileno()).st_size - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    last = lines[-1]
    return last[len(name) + 2:] if last.startswith(f"{name}: ") else last  # main() prefixes its name


def stderr_tail(run_dir: str, name: str, since: int = 0, n: int = 2000) -> str:
    """The last ``n`` bytes of the actor's stderr file written after offset ``since`` (the file
    is kept across restarts and runs: an earlier process's output is not this one's)."""
    try:
        with open(stderr_path(run_dir, name), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(since, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""

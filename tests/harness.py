"""Test harness: real processes, real sockets, nothing left behind.

Every process a test starts goes through ``Procs.spawn``; it carries an
environment marker (``PAPERBUS_TEST_TAG``) that children inherit, so teardown
can find every descendant, even one reparented to init, kill it and fail the
test that leaked it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

import config as config_mod
from bus.codec import ProtocolError, Stamper
from bus.messages import Heartbeat, Init, Loaded, Run, Stop
from bus.sockets import Endpoints, Received, ensure_run_dir, open_port
# The tests' imports of these predate scripts/testkit.py, where they now live.
from scripts.testkit import PY, child_env, pid_state, pids_with_env, proc_stat, spawn, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
TAG_ENV = "PAPERBUS_TEST_TAG"


class Log:
    """A logger that keeps what it is told, ``(level, event, fields)`` in ``lines``: the
    cores take any object of structlog's shape (a method per level), so tests hand them this."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


class Procs:
    """Spawns tagged processes and guarantees none survive the test."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:12]
        self.popens: list[subprocess.Popen] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return child_env({TAG_ENV: self.tag, **(extra or {})})

    def spawn(self, args: list[str], *, env: dict[str, str] | None = None, new_session: bool = True,
              **kw: Any) -> subprocess.Popen:
        """scripts.testkit.spawn with the tag: a drop-in ``spawn`` for the testkit's functions."""
        p = spawn(args, env={TAG_ENV: self.tag, **(env or {})}, new_session=new_session, **kw)
        self.popens.append(p)
        return p

    def python(self, *args: str, **kw: Any) -> subprocess.Popen:
        return self.spawn([PY, *args], **kw)

    def leftovers(self) -> list[int]:
        return pids_with_env(TAG_ENV, self.tag)

    def cleanup(self) -> list[int]:
        """Kill what the test spawned directly; return the orphans that outlived it.

        The direct children (e.g. a supervisor) are SIGKILLed if still running;
        their own children must then disappear by themselves (PR_SET_PDEATHSIG,
        orphan guard). Anything still tagged after a grace period is an orphan:
        it is killed and reported, which fails the test.
        """
        for p in self.popens:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.popens:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdout, p.stderr, p.stdin):
                if f:
                    f.close()
        left: list[int] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            left = self.leftovers()
            if not left:
                break
            time.sleep(0.02)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


class FakeSupervisor:
    """The supervisor's side of the lifecycle channel, for testing one actor alone."""

    def __init__(self, run_dir: str, cfg: config_mod.Config | None = None, run_id: str = "test-run"):
        self.run_dir = ensure_run_dir(run_dir)
        self.cfg = cfg or config_mod.load()
        self.ctx = zmq.Context()
        self.stamper = Stamper("supervisor", run_id)
        self.endpoints = Endpoints.from_config(self.run_dir, self.cfg.bus)
        self.port = open_port(self.ctx, self.endpoints, "lifecycle", bind=True, stamper=self.stamper)
        self.events: list[tuple[bytes, Any]] = []
        self.heartbeating = True
        self.auto_init = True
        self._next_hb = 0.0

    def write_config(self, cfg: config_mod.Config | None = None) -> str:
        path = os.path.join(self.run_dir, "config.json")
        with open(path, "wb") as f:
            f.write(config_mod.to_json_bytes(cfg or self.cfg))
        return path

    def pump(self, timeout: float) -> list[Received]:
        """Receive for up to ``timeout`` s (sending heartbeats); return what arrived."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.heartbeating and now >= self._next_hb:
                self._next_hb = now + self.cfg.supervisor.heartbeat_ms / 1000
                for ident in {e[0] for e in self.events}:
                    self.port.send(Heartbeat(), to=ident)
            left = deadline - now
            if left <= 0:
                return got
            if self.port.sock.poll(int(min(left, 0.05) * 1000) + 1):
                try:
                    r = self.port.recv()
                except ProtocolError:
                    continue
                self.events.append((r.ident, r.msg))
                got.append(r)
                if isinstance(r.msg, Loaded) and self.auto_init:  # no dependencies here: go at once
                    self.port.send(Init(), to=r.ident)
                if not isinstance(r.msg, Heartbeat):
                    return got

    def wait_msg(self, ident: str, cls: type, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        for i, m in self.events:
            if i == ident.encode() and isinstance(m, cls):
                return m
        while time.monotonic() < deadline:
            for r in self.pump(deadline - time.monotonic()):
                if r.ident == ident.encode() and isinstance(r.msg, cls):
                    return r.msg
        raise AssertionError(f"{ident}: no {cls.__name__} within {timeout}s; saw "
                             f"{[type(m).__name__ for i, m in self.events if i == ident.encode()][-10:]}")

    def send(self, ident: str, msg: Any) -> bool:
        return self.port.send(msg, to=ident.encode())

    def run(self, ident: str) -> None:
        self.send(ident, Run())

    def stop(self, ident: str) -> None:
        self.send(ident, Stop(reason="test"))

    def close(self) -> None:
        self.port.close()
        self.ctx.term()


def actor_cmd(module: str, run_dir: str, config_path: str | None = None, name: str | None = None,
              extra: list[str] | None = None) -> list[str]:
    args = [PY, "-m", module, "--run-dir", run_dir]
    if config_path:
        args += ["--config", config_path]
    if name:
        args += ["--name", name]
    return args + (extra or [])


def read_log(run_dir: str, process: str) -> str:
    p = Path(run_dir) / "logs" / f"{process}.jsonl"
    return p.read_text() if p.exists() else ""


def free_ports(n: int) -> int:
    """A base port with n consecutive free ports on 127.0.0.1, below the kernel's
    ephemeral range: a port from that range can be taken by any outgoing
    connection (our own actors' tcp connects included) between the probe and the
    bind. Every port of the range is probed, not just the first."""
    import random
    import socket
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = 10_000 if ephemeral_low - n > 10_000 else 1024
    for _ in range(200):
        base = random.randrange(low, ephemeral_low - n)
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port range")


def curve_sets(key_dir: str) -> list[str]:
    """Make CurveZMQ keys in ``key_dir`` (as `ctl.py keygen` does) and return the
    --set overrides that give a system on tcp those keys."""
    from bus.security import keygen
    made = keygen(key_dir)
    return [f"bus.curve_server_key={made['server']}", f"bus.curve_client_key={made['client_secret']}",
            f"bus.curve_allowed_clients={made['allowed']}"]

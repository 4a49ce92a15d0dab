"""paperbus supervisor: starts, watches, restarts and reaps the actor processes.

    python supervisor.py [--config PATH] [--run-dir DIR] [--set section.key=value ...]

Modelled on Erlang/OTP supervision with systemd-style readiness:
- single instance per run directory (fcntl.flock, taken before any bind);
- actors start in dependency order (``after``), each only once its
  dependencies are READY; RUN goes to all once all are READY;
- children are reaped on SIGCHLD (no polling, no zombies) and restarted by
  policy (permanent/transient/temporary) with exponential backoff and an
  intensity limit (past it: stop everything, or with ``on_give_up = "disable"``
  leave that one actor failed and run on); ``supervisor.restart_with`` restarts
  dependants together;
- heartbeats both ways; a silent (hung) actor is SIGKILLed and restarted;
- SIGINT/SIGTERM/``ctl shutdown``: STOP in reverse start order, then SIGTERM,
  then SIGKILL; a second Ctrl+C forces it at once;
- children live in their own process groups (a terminal Ctrl+C reaches only
  us) and die with us (PR_SET_PDEATHSIG set in the child, see actors/base.py).

Exit codes: 0 clean shutdown, 1 failure (start failure, restart intensity,
an actor's disk error, already running), 2 config error (ours, or an actor's
refusal of the user's input at start: actors.base.UserError, actor exit code 2).
On any failure the last line on stderr is ``supervisor: <reason>``, the reason
in the failing actor's own words.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

import config as config_mod
from actors import rundir
from actors.base import EXIT_DISK
from actors.progress_bar import ProgressBar
from bus import log as logmod
from bus.codec import ProtocolError, Stamper
from bus.faults import disk_error
from bus.fileio import atomic_write
from bus.liveness import RunGap
from bus.messages import (
    ActorEvent, Command, CommandReply, CtlReply, CtlRequest, Fatal, Finished, Heartbeat, Init, InitFailed, Loaded,
    Ready, Run, Stop, Stopped,
)
from bus.sockets import SPECS, Endpoints, EndpointError, Port, ensure_run_dir, open_port, topic_for

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
LOCK_NAME = "supervisor.lock"
ENDPOINTS_NAME = "endpoints.json"
RUN_NAME = "run.json"  # this run's id and the one it follows; "ended" once it shut down in order


PEER_POLL_S = 0.2  # placement: how often a supervisor asks its peers for their actors' states
PEER_ANSWER_S = 2.0  # placement: an unanswered question to a peer is asked again after this


def place(cfg: config_mod.Config, run_dir: str) -> tuple[config_mod.Config, dict[str, str]]:
    """Placement across supervisors: this one's effective config and the remote actors.

    Actors of other groups are disabled here (their supervisor runs them); their
    names stay in ``after``, and such a dependency is met when the peer
    supervisor reports the actor READY or running. lifecycle and events stay
    local ipc files (each supervisor has its own); control is this group's tcp
    endpoint; every endpoint an actor binds must be tcp so the other group's
    actors reach it. Raises ConfigError.
    """
    pl = cfg.placement
    if not pl.groups:
        return cfg, {}
    remote = {a: g for g, members in pl.groups.items() if g != pl.here for a in members}
    actors = {n: msgspec.structs.replace(a, enabled=False) if n in remote else a for n, a in cfg.actors.items()}
    local_eps = {n: f"ipc://{os.path.join(run_dir, n + '.sock')}" for n in ("lifecycle", "events")}
    bus = msgspec.structs.replace(cfg.bus, endpoints={**cfg.bus.endpoints, **local_eps,
                                                      "control": pl.control[pl.here]})
    eff = msgspec.structs.replace(cfg, actors=actors, bus=bus)
    try:
        eps = Endpoints.from_config(run_dir, bus)
    except EndpointError as e:
        raise config_mod.ConfigError(f"placement: {e}") from None
    for name, spec in SPECS.items():
        if spec.binder != "supervisor" and not eps[name].startswith("tcp://"):
            raise config_mod.ConfigError(
                f"placement: endpoint {name} (bound by {spec.binder}) is {eps[name]}: actors under the other "
                f"supervisors cannot reach it; set bus.transport = \"tcp\" or bus.endpoints.{name}")
    return eff, remote


def new_run_id() -> str:
    """Time-ordered and unique: sorting run ids sorts runs by start (ctl runs, backtest dirs)."""
    return dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def read_previous_run(run_dir: str) -> dict:
    """The run record the last supervisor in this directory left, or {} (first run / unreadable)."""
    try:
        with open(os.path.join(run_dir, RUN_NAME), "rb") as f:
            rec = json.loads(f.read())
        return rec if isinstance(rec, dict) and isinstance(rec.get("run_id"), str) else {}
    except (OSError, ValueError):
        return {}
FINAL_LINE_WAIT_S = 2.0  # how long the last line may wait for a console that is not read
CTL_DEADLINE_S = 1.5  # answer the CLI before its 2 s timeout even if an actor is silent
GATE_WAIT_S = 0.2  # a command waits this long at most for the answer it is ordered after (see FANOUT)
EVENT_REFRESH_S = 1.0  # republish every actor's state so late subscribers catch up


class AlreadyRunning(Exception):
    pass


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


def md_progress(md: "Child | None") -> tuple[int, int]:
    """(bars done, bars in the file) for the progress bar, from market-data's heartbeat
    status and its READY info (a replay's total)."""
    if md is None:
        return 0, 0
    return int(md.status_info.get("fseq", 0) or 0), int(md.info.get("total", 0) or 0)


@dataclass
class Child:
    name: str
    cfg: config_mod.ActorCfg
    state: str = "pending"  # pending starting ready running stopping backoff exited failed
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # monotonic
    ready_at: float = 0.0
    last_seen: float = 0.0
    restarts: int = 0
    consecutive: int = 0  # restarts since the last stable period (drives backoff)
    restart_due: float = 0.0
    init_at: float = 0.0  # monotonic: Init sent (start_timeout for READY counts from here)
    stop_deadline: float = 0.0
    sigterm_sent: bool = False
    restart_after_exit: bool = False  # manual / restart_with: restart regardless of policy, not counted
    stderr_at: int = 0  # size of logs/<name>.stderr at spawn: what follows is this process's
    restart_why: str = ""  # what asked for that restart ("ctl restart", "restart with X")
    detail: str = ""  # why it is "failed" (shown by ctl status and every ActorEvent while it stays so)
    disabled: bool = False  # failed by on_give_up = "disable": the others run on, ctl restart re-enables it
    info: dict[str, Any] = field(default_factory=dict)
    status_info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class CtlJob:
    ident: bytes | None  # None: the supervisor's own job (its outcome is logged, not replied)
    delim: bool
    req: CtlRequest
    waiting: dict[int, str]  # command id -> actor
    results: dict[str, Any]
    deadline: float
    # (actor, command, gate, need_ok), see Supervisor.FANOUT.
    later: list[tuple[str, str, str, bool]] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, cfg: config_mod.Config, run_dir: str, config_path: str,
                 remote: dict[str, str] | None = None, run_id: str | None = None):
        self.cfg = cfg
        self.remote = remote or {}  # placement: actor -> group of the supervisor that runs it
        self.remote_state: dict[str, str] = {}  # last state each peer reported for its actors
        self.run_dir = run_dir
        self.config_path = config_path
        self.order = config_mod.start_order(cfg, config_path)
        self.children = {n: Child(n, cfg.actors[n]) for n in self.order}
        self.run_id = run_id or new_run_id()
        # Always on the console: readable on a terminal, plain lines elsewhere (nohup,
        # systemd, CI, 2>file), so the user sees every event and why it failed.
        self.log = logmod.setup(run_dir, "supervisor", self.run_id, cfg.service.log_level, console=True)
        # Link this run to the one before it in the same directory. A record
        # without "ended" means that supervisor died (SIGKILL, OOM, power): its
        # actors died with it (PDEATHSIG), and this run resumes from the ledger.
        prev = read_previous_run(run_dir)
        self.previous_run_id: str | None = prev.get("run_id")
        self.previous_clean = bool(prev.get("ended")) if prev else None
        if prev:
            log_fn = self.log.info if self.previous_clean else self.log.warning
            log_fn("previous run", previous_run_id=self.previous_run_id, previous_pid=prev.get("pid"),
                   ended=prev.get("ended") or "no (it did not shut down in order; resuming from the ledger)")
        self.hb_s = cfg.supervisor.heartbeat_ms / 1000.0
        self.hb_timeout_s = self.hb_s * cfg.supervisor.heartbeat_misses
        self._run_gap = RunGap(min(2 * self.hb_s, self.hb_timeout_s / 2))
        self.restart_log: list[tuple[float, str]] = []  # (time, actor) of counted restarts (intensity window)
        self.deferred: list[CtlJob] = []  # own commands waiting for their actor to run (see disable())
        self.phase = "starting"  # starting running stopping
        self.exit_code = EXIT_OK
        self.shutdown_reason = ""
        self.started_mono = time.monotonic()
        self.since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.cmd_id = 0
        self.jobs: list[CtlJob] = []
        self._force = False  # a second SIGINT/SIGTERM during shutdown: kill at once
        self._sigchld = False
        self._stop_request: str | None = None
        self._next_hb = 0.0
        self._next_events = 0.0
        self.backtest = cfg.service.mode == "backtest"
        self.finished_text = ""
        self.progress = ProgressBar(sys.stderr) if self.backtest and sys.stderr.isatty() else None
        self.ctx = zmq.Context()
        self.stamper = Stamper("supervisor", self.run_id)
        self.endpoints = Endpoints.from_config(run_dir, cfg.bus)
        self.effective_cfg = os.path.join(run_dir, "config.json")
        atomic_write(self.effective_cfg, config_mod.to_json_bytes(cfg))
        self.lifecycle = self.control = self.events = None
        self.peers: dict[str, Port] = {}
        try:
            self._open_ports(run_dir, cfg)
        except BaseException:
            # A start that fails after binding (port taken, disk full) leaves no
            # socket file, no endpoints.json and no open context behind.
            self.close()
            raise

    def _open_ports(self, run_dir: str, cfg: config_mod.Config) -> None:
        self.lifecycle = open_port(self.ctx, self.endpoints, "lifecycle", bind=True, stamper=self.stamper)
        self.control = open_port(self.ctx, self.endpoints, "control", bind=True, stamper=self.stamper)
        self.events = open_port(self.ctx, self.endpoints, "events", bind=True, stamper=self.stamper)
        atomic_write(os.path.join(run_dir, ENDPOINTS_NAME),  # + where clients find the CURVE keys (no secret)
                     json.dumps(self.endpoints.published(), indent=2).encode())
        self.write_run_record()
        rundir.append_history(run_dir, {"run_id": self.run_id, "previous_run_id": self.previous_run_id,
                                        "mode": self.cfg.service.mode, "start": self.since, "pid": os.getpid(),
                                        "config": self.config_path})
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.poller = zmq.Poller()
        self.poller.register(self.lifecycle.sock, zmq.POLLIN)
        self.poller.register(self.control.sock, zmq.POLLIN)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        # Placement: a control client per peer supervisor whose actors ours wait on.
        self._next_peer_poll = 0.0
        self._peer_wait: dict[str, float] = {}  # group -> until when we wait for its answer
        needed = {self.remote[d] for c in self.children.values() for d in c.cfg.after if d in self.remote}
        for group in sorted(needed):
            bus = msgspec.structs.replace(cfg.bus, endpoints={**cfg.bus.endpoints,
                                                              "control": cfg.placement.control[group]})
            port = open_port(self.ctx, Endpoints.from_config(run_dir, bus), "control", bind=False,
                             stamper=self.stamper)
            self.peers[group] = port
            self.poller.register(port.sock, zmq.POLLIN)

    def write_run_record(self, **extra: Any) -> None:
        rec = {"run_id": self.run_id, "previous_run_id": self.previous_run_id, "pid": os.getpid(),
               "since": self.since, "mode": self.cfg.service.mode, **extra}
        atomic_write(os.path.join(self.run_dir, RUN_NAME), json.dumps(rec, indent=2).encode())

    # ------------------------------------------------------------- signals
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)

    def _on_sigchld(self, *_: Any) -> None:
        self._sigchld = True

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.phase == "stopping" or self._stop_request is not None:
            self._force = True
        else:
            self._stop_request = name

    # ------------------------------------------------------------- children
    # Internal states -> the ActorEvent vocabulary of the protocol.
    EVENT_STATE = {"pending": "stopped", "backoff": "restarting", "loading": "starting", "loaded": "starting"}

    def emit(self, c: Child, detail: str = "") -> None:
        if not detail and c.state == "failed":
            detail = c.detail  # the periodic republish says why too, for subscribers that join late
        self.events.send(ActorEvent(actor=c.name, state=self.EVENT_STATE.get(c.state, c.state),
                                    pid=c.pid, restarts=c.restarts, detail=detail[:4000]),
                         topic=topic_for("events", "actor"), flags=zmq.NOBLOCK)

    def set_state(self, c: Child, state: str, detail: str = "") -> None:
        c.state = state
        self.emit(c, detail)

    def spawn(self, c: Child) -> None:
        env = dict(os.environ)
        env["PAPERBUS_SUPERVISOR_PID"] = str(os.getpid())
        env["PAPERBUS_RUN_ID"] = self.run_id
        root = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        errpath = os.path.join(self.run_dir, "logs", f"{c.name}.stderr")
        # cwd stays ours so relative paths in the config (data files) mean the same
        # to the actors as to the user; PYTHONPATH finds the project's modules.
        try:
            err = open(errpath, "ab")
            c.stderr_at = os.fstat(err.fileno()).st_size
        except OSError as e:  # full or read-only run dir: the actor's stderr goes to ours instead
            self.log.error("cannot open actor stderr file", actor=c.name, path=errpath, error=str(e))
            err = None
        c.info.pop("init_error", None)  # a previous process's
        try:
            # process_group=0: own group, so a terminal Ctrl+C reaches only the supervisor.
            c.proc = subprocess.Popen(
                [sys.executable, "-m", c.cfg.module, "--run-dir", self.run_dir, "--config", self.effective_cfg,
                 "--name", c.name, "--run-id", self.run_id],
                env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL, stdout=err, stderr=err, process_group=0,
                close_fds=True,
            )
        finally:
            if err is not None:
                err.close()
        now = time.monotonic()
        c.started_at = c.last_seen = now
        c.sigterm_sent = False
        self.log.info("actor spawned", actor=c.name, pid=c.pid, module=c.cfg.module)
        self.set_state(c, "loading")

    def send_init(self, c: Child) -> None:
        """Its dependencies are READY: the loaded actor may initialise."""
        self.lifecycle.send(Init(), to=c.name.encode(), flags=zmq.NOBLOCK)
        c.init_at = time.monotonic()
        self.log.info("actor started", actor=c.name, pid=c.pid, module=c.cfg.module)
        self.set_state(c, "starting")

    def deps_up(self, c: Child) -> bool:
        return all((self.children[d].state if d in self.children else self.remote_state.get(d, ""))
                   in ("ready", "running") for d in c.cfg.after if d in self.children or d in self.remote)

    def poll_peers(self, now: float) -> None:
        """Ask peer supervisors for their actors' states (placement); replies land in drain()."""
        if not self.peers or now < self._next_peer_poll:
            return
        self._next_peer_poll = now + PEER_POLL_S
        for group, port in self.peers.items():
            # One question at a time: while a peer is down, requests would queue
            # up in our socket and reach it in a burst when it comes up.
            if now < self._peer_wait.get(group, 0.0):
                continue
            try:
                port.send(CtlRequest(id=group, cmd="status"), flags=zmq.NOBLOCK)
                self._peer_wait[group] = now + PEER_ANSWER_S
            except zmq.Again:  # no connection yet: ask again later
                pass

    def on_peer_reply(self, group: str, msg: Any) -> None:
        self._peer_wait.pop(group, None)
        if not isinstance(msg, CtlReply) or not msg.ok:
            return
        for name, a in (msg.data.get("actors") or {}).items():
            if self.remote.get(name) == group and isinstance(a, dict):
                old = self.remote_state.get(name)
                self.remote_state[name] = str(a.get("state", ""))
                if old != self.remote_state[name]:
                    self.log.info("remote actor", actor=name, group=group, state=self.remote_state[name],
                                  peer_run_id=msg.data.get("run_id"))

    def start_what_can_start(self, now: float) -> None:
        for name in self.order:
            c = self.children[name]
            # Every actor is spawned at once (imports overlap on all cores) and
            # initialises only when Init comes, once its dependencies are READY.
            if c.state == "pending" or (c.state == "backoff" and now >= c.restart_due):
                self.spawn(c)
            elif c.state == "loaded" and self.deps_up(c):
                self.send_init(c)

    def reap(self) -> None:
        self._sigchld = False
        for c in self.children.values():
            if c.proc is not None and c.proc.returncode is None and c.proc.poll() is not None:
                self.on_exit(c)

    def describe_exit(self, rc: int) -> str:
        return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"

    def on_exit(self, c: Child) -> None:
        rc = c.proc.returncode if c.proc else 0
        now = time.monotonic()
        uptime = now - c.started_at
        how = self.describe_exit(rc)
        prev = c.state
        c.status_info = {}  # it described a process that is gone; the next incarnation reports its own
        if rc == EXIT_DISK:
            # A full or read-only run directory: a restart cannot help. Stop the
            # others in order (or, already stopping, make the exit code say so).
            c.state = "failed"
            reason = f"{c.name}: {self.fatal_reason(c) or f'disk error (exit code {EXIT_DISK})'}"
            self.log.error("actor stopped on a disk error", actor=c.name, pid=c.pid, error=reason,
                           uptime_s=round(uptime, 3), next="stop everything, exit 1")
            self.emit(c, reason)
            if self.phase == "stopping":
                if not self.exit_code:
                    self.exit_code, self.shutdown_reason = EXIT_FAIL, reason
            else:
                self.begin_shutdown(reason, EXIT_FAIL)
            return
        if self.phase == "stopping":
            c.state = "exited"
            self.log.info("actor exited", actor=c.name, pid=c.pid, how=how, uptime_s=round(uptime, 3),
                          next="none (shutting down)")
            self.emit(c, how)
            return
        if prev in ("loading", "loaded", "starting") and self.phase == "starting":
            c.state = "failed"
            cause = self.exit_cause(c, rc)
            tail = self.stderr_tail(c)
            self.log.error("actor exited before READY", actor=c.name, pid=c.pid, how=how, reason=cause,
                           uptime_s=round(uptime, 3), next="abort start", **({"stderr_tail": tail} if tail else {}))
            self.emit(c, f"{how}: {cause}" if cause else how)
            self.begin_shutdown(*self.failure(c, rc, f"exited before READY ({how})", cause))
            return
        if self.backtest:
            # A replay cannot be resumed mid-way and stay deterministic: any
            # exit before Finished aborts the backtest.
            c.state = "failed"
            cause = self.exit_cause(c, rc)
            self.log.error("actor exited during backtest", actor=c.name, pid=c.pid, how=how, reason=cause,
                           uptime_s=round(uptime, 3), next="abort backtest")
            self.emit(c, f"{how}: {cause}" if cause else how)
            self.begin_shutdown(*self.failure(c, rc, f"exited during the backtest ({how})", cause))
            return
        # Decide by policy.
        abnormal = rc != 0
        policy = c.cfg.restart
        forced = c.restart_after_exit
        why = c.restart_why or "restart"
        c.restart_after_exit = False
        c.restart_why = ""
        if not forced and (policy == "temporary" or (policy == "transient" and not abnormal)):
            c.state = "exited"
            self.log.warning("actor exited", actor=c.name, pid=c.pid, how=how, uptime_s=round(uptime, 3),
                             next=f"not restarted ({policy})")
            self.emit(c, how)
            return
        if not forced:
            if c.ready_at and now - c.ready_at >= self.cfg.supervisor.stable_seconds:
                c.consecutive = 0
            self.restart_log = [(t, n) for t, n in self.restart_log if now - t < self.cfg.supervisor.max_seconds]
            self.restart_log.append((now, c.name))
            # An actor that may be disabled has a budget of its own: its crash loop
            # neither uses up the others' budget nor gets it blamed for theirs.
            own = c.cfg.on_give_up == "disable"
            n = sum(1 for _t, a in self.restart_log
                    if (a == c.name if own else self.children[a].cfg.on_give_up != "disable"))
            if n > self.cfg.supervisor.max_restarts and own:
                self.disable(c, how, uptime, n)
                return
            if n > self.cfg.supervisor.max_restarts:
                c.state = "failed"
                cause = self.exit_cause(c, rc)
                msg = (f"restart intensity exceeded: {c.name} exited ({how}); "
                       f"{n} restarts within {self.cfg.supervisor.max_seconds:g}s "
                       f"(max_restarts={self.cfg.supervisor.max_restarts})"
                       + (f"; last error: {cause}" if cause else ""))
                c.detail = msg
                self.log.error("restart intensity exceeded", actor=c.name, pid=c.pid, how=how, error=cause,
                               restarts_in_window=n, next="stop everything, exit 1")
                self.emit(c, msg)
                self.begin_shutdown(msg, EXIT_FAIL)
                return
        delay = 0.0 if forced else min(self.cfg.supervisor.backoff_initial_ms * (2 ** c.consecutive),
                                       self.cfg.supervisor.backoff_max_ms) / 1000.0
        if not forced:
            c.consecutive += 1
        c.restarts += 1
        c.restart_due = now + delay
        c.ready_at = 0.0
        c.state = "backoff"
        if forced:  # asked for: an operator's or restart_with's doing, not a failure
            self.log.info("actor exited", actor=c.name, pid=c.pid, how=how, uptime_s=round(uptime, 3),
                          next=f"restart now ({why}; not counted toward restart intensity)", restarts=c.restarts)
            self.emit(c, f"{how}; restarting ({why})")
        else:
            self.log.warning("actor exited", actor=c.name, pid=c.pid, how=how, uptime_s=round(uptime, 3),
                             next=f"restart in {delay:.3f}s", restarts=c.restarts, reason=self.exit_cause(c, rc))
            self.emit(c, f"{how}; restarting")
        # Restart dependants together (e.g. the strategy re-queries the exchange).
        for other in self.cfg.supervisor.restart_with.get(c.name, []):
            o = self.children.get(other)
            if o is not None and o.alive and o.state in ("ready", "running", "starting", "loading", "loaded"):
                self.log.info("restarting with", actor=o.name, because=c.name)
                o.restart_after_exit = True
                o.restart_why = f"restart with {c.name}"
                self.stop_child(o, f"restart with {c.name}")

    def exit_cause(self, c: Child, rc: int) -> str:
        """The actor's own one-line reason for exiting with ``rc``, or "".

        Its InitFailed reason if that arrived; else the exit_reason it logged on
        the way out (in its log file before it exited, so never late); else, for a
        process that died before its logging was up (a module that does not
        import, a broken install), the last line it wrote to stderr.
        """
        if c.info.get("init_error"):
            return c.info["init_error"]
        cause = logmod.last_exit_reason(self.run_dir, c.name, c.pid)
        if cause or rc <= 0:  # killed by a signal: whatever is on stderr is not why
            return cause
        try:
            with open(os.path.join(self.run_dir, "logs", f"{c.name}.stderr"), "rb") as f:
                f.seek(max(c.stderr_at, os.fstat(f.fileno()).st_size - 8192))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        if not lines:
            return ""
        last = lines[-1]
        return last[len(c.name) + 2:] if last.startswith(f"{c.name}: ") else last  # main() prefixes its name

    def failure(self, c: Child, rc: int, what: str, cause: str) -> tuple[str, int]:
        """Shutdown reason and exit code for an actor that failed at start or in a backtest.

        EXIT_CONFIG is an actor refusing the user's input (a plugin, its params, a
        data file; actors.base.UserError): a config error, exit 2, like the
        supervisor's own. Anything else is a failure, exit 1.
        """
        if rc == EXIT_CONFIG:
            return f"config error: {c.name}: {cause or what}", EXIT_CONFIG
        return f"{c.name} {what}" + (f": {cause}" if cause else ""), EXIT_FAIL

    # Actors that send orders and take paused/halted from the exchange (its ledger
    # keeps them): disabling one cancels its open orders there; one that is not
    # running when a pause or resume fans out misses nothing, it reads the state at start.
    ORDER_SENDERS = ("strategy",)
    EXCHANGE = "paper-exchange"

    def disable(self, c: Child, how: str, uptime: float, n: int) -> None:
        """on_give_up = "disable": this actor crash-loops; it stays down, the others run on.

        Its restarts leave the intensity window (a re-enabled actor starts with a
        clean budget). A strategy's open orders are cancelled
        at the exchange (its positions kept, or flattened with flatten_on_disable),
        at once or as soon as the exchange runs."""
        sup = self.cfg.supervisor
        self.restart_log = [(t, a) for t, a in self.restart_log if a != c.name]
        err = self.exit_cause(c, c.proc.returncode if c.proc else 0)
        c.state = "failed"
        c.disabled = True
        # The cause first: it is what a narrow screen keeps.
        c.detail = (f"{how}{': ' + err if err else ''}; disabled: restart intensity exceeded ({n} restarts "
                    f"within {sup.max_seconds:g}s, max_restarts={sup.max_restarts}); "
                    f"`ctl restart {c.name}` re-enables it")
        self.log.error("actor disabled: restart intensity exceeded", actor=c.name, pid=c.pid, how=how, error=err,
                       uptime_s=round(uptime, 3), restarts_in_window=n,
                       next=f"not restarted (on_give_up = disable); the others keep running; "
                            f"`ctl restart {c.name}` re-enables it")
        self.emit(c)
        if c.name not in self.ORDER_SENDERS:
            return
        cmd = "flatten" if c.cfg.flatten_on_disable else "cancel-all"
        if self.EXCHANGE in self.remote:
            self.log.warning("cannot reach the exchange of a disabled actor", actor=c.name, command=cmd,
                             exchange_group=self.remote[self.EXCHANGE],
                             hint=f"run `ctl {'stop-and-close' if cmd == 'flatten' else 'halt'}` on that group's "
                                  "supervisor if its open orders must go")
            return
        if self.EXCHANGE not in self.children:
            return
        job = CtlJob(None, False, CtlRequest(cmd=f"disable {c.name}"), {}, {}, 0.0, args={"reason": f"{c.name} disabled"})
        job.later = [(self.EXCHANGE, cmd, "", False)]
        self.deferred.append(job)
        self.send_deferred()

    def send_deferred(self) -> None:
        """Send the supervisor's own commands whose actor is running now (the exchange
        may be restarting when the strategy is disabled: its rebuilt book still
        holds the strategy's orders, so the cancel must wait for it, not be lost)."""
        keep = []
        for job in self.deferred:
            actor, cmd, _gate, _need_ok = job.later[0]
            c = self.children.get(actor)
            if c is None or not c.alive or c.state != "running":
                keep.append(job)
                continue
            job.later = []
            job.started = time.monotonic()
            job.deadline = job.started + CTL_DEADLINE_S
            self.send_command(job, actor, cmd)
            self.jobs.append(job)
        self.deferred = keep

    def fatal_reason(self, c: Child, timeout: float = 1.0) -> str:
        """The reason an actor sent (Fatal) just before exiting with EXIT_DISK.

        It is sent before the exit but may still be in flight when SIGCHLD is
        handled, so wait for it briefly; only lifecycle messages are handled meanwhile.
        """
        deadline = time.monotonic() + timeout
        while "fatal" not in c.info:
            left = deadline - time.monotonic()
            if left <= 0 or not self.lifecycle.sock.poll(int(left * 1000) + 1):
                break
            try:
                r = self.lifecycle.recv(zmq.NOBLOCK)
            except (zmq.Again, ProtocolError):
                continue
            self.on_lifecycle(r.ident, r.msg)
        return c.info.get("fatal", "")

    def stderr_tail(self, c: Child, n: int = 2000) -> str:
        try:
            with open(os.path.join(self.run_dir, "logs", f"{c.name}.stderr"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop_child(self, c: Child, reason: str) -> None:
        if not c.alive:
            return
        self.lifecycle.send(Stop(reason=reason), to=c.name.encode(), flags=zmq.NOBLOCK)
        c.stop_deadline = time.monotonic() + c.cfg.stop_timeout
        c.state = "stopping"
        self.emit(c, reason)

    def kill_child(self, c: Child, sig: int) -> None:
        if c.alive:
            try:
                os.kill(c.pid, sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------- messages
    def on_lifecycle(self, ident: bytes, msg: Any) -> None:
        c = self.children.get(ident.decode(errors="replace"))
        if c is not None and isinstance(msg, Fatal):  # kept even if its exit was reaped first
            c.info["fatal"] = msg.reason
            return
        if c is None or not c.alive:
            return
        now = time.monotonic()
        c.last_seen = now
        if isinstance(msg, Heartbeat):
            if msg.info:
                c.status_info = dict(msg.info)
        elif isinstance(msg, Loaded):
            if c.state == "loading":
                self.log.info("actor loaded", actor=c.name, pid=c.pid, load_s=round(now - c.started_at, 4))
                self.set_state(c, "loaded")
                if self.deps_up(c):  # at once, not on the next loop round
                    self.send_init(c)
            elif c.state == "stopping":  # told to stop before it had connected: tell it again
                self.lifecycle.send(Stop(reason="shutdown"), to=c.name.encode(), flags=zmq.NOBLOCK)
        elif isinstance(msg, Ready):
            if c.state != "starting":
                return
            c.info = dict(msg.info)
            c.ready_at = now
            self.log.info("actor ready", actor=c.name, pid=c.pid, start_s=round(now - c.started_at, 4),
                          init_s=round(now - c.init_at, 4), **{
                k: v for k, v in c.info.items() if isinstance(v, (int, float, str))})
            for w in c.info.get("warnings") or ():  # e.g. replay rows skipped: said where the user looks
                self.log.warning("actor warning", actor=c.name, warning=str(w))
            self.set_state(c, "ready")
            if self.phase == "running" and all(self.children[d].state == "running" for d in c.cfg.after):
                self.send_run(c)
        elif isinstance(msg, InitFailed):
            self.log.error("actor init failed", actor=c.name, pid=c.pid, reason=msg.reason)
            c.info["init_error"] = msg.reason
        elif isinstance(msg, Stopped):
            self.log.info("actor stopped", actor=c.name, pid=c.pid)
        elif isinstance(msg, Finished):
            if self.progress is not None:  # its last state, then its own line ends
                self.progress.update(now, *md_progress(self.children.get("market-data")), final=True)
                self.progress.close()
            s = msg.summary
            # Short: the summary and where the results are follow on stdout.
            self.log.info("backtest finished", bars=s.get("bars"), fills=s.get("fills"),
                          final_equity=s.get("final_equity"))
            if self.backtest and self._stop_request is None:
                self.finished_text = msg.text + f"\nresults       {self.run_dir}"
                self._stop_request = f"backtest finished ({c.name})"
        elif isinstance(msg, CommandReply):
            for job in self.jobs:
                if msg.id in job.waiting:
                    actor = job.waiting.pop(msg.id)
                    job.results[actor] = {"ok": msg.ok, "error": msg.error, **({"data": msg.data} if msg.data else {})}

    def send_run(self, c: Child) -> None:
        self.lifecycle.send(Run(), to=c.name.encode(), flags=zmq.NOBLOCK)
        self.set_state(c, "running")
        self.log.info("actor running", actor=c.name, pid=c.pid)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        actors = {}
        for n in self.order:
            c = self.children[n]
            actors[n] = {
                "state": c.state, "pid": c.pid if c.alive else None, "restarts": c.restarts,
                "uptime_s": round(now - c.started_at, 3) if c.alive else None,
                "heartbeat_age_s": round(now - c.last_seen, 3) if c.alive else None,
                "info": c.info, "status": c.status_info,
                **({"detail": c.detail} if c.state == "failed" and c.detail else {}),
            }
        return {"run_id": self.run_id, "previous_run_id": self.previous_run_id,
                "previous_clean": self.previous_clean, "pid": os.getpid(), "since": self.since, "phase": self.phase,
                "bad_messages": self.lifecycle.stats["bad"] + self.control.stats["bad"],
                "run_dir": self.run_dir, "uptime_s": round(now - self.started_mono, 3), "actors": actors,
                "log_write_errors": logmod.write_errors(),
                **({"placement": {"here": self.cfg.placement.here, "remote": {
                    a: {"group": g, "state": self.remote_state.get(a, "unknown")} for a, g in self.remote.items()}}}
                   if self.remote else {})}

    # Which actor commands each ctl command fans out to: (actor, command, gate,
    # need_ok). No gate: sent at once. A gate with need_ok: sent only once that
    # actor answered ok, so a refused resume (the exchange is halted) changes
    # nothing anywhere. A gate without: sent once that actor answered, however,
    # or after GATE_WAIT_S: the strategy stops sending before the exchange
    # starts rejecting (no order caught in between), yet a silent strategy never
    # holds up a pause or the kill switch for more than a moment.
    FANOUT = {
        "pause": [("strategy", "pause", "", False), ("paper-exchange", "pause", "strategy", False)],
        "resume": [("paper-exchange", "resume", "", False), ("strategy", "resume", "paper-exchange", True)],
        "stop-and-close": [("strategy", "pause", "", False),
                           ("paper-exchange", "stop-and-close", "strategy", False)],
        "halt": [("strategy", "pause", "", False), ("paper-exchange", "halt", "strategy", False)],
        "unhalt": [("paper-exchange", "unhalt", "", False)],
    }

    def on_control(self, ident: bytes, delim: bool, req: Any) -> None:
        def reply(ok: bool, error: str = "", data: dict | None = None, rid: str = "") -> None:
            self.control.send(CtlReply(id=rid, ok=ok, error=error, data=data or {}), to=ident, delim=delim,
                              flags=zmq.NOBLOCK)

        if not isinstance(req, CtlRequest):
            reply(False, f"expected a ctl request, got {type(req).__name__}")
            return
        cmd = req.cmd
        self.log.info("control request", cmd=cmd, arg=req.arg)
        if cmd == "status":
            reply(True, data=self.status(), rid=req.id)
        elif cmd == "shutdown":
            reply(True, data={"stopping": list(reversed(self.order))}, rid=req.id)
            self._stop_request = "ctl shutdown"
        elif cmd == "restart":
            c = self.children.get(req.arg)
            if c is None and req.arg in self.remote:
                reply(False, f"actor {req.arg} runs under the supervisor of group {self.remote[req.arg]} "
                             f"({self.cfg.placement.control[self.remote[req.arg]]}); ask that one", rid=req.id)
            elif c is None:
                reply(False, f"unknown actor {req.arg!r} (actors: {', '.join(self.order)})", rid=req.id)
            elif self.phase != "running":
                reply(False, f"supervisor is {self.phase}", rid=req.id)
            elif c.disabled and c.state == "failed":
                self.reenable(c)
                reply(True, data={"restarting": c.name, "re-enabled": True,
                                  "message": f"{c.name} re-enabled: starting again"}, rid=req.id)
            elif not c.alive:
                reply(False, f"actor {req.arg} is not running (state {c.state})", rid=req.id)
            else:
                c.restart_after_exit = True
                c.restart_why = "ctl restart"
                self.stop_child(c, "ctl restart")
                reply(True, data={"restarting": c.name, "pid": c.pid}, rid=req.id)
        elif cmd in self.FANOUT:
            if self.phase != "running":
                reply(False, f"supervisor is {self.phase}", rid=req.id)
                return
            job = CtlJob(ident, delim, req, {}, {}, time.monotonic() + CTL_DEADLINE_S)
            job.later = list(self.FANOUT[cmd])
            self.jobs.append(job)
            self.finish_jobs(time.monotonic())
        else:
            reply(False, f"unknown command {cmd!r} (status, pause, resume, stop-and-close, halt, unhalt, restart, "
                         f"shutdown)", rid=req.id)

    def reenable(self, c: Child) -> None:
        """`ctl restart` of a disabled actor: a fresh start with a clean restart record."""
        self.log.info("actor re-enabled", actor=c.name, by="ctl restart", was=c.detail)
        c.disabled = False
        c.detail = ""
        c.consecutive = 0
        c.restarts += 1
        c.state = "pending"  # spawned on this loop round; INIT once its dependencies are up
        self.emit(c, "re-enabled by ctl restart")

    def send_command(self, job: CtlJob, actor: str, cmd: str) -> None:
        self.cmd_id += 1
        job.waiting[self.cmd_id] = actor
        self.lifecycle.send(Command(id=self.cmd_id, cmd=cmd, args=job.args), to=actor.encode(), flags=zmq.NOBLOCK)

    def advance(self, job: CtlJob) -> None:
        """Send what is due of a job's commands; decide those that will not be sent."""
        pending = []
        for step in job.later:
            actor, cmd, gate, need_ok = step
            if gate:
                g = job.results.get(gate)
                if g is None and (need_ok or time.monotonic() - job.started < GATE_WAIT_S):
                    pending.append(step)
                    continue
                if need_ok and not g["ok"]:
                    job.results[actor] = {"ok": False, "skipped": f"not sent: {gate} refused"}
                    continue
            c = self.children.get(actor)
            if c is None and actor in self.remote:  # placement: its own supervisor takes the command
                job.results[actor] = {"ok": True, "skipped": f"runs under group {self.remote[actor]}"}
            elif c is not None and c.disabled and c.state == "failed":
                # Nothing to tell it now; restarted, it takes paused/halted from the exchange.
                job.results[actor] = {"ok": True, "skipped": f"{actor} is disabled (failed); "
                                                             f"`ctl restart {actor}` re-enables it"}
            elif c is not None and actor in self.ORDER_SENDERS and c.state != "running":
                job.results[actor] = {"ok": True, "skipped": f"{actor} is {self.EVENT_STATE.get(c.state, c.state)}; "
                                                             "it takes the exchange's state when it starts"}
            elif c is None or not c.alive or c.state != "running":
                job.results[actor] = {"ok": False, "error": f"{actor} is not running"}
            else:
                self.send_command(job, actor, cmd)
        job.later = pending

    def finish_jobs(self, now: float) -> None:
        keep = []
        for job in self.jobs:
            self.advance(job)
            if (job.waiting or job.later) and now < job.deadline:
                keep.append(job)
                continue
            for actor in job.waiting.values():
                job.results[actor] = {"ok": False, "error": f"{actor} did not answer within {CTL_DEADLINE_S}s"}
            for actor, _cmd, gate, _need_ok in job.later:
                job.results[actor] = {"ok": False, "skipped": f"not sent: no answer from {gate}"}
            ok = bool(job.results) and all(r["ok"] for r in job.results.values())
            errors = "; ".join(f"{a}: {r['error']}" for a, r in job.results.items() if r.get("error"))
            if job.ident is None:  # our own (disabling an actor): the log says how it went
                (self.log.info if ok else self.log.error)(
                    "supervisor command done" if ok else "supervisor command failed", what=job.req.cmd,
                    **{a: r.get("data", {}).get("message") or r.get("error") or r.get("skipped") or "ok"
                       for a, r in job.results.items()})
            else:
                self.control.send(CtlReply(id=job.req.id, ok=ok, error=errors, data={"actors": job.results}),
                                  to=job.ident, delim=job.delim, flags=zmq.NOBLOCK)
        self.jobs = keep

    def drain(self) -> None:
        for port, handler in ((self.lifecycle, "lc"), (self.control, "ctl")):
            for _ in range(1000):
                try:
                    r = port.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ProtocolError as e:
                    self.log.warning("bad message", endpoint=port.name, error=str(e))
                    if port is self.control and e.ident is not None:
                        self.control.send(CtlReply(ok=False, error=str(e)), to=e.ident, delim=e.delim,
                                          flags=zmq.NOBLOCK)
                    continue
                if handler == "lc":
                    self.on_lifecycle(r.ident, r.msg)
                else:
                    self.on_control(r.ident, r.delim, r.msg)
        for group, port in self.peers.items():
            for _ in range(100):
                try:
                    self.on_peer_reply(group, port.recv(zmq.NOBLOCK).msg)
                except zmq.Again:
                    break
                except ProtocolError as e:
                    self.log.warning("bad message from peer supervisor", group=group, error=str(e))

    def wait(self, timeout_s: float) -> None:
        events = self.poller.poll(max(0, int(timeout_s * 1000)))
        for s, _ in events:
            if s == self._wake_r.fileno():
                try:
                    while self._wake_r.recv(256):
                        pass
                except OSError:
                    pass
        if self._sigchld:
            self.reap()
        self.drain()
        if self._sigchld:
            self.reap()

    def heartbeat(self, now: float) -> None:
        if now >= self._next_hb:
            self._next_hb = now + self.hb_s
            for c in self.children.values():
                if c.alive and c.state in ("loaded", "starting", "ready", "running", "stopping"):
                    self.lifecycle.send(Heartbeat(), to=c.name.encode(), flags=zmq.NOBLOCK)
        if now >= self._next_events:
            self._next_events = now + EVENT_REFRESH_S
            for c in self.children.values():
                self.emit(c)

    def check_timeouts(self, now: float) -> None:
        # Judge silence only on silence seen while we ran (bus/liveness.py): after a
        # gap of our own every actor gets a fresh window; otherwise heartbeats that
        # queued up meanwhile are read before anyone is called hung.
        stalled = self._run_gap.gap(now)
        if stalled:
            self.log.warning("supervisor was not running; liveness windows restarted", gap_s=round(stalled, 3))
            for c in self.children.values():
                c.last_seen = max(c.last_seen, now)
        elif any(c.alive and c.state in ("loaded", "ready", "running") and now - c.last_seen > self.hb_timeout_s
                 for c in self.children.values()):
            self.drain()
            now = time.monotonic()
        for c in self.children.values():
            if not c.alive:
                continue
            late = ((c.state == "starting" and now - c.init_at > c.cfg.start_timeout)
                    or (c.state == "loading" and now - c.started_at > c.cfg.start_timeout))
            if late:
                why = (f"no READY within start_timeout {c.cfg.start_timeout:g}s" if c.state == "starting"
                       else f"not loaded within start_timeout {c.cfg.start_timeout:g}s")
                self.log.error("actor start timeout", actor=c.name, pid=c.pid, reason=why)
                self.kill_child(c, signal.SIGKILL)
                if self.phase == "starting":
                    c.proc.wait()
                    c.state = "failed"
                    self.emit(c, why)
                    self.begin_shutdown(f"{c.name}: {why}", EXIT_FAIL)
                    return
            elif c.state in ("loaded", "ready", "running") and now - c.last_seen > self.hb_timeout_s:
                self.log.error("actor hung: heartbeats missed, killing", actor=c.name, pid=c.pid,
                               silent_s=round(now - c.last_seen, 3), misses=self.cfg.supervisor.heartbeat_misses)
                self.kill_child(c, signal.SIGKILL)
                # Reaped on SIGCHLD in a moment; until then, judging it again on every loop
                # round would log (and kill) the same hang many times.
                c.last_seen = now
            elif c.state == "stopping" and now > c.stop_deadline:
                if not c.sigterm_sent:
                    self.log.warning("actor did not stop in time, SIGTERM", actor=c.name, pid=c.pid)
                    self.kill_child(c, signal.SIGTERM)
                    c.sigterm_sent = True
                    c.stop_deadline = now + 1.0
                else:
                    self.log.warning("actor ignored SIGTERM, SIGKILL", actor=c.name, pid=c.pid)
                    self.kill_child(c, signal.SIGKILL)
                    c.stop_deadline = now + 5.0

    def next_timeout(self, now: float) -> float:
        t = min(self._next_hb, self._next_events) - now
        for c in self.children.values():
            if c.state == "backoff":
                t = min(t, c.restart_due - now)
        if self.jobs:
            t = min(t, min(j.deadline for j in self.jobs) - now)
        if self.peers:
            t = min(t, self._next_peer_poll - now)
        return max(0.0, min(t, 0.1))

    # ------------------------------------------------------------- phases
    def begin_shutdown(self, reason: str, code: int) -> None:
        if self.phase == "stopping":
            return
        self.shutdown_reason = reason
        self.exit_code = code
        self.phase = "stopping"
        level = self.log.error if code else self.log.info
        level("shutting down", reason=reason)

    def run(self) -> int:
        self.install_signals()
        self.log.info("supervisor started", run_dir=self.run_dir, config=self.config_path, order=self.order,
                      pid=os.getpid())
        t0 = time.monotonic()
        while self.phase != "stopping":
            now = time.monotonic()
            if self._stop_request is not None:
                self.begin_shutdown(f"{self._stop_request}", EXIT_OK)
                break
            if self.phase == "starting":
                self.start_what_can_start(now)
                if all(c.state == "ready" for c in self.children.values()):
                    for name in self.order:
                        self.send_run(self.children[name])
                    self.phase = "running"
                    self.log.info("all actors running", cold_start_s=round(time.monotonic() - t0, 4))
            else:
                self.start_what_can_start(now)
                self.send_deferred()
                for c in self.children.values():
                    if c.state == "ready" and all(self.children[d].state == "running"
                                                  for d in c.cfg.after if d in self.children):
                        self.send_run(c)
            self.heartbeat(now)
            self.poll_peers(now)
            self.check_timeouts(now)
            self.finish_jobs(now)
            if self.progress is not None:
                self.progress.update(now, *md_progress(self.children.get("market-data")))
            if self.phase == "stopping":
                break
            self.wait(self.next_timeout(time.monotonic()))
        self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        """Stop actors in reverse start order: STOP, stop_timeout, SIGTERM, SIGKILL."""
        t0 = time.monotonic()
        self.phase = "stopping"
        for name in reversed(self.order):
            c = self.children[name]
            if not c.alive:
                continue
            if self._force:
                break
            self.stop_child(c, self.shutdown_reason or "shutdown")
            while c.alive and not self._force:
                now = time.monotonic()
                self.heartbeat(now)
                self.check_timeouts(now)
                self.finish_jobs(now)
                self.wait(0.05)
        if self._force:
            self.log.warning("second interrupt: forcing shutdown")
            for c in self.children.values():
                self.kill_child(c, signal.SIGKILL)
        for c in self.children.values():
            if c.proc is not None and c.proc.returncode is None:
                c.proc.wait()
                self.on_exit(c)
        self.log.info("supervisor exiting", exit_code=self.exit_code, reason=self.shutdown_reason,
                      shutdown_s=round(time.monotonic() - t0, 4))
        try:
            ended = dt.datetime.now().astimezone().isoformat(timespec="seconds")
            self.write_run_record(ended=ended, exit_code=self.exit_code, reason=self.shutdown_reason)
            rundir.append_history(self.run_dir, {"run_id": self.run_id, "end": ended, "exit_code": self.exit_code,
                                                 "reason": self.shutdown_reason})
        except OSError as e:  # the run is over either way; the next start just sees it as unclean
            self.log.error("cannot record the end of the run", error=str(e))
        if self.progress is not None:
            self.progress.close()
        if self.exit_code:
            # The last line, whatever else the console showed: why, in the actor's own words.
            # Waited for a little (a pipe being read slowly), never forever.
            logmod.console_write(f"supervisor: {self.shutdown_reason}\n", wait_s=FINAL_LINE_WAIT_S)
        if self.finished_text:
            print(self.finished_text, flush=True)

    def close(self) -> None:
        try:
            os.unlink(os.path.join(self.run_dir, ENDPOINTS_NAME))
        except OSError:
            pass
        for p in (self.lifecycle, self.control, self.events, *self.peers.values()):
            if p is not None:
                p.close()
        if getattr(self, "_wake_w", None) is not None:
            signal.set_wakeup_fd(-1)  # before the fd closes: a late signal must not write to a reused fd
            self._wake_r.close()
            self._wake_w.close()
        self.ctx.term()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="supervisor.py", description="paperbus supervisor")
    ap.add_argument("--config", default=None, help="config file (default: config/default.toml)")
    ap.add_argument("--run-dir", default=None, help="run directory (default: service.run_dir, ./run)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config key (repeatable)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # Everything the service creates (ledger, WAL, logs, stderr files) is
    # private to the user; the actors inherit this umask.
    os.umask(0o077)
    args = parse_args(argv)
    try:
        cfg = config_mod.load(args.config, args.sets)
        if not cfg.actors:
            raise config_mod.ConfigError(f"{args.config or config_mod.DEFAULT_PATH}: key actors: no actors configured")
    except config_mod.ConfigError as e:
        print(f"supervisor: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir = os.path.abspath(args.run_dir or cfg.service.run_dir)
    run_id = new_run_id()
    try:
        # A run directory belongs to one mode: checked before anything in it is touched.
        rundir.check_mode(run_dir, cfg.service.mode)
    except rundir.ModeError as e:
        print(f"supervisor: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if cfg.service.mode == "backtest":
            # Each backtest in a directory of its own under the backtest run dir:
            # results are never overwritten and never mixed with another run's.
            base = run_dir
            os.makedirs(base, mode=0o700, exist_ok=True)
            run_dir = os.path.join(base, run_id)
        ensure_run_dir(run_dir)
        lock_fd = acquire_lock(run_dir)
        if cfg.service.mode == "backtest":
            rundir.point_latest(base, run_id)
    except AlreadyRunning as e:
        print(f"supervisor: {e}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as e:
        print(f"supervisor: cannot use run directory {run_dir}: {e.strerror}", file=sys.stderr)
        return EXIT_FAIL
    if cfg.service.mode == "backtest" and cfg.service.kernel == "inprocess":
        # The in-process kernel (actors/kernel.py): no actor processes, the same run
        # directory rules (checked, made, locked and linked above) and exit codes.
        from actors import kernel

        try:
            return kernel.run(cfg, run_dir, run_id, str(args.config or config_mod.DEFAULT_PATH))
        finally:
            os.close(lock_fd)
    try:
        cfg, remote = place(cfg, run_dir)
        sup = Supervisor(cfg, run_dir, str(args.config or config_mod.DEFAULT_PATH), remote, run_id=run_id)
    except config_mod.ConfigError as e:
        print(f"supervisor: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except EndpointError as e:
        print(f"supervisor: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except zmq.ZMQError as e:
        print(f"supervisor: cannot bind endpoints in {run_dir}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as e:  # config.json / endpoints.json on a full or read-only disk
        print(f"supervisor: cannot use run directory {run_dir}: {disk_error(e) or e}", file=sys.stderr)
        return EXIT_FAIL
    try:
        return sup.run()
    except BaseException:
        sup.log.exception("supervisor crashed; killing actors")
        for c in sup.children.values():
            sup.kill_child(c, signal.SIGKILL)
        raise
    finally:
        sup.close()
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())

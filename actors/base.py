"""The one Actor lifecycle every actor process uses.

    load config -> LOADED -> wait INIT (sent once every actor this one is
    `after` is READY) -> init() (bind/connect, load data) -> READY -> wait RUN
    -> run loop (one zmq.Poller: lifecycle + the actor's sockets + signal fd;
       heartbeats both ways; timers; background work())
    -> STOP: on_stop() (finish in-flight work, flush) -> STOPPED -> exit 0

Started as ``python -m actors.<name> --run-dir DIR --config PATH``. Exit codes:
0 clean stop, 1 unhandled exception or init failure (traceback in the log),
2 config error or a ``UserError`` (a bad strategy plugin or params, a bad data
file: bad input a restart cannot fix), 3 orphan guard (supervisor heartbeats
stopped), 4 disk error (the run directory is full or read-only:
bus.faults.disk_error; not restarted). Every exit on an error logs, as the
process's last line, an event carrying ``exit_reason``: one line naming the
cause, which the supervisor reads back (bus.log.last_exit_reason) to say why.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import signal
import socket
import sys
import sysconfig
import time
import traceback
from enum import StrEnum
from typing import Any, Callable, ClassVar

import zmq

import config as config_mod
from bus import log as logmod
from bus.codec import ProtocolError, Stamper, register_channel
from bus.faults import DiskError, disk_error
from bus.liveness import RunGap
from bus.messages import (
    Command, CommandReply, Fatal, Heartbeat, Init, InitFailed, Loaded, Ready, Run, Stop, Stopped,
)
from bus.sockets import Endpoints, Port, Received, SocketSpec, open_port

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_ORPHAN = 0, 1, 2, 3
EXIT_DISK = 4  # the run directory refused a write: the supervisor stops everything instead of restarting
ENV_SUPERVISOR_PID = "PAPERBUS_SUPERVISOR_PID"
ENV_RUN_ID = "PAPERBUS_RUN_ID"
_PR_SET_PDEATHSIG = 1
DRAIN_MAX = 256  # messages taken from one socket per poll round, so no socket starves the others
# ... and at most this long: a message can be a 512-bar batch, and a consumer
# whose progress reports release the next batch would otherwise drain forever
# and miss its heartbeats.
DRAIN_BUDGET_S = 0.02


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Die with the parent. Must run first thing in the child (Linux only).

    PR_SET_PDEATHSIG fires when the parent *thread* exits, which is why the
    supervisor spawns from its main thread. After setting it we compare
    getppid() with the pid the supervisor told us: if it already died between
    fork and prctl we were reparented and must leave now.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        return
    expected = os.environ.get(ENV_SUPERVISOR_PID)
    if expected and os.getppid() != int(expected):
        os._exit(EXIT_ORPHAN)


class CommandError(Exception):
    """Raised by on_command for a command the actor refuses; becomes an error reply."""


class UserError(Exception):
    """Bad input from the user that an actor meets: a strategy plugin that cannot be
    loaded or its params, a data file that is missing or malformed. Not a bug, and a
    restart cannot fix it: the actor exits EXIT_CONFIG with the message as its reason,
    and the supervisor exits 2 naming the actor and the message."""


# Frames in these directories are Python's or a library's, not where the user
# (or this project) can fix anything: a failure is located at the innermost other frame.
_LIB_DIRS = tuple(sorted({os.path.join(os.path.realpath(d), "") for k in ("stdlib", "platstdlib", "purelib", "platlib")
                          if (d := sysconfig.get_paths().get(k))}))


def exit_reason(e: BaseException) -> str:
    """One line saying why this process fails with ``e``.

    A UserError is its own message (it names the input). Anything else is a bug
    somewhere: its type, message and the innermost frame outside Python and its
    libraries, so a strategy that raises in on_bar is found at its own file and line.
    """
    if isinstance(e, UserError):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        frames = traceback.extract_tb(e.__traceback__)
        own = [f for f in frames if not os.path.realpath(f.filename).startswith(_LIB_DIRS)] or frames
        if own:
            f = own[-1]
            path = f.filename
            rel = os.path.relpath(path) if os.path.isabs(path) else path
            if not rel.startswith(".."):
                path = rel
            text += f" (at {path}:{f.lineno} in {f.name})"
    return " ".join(text.split())[:4000]


class Timer:
    __slots__ = ("interval", "fn", "due")

    def __init__(self, interval: float, fn: Callable[[], Any], due: float):
        self.interval, self.fn, self.due = interval, fn, due


class Role(StrEnum):
    """What the supervisor and the other actors address an actor by, instead of its name
    (an actor may run under any name, and two actors may share a role)."""

    ORDER_SENDER = "order-sender"  # sends orders: paused before the exchange; disabled, its orders are cancelled
    EXCHANGE = "exchange"  # takes orders and owns the trading flags (paused, halted)
    BACKTEST_FLOW = "backtest-flow"  # backtest: reports its progress on md.ref; the feed waits for the slowest


class NoParams(config_mod.Params):
    """An actor without settings: any key in its params table is an error."""


class Actor:
    """Subclass and override the hooks: init, on_run, on_command, status, work, on_stop.

    A subclass declares what the rest of the system needs to know about it as
    class attributes (docs/ARCHITECTURE.md, "Anatomy of an actor"); the
    supervisor reads them from the class (actors/registry.py), so a new actor
    needs no edit anywhere else. Keep the module's top-level imports light:
    the supervisor imports it to read them (heavy libraries go in init()).
    """

    name: str = "actor"
    # [actors.NAME.params] is converted to this (an unknown or mistyped key is a config
    # error naming the file and the key, exit 2) and given to the actor as ``self.params``.
    Params: ClassVar[type] = NoParams
    # The endpoints it binds. On the bus each is named after the actor, "<actor>.<name>"
    # (a client opens "echo.ping"); the actor itself opens it by its short name.
    binds: ClassVar[dict[str, SocketSpec]] = {}
    # Channels of its own: name -> (message union, largest payload in bytes); the
    # messages derive from bus.messages.Message. Registered when the class is defined.
    channels: ClassVar[dict[str, tuple[Any, int]]] = {}
    # Commands it answers (on_command), name -> help: `ctl send ACTOR COMMAND` reaches
    # them; anything else is refused before on_command sees it.
    commands: ClassVar[dict[str, str]] = {}
    roles: ClassVar[frozenset[Role]] = frozenset()
    # (heartbeat status key of the items done, READY info key of their total): a
    # backtest draws its progress bar from the actor that declares it.
    progress_bar: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        # Mistakes in a declaration are the actor author's: said when the class is defined.
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, config_mod.Params)):
            raise TypeError(f"{where}.Params must derive from config.Params (keyword-only, unknown keys refused)")
        bad = [r for r in cls.roles if not isinstance(r, Role)]
        if bad:
            raise TypeError(f"{where}.roles: {bad} are not actors.base.Role members")
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in cls.commands.items()):
            raise TypeError(f"{where}.commands maps each command name to its help text")
        if not all(isinstance(s, SocketSpec) for s in cls.binds.values()):
            raise TypeError(f"{where}.binds maps endpoint names to bus.sockets.SocketSpec")
        for channel, (union, max_bytes) in cls.channels.items():
            register_channel(channel, union, max_bytes, owner=f"{cls.__module__}.{cls.__qualname__}")

    @classmethod
    def declared_endpoints(cls, name: str) -> dict[str, SocketSpec]:
        """Its endpoints as the actor called ``name`` binds them: named ``<name>.<endpoint>``
        (two actors of one class never clash), bound by ``name``."""
        return {f"{name}.{n}": dataclasses.replace(spec, binder=name) for n, spec in cls.binds.items()}

    def __init__(self, cfg: config_mod.Config, run_dir: str, name: str | None = None, run_id: str = "",
                 where: str = "config"):
        self.cfg = cfg
        self.run_dir = os.path.abspath(run_dir)
        if name:
            self.name = name
        # Checked by the supervisor before anything started; again here for an actor run alone.
        self.params = config_mod.actor_params(cfg, self.name, type(self).Params, where)
        self.run_id = run_id or os.environ.get(ENV_RUN_ID, "") or f"standalone-{os.getpid()}"
        self.log = logmod.setup(self.run_dir, self.name, self.run_id, cfg.service.log_level)
        self.ctx = zmq.Context()
        self.endpoints = Endpoints.from_config(self.run_dir, cfg.bus, declared=self.declared_endpoints(self.name),
                                               strict=False)
        self.stamper = Stamper(self.name, self.run_id)
        self.hb_s = cfg.supervisor.heartbeat_ms / 1000.0
        self.hb_timeout_s = self.hb_s * cfg.supervisor.heartbeat_misses
        self._run_gap = RunGap(min(2 * self.hb_s, self.hb_timeout_s / 2))
        self.running = False  # True between RUN and STOP
        self._stop_reason: str | None = None
        self._exit_code = EXIT_OK
        self._init_go = False  # Init received from the supervisor
        self._ports: list[Port] = []
        self._handlers: dict[zmq.Socket, tuple[Port, Callable[[Port, Received], None]]] = {}
        self._timers: list[Timer] = []
        self._poller = zmq.Poller()
        self._bad_logged = 0
        self._last_sup = time.monotonic()
        self._next_hb = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.lifecycle: Port | None = None

    # ------------------------------------------------------------------ hooks
    def init(self) -> dict[str, Any]:
        """Bind/connect sockets and load what the actor needs. Returns READY info."""
        return {}

    def on_run(self) -> None:
        """Called once when RUN arrives: producers may start publishing."""

    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Handle a supervisor command; raise CommandError to refuse."""
        raise CommandError(f"{self.name} does not handle command {cmd!r}")

    def status(self) -> dict[str, Any]:
        """Small dict sent with every heartbeat (shown by `ctl status`)."""
        return {}

    def work(self) -> bool:
        """A bounded piece of background work; return True while more is pending."""
        return False

    def on_stop(self) -> None:
        """Finish in-flight work and flush before STOPPED is sent."""

    def on_bad_message(self, port: Port, err: ProtocolError) -> None:
        """A message that did not decode. Default: count and log (rate-limited)."""
        self._log_bad(port, err)

    # ---------------------------------------------------------------- helpers
    def open(self, name: str, *, bind: bool, handler: Callable[[Port, Received], None] | None = None,
             **kw: Any) -> Port:
        """Open a port through bus.sockets (one of its own endpoints by its short name); with
        a handler it joins the poll loop."""
        if name in type(self).binds:
            name = f"{self.name}.{name}"
        port = open_port(self.ctx, self.endpoints, name, bind=bind, stamper=self.stamper, **kw)
        self._ports.append(port)
        if handler is not None:
            self._handlers[port.sock] = (port, handler)
            self._poller.register(port.sock, zmq.POLLIN)
        return port

    def adopt(self, port: Port, handler: Callable[[Port, Received], None]) -> None:
        """Join a port made elsewhere (bus.sockets.open_inproc) to the poll loop; closed with the others."""
        self._ports.append(port)
        self._handlers[port.sock] = (port, handler)
        self._poller.register(port.sock, zmq.POLLIN)

    def every(self, seconds: float, fn: Callable[[], Any]) -> Timer:
        t = Timer(seconds, fn, time.monotonic() + seconds)
        self._timers.append(t)
        return t

    def request_stop(self, reason: str, code: int = EXIT_OK) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self._exit_code = code

    def request(self, port: Port, msg: Any, timeout: float, expect: tuple[type, ...] | None = None) -> Received:
        """Blocking request/reply on a DEALER port with a deadline (used during init)."""
        port.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply on {port.name} within {timeout:.1f}s")
            if port.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                rcv = port.recv()
                if expect is None or isinstance(rcv.msg, expect):
                    return rcv

    def drain(self, port: Port, handler: Callable[[Port, Received], None]) -> None:
        """Handle every message already queued on ``port`` now (non-blocking), e.g.
        updates published before a reply that depends on them."""
        while True:
            try:
                rcv = port.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError as e:
                self.on_bad_message(port, e)
                continue
            handler(port, rcv)

    def _log_bad(self, port: Port, err: ProtocolError) -> None:
        self._bad_logged += 1
        n = port.stats["bad"]
        if self._bad_logged <= 20 or n % 1000 == 0:
            self.log.warning("bad message dropped", endpoint=port.name, error=str(err), bad_total=n)

    # ------------------------------------------------------------- lifecycle
    def _send_lc(self, msg: Any) -> None:
        assert self.lifecycle is not None
        self.lifecycle.send(msg, flags=zmq.NOBLOCK)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.request_stop(f"signal {signal.Signals(signum).name}")
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _handle_lifecycle(self, rcv: Received) -> None:
        msg = rcv.msg
        self._last_sup = time.monotonic()
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, Stop):
            self.request_stop(msg.reason or "stop from supervisor")
        elif isinstance(msg, Init):
            self._init_go = True
        elif isinstance(msg, Run):
            if not self.running:
                self.running = True
                self.log.info("run")
                self.on_run()
        elif isinstance(msg, Command):
            try:
                if msg.cmd not in self.commands:
                    raise CommandError(f"{self.name}: unknown command {msg.cmd!r} (its commands: "
                                       f"{', '.join(self.commands) or 'none'})")
                data = self.on_command(msg.cmd, dict(msg.args))
                reply = CommandReply(id=msg.id, ok=True, data=data or {})
            except CommandError as e:
                reply = CommandReply(id=msg.id, ok=False, error=str(e))
            self._send_lc(reply)
        else:
            self.log.warning("unexpected lifecycle message", type=type(msg).__name__)

    def _poll_once(self, timeout_ms: int) -> None:
        events = self._poller.poll(timeout_ms)
        for sock, _ev in events:
            if sock == self._wake_r.fileno():  # raw fds come back as ints
                try:
                    while self._wake_r.recv(64):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            port, handler = self._handlers[sock]
            budget_end = time.monotonic() + DRAIN_BUDGET_S
            for _ in range(DRAIN_MAX):
                try:
                    rcv = port.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ProtocolError as e:
                    if port is self.lifecycle:
                        self._log_bad(port, e)
                    else:
                        self.on_bad_message(port, e)
                    continue
                handler(port, rcv)
                if self._stop_reason is not None or time.monotonic() > budget_end:
                    break

    def _timeout_ms(self, now: float, busy: bool) -> int:
        if busy or self._stop_reason is not None:
            return 0
        due = self._next_hb
        for t in self._timers:
            if t.due < due:
                due = t.due
        return max(0, min(int((due - now) * 1000) + 1, 1000))

    def _housekeeping(self, now: float) -> None:
        if now >= self._next_hb:
            self._next_hb = now + self.hb_s
            info = self.status() if self.running else {}
            # Dropped bad input is counted where an operator sees it (ctl status).
            bad = sum(p.stats["bad"] for p in self._ports)
            if bad:
                info = {**info, "bad_messages": bad}
            log_errors = logmod.write_errors()
            if log_errors:
                info = {**info, "log_write_errors": log_errors}
            self._send_lc(Heartbeat(info=info))
        stalled = self._run_gap.gap(now)
        if stalled:  # we were not running: the supervisor's silence may be ours (bus/liveness.py)
            self.log.warning("actor was not running; orphan guard window restarted", gap_s=round(stalled, 3))
            self._last_sup = max(self._last_sup, now)
        if now - self._last_sup > self.hb_timeout_s:
            self.log.error("supervisor heartbeats stopped; stopping (orphan guard)",
                           silent_s=round(now - self._last_sup, 3))
            self.request_stop("orphan guard", EXIT_ORPHAN)

    def _disk_exit(self, err: DiskError) -> int:
        """The run directory refused a write: say so once, tell the supervisor why, exit EXIT_DISK.

        No on_stop(): it would write to the same disk, and the actor's memory may
        be ahead of what was committed (the failed transaction was rolled back,
        nothing was published for it); the next start rebuilds from the ledger.
        """
        self.log.error("disk error", error=str(err), op=err.op, path=err.filename)
        try:  # the log file may be on the broken disk; stderr may reach a person
            sys.stderr.write(f"{self.name}: {err}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if self.lifecycle is not None:
            try:
                self._send_lc(Fatal(reason=str(err)[:4000]))
            except zmq.ZMQError:
                pass
        return EXIT_DISK

    def _exit_on_error(self, reason: str, code: int) -> int:
        """The last line this process logs: the supervisor reads exit_reason back from it."""
        self.log.error("exiting on error", exit_code=code, **{logmod.EXIT_REASON: reason})
        return code

    def serve(self) -> int:
        """Run the whole lifecycle; returns the process exit code."""
        old = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        try:
            self.lifecycle = self.open("lifecycle", bind=False, identity=self.name,
                                       handler=lambda p, r: self._handle_lifecycle(r))
            # Imported and connected: wait (heartbeating) for Init, which comes once
            # what this actor is `after` is READY, so nothing initialises early.
            self._send_lc(Loaded())
            while not self._init_go:
                if self._stop_reason is not None:
                    self.log.info("stopped before init", reason=self._stop_reason)
                    if self._exit_code != EXIT_ORPHAN:
                        self._send_lc(Stopped())
                    return self._exit_code
                self._poll_once(self._timeout_ms(time.monotonic(), False))
                self._housekeeping(time.monotonic())
            t0 = time.monotonic()
            try:
                info = self.init()
            except Exception as e:
                if (err := disk_error(e)) is not None:
                    return self._disk_exit(err)
                reason = exit_reason(e)
                self.log.exception("init failed", error=reason)
                self._send_lc(InitFailed(reason=reason))
                return self._exit_on_error(reason, EXIT_CONFIG if isinstance(e, UserError) else EXIT_ERROR)
            self._send_lc(Ready(info=info or {}))
            self.log.info("ready", init_s=round(time.monotonic() - t0, 4), **{k: v for k, v in (info or {}).items()
                                                                                if isinstance(v, (int, float, str))})
            self._last_sup = time.monotonic()
            busy = False
            while self._stop_reason is None:
                now = time.monotonic()
                self._poll_once(self._timeout_ms(now, busy))
                now = time.monotonic()
                for t in self._timers:
                    if now >= t.due and self.running:
                        t.due = now + t.interval
                        t.fn()
                self._housekeeping(now)
                busy = self.work() if self.running and self._stop_reason is None else False
            self.log.info("stopping", reason=self._stop_reason)
            self.on_stop()
            if self._exit_code != EXIT_ORPHAN:
                self._send_lc(Stopped())
            self.log.info("stopped", exit_code=self._exit_code)
            return self._exit_code
        except Exception as e:
            if (err := disk_error(e)) is not None:
                return self._disk_exit(err)
            self.log.exception("unhandled exception", error=str(e))
            return self._exit_on_error(exit_reason(e), EXIT_CONFIG if isinstance(e, UserError) else EXIT_ERROR)
        finally:
            signal.set_wakeup_fd(old)
            for p in self._ports:
                p.close()
            self.ctx.term()


def parse_args(argv: list[str] | None, default_name: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=f"paperbus actor {default_name}")
    ap.add_argument("--run-dir", required=True, help="run directory (sockets, logs, ledger)")
    ap.add_argument("--config", default=None, help="config file (TOML or JSON); default config/default.toml")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V", help="override a config key")
    ap.add_argument("--name", default=default_name, help="actor name (lifecycle identity)")
    ap.add_argument("--run-id", default="", help="run id (default: $PAPERBUS_RUN_ID)")
    return ap.parse_args(argv)


def main(cls: type[Actor], argv: list[str] | None = None) -> None:
    """Entry point of ``python -m actors.<name>``."""
    set_pdeathsig()
    args = parse_args(argv, cls.name)
    try:
        cfg = config_mod.load(args.config, args.sets)
    except config_mod.ConfigError as e:
        print(f"{args.name}: config error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        actor = cls(cfg, args.run_dir, name=args.name, run_id=args.run_id,
                    where=config_mod.source(args.config, args.sets))
    except config_mod.ConfigError as e:
        print(f"{args.name}: config error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except Exception as e:
        err = disk_error(e)
        print(f"{args.name}: cannot start: {err or f'{type(e).__name__}: {e}'}", file=sys.stderr)
        sys.exit(EXIT_ERROR if err is None else EXIT_DISK)
    prof_dir = os.environ.get("PAPERBUS_PROFILE")
    if prof_dir:
        # Opt-in profiling (docs/BENCHMARKS.md): one cProfile file per actor.
        import cProfile

        prof = cProfile.Profile()
        code = prof.runcall(actor.serve)
        prof.dump_stats(os.path.join(prof_dir, f"{args.name}.prof"))
    else:
        code = actor.serve()
    sys.stdout.flush()
    sys.exit(code)

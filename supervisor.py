"""paperbus supervisor: starts, watches, restarts and reaps the actor processes.

    python supervisor.py [--config PATH] [--run-dir DIR] [--set section.key=value ...]

Modelled on Erlang/OTP supervision with systemd-style readiness. This module
keeps the loop and the routing (lifecycle messages, ctl requests, exits, timers);
the parts it routes to are in actors/supervision/ (docs/ARCHITECTURE.md,
"Supervision"): the run files, the actor process, the restart policy (a pure
function), the ctl command table, placement peers, the progress bar.

Exit codes: 0 clean shutdown, 1 failure (start failure, restart intensity,
an actor's disk error, already running), 2 config error (ours, or an actor's
refusal of the user's input at start: actors.base.UserError, actor exit code 2).
On any failure the last line on stderr is ``supervisor: <reason>``, the reason
in the failing actor's own words.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any

import zmq

import config as config_mod
from actors import registry, rundir
from actors.base import Role
from actors.supervision.children import Children
from actors.progress_bar import ProgressBar
from actors.supervision.control import CONTROL, SUPERVISOR_COMMANDS
from actors.supervision.fanout import Fanout
from actors.supervision.peers import Peers, place
from actors.supervision import runfiles
from actors.supervision.runfiles import (AlreadyRunning, RunRecord, claim_run_dir, new_run_id, publish_endpoints,
                                         unpublish_endpoints, write_effective_config)
from bus import log as logmod
from bus.actor_states import ActorState as S
from bus.codec import ProtocolError, Stamper
from bus.faults import disk_error
from bus.liveness import RunGap
from bus.messages import CommandReply, CtlReply, CtlRequest, Fatal, Finished, Heartbeat, InitFailed, Loaded, Ready, \
    Stopped
from bus.sockets import Endpoints, EndpointError, open_port

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
FINAL_LINE_WAIT_S = 2.0  # how long the last line may wait for a console that is not read
EVENT_REFRESH_S = 1.0  # republish every actor's state so late subscribers catch up
lock_holder = runfiles.lock_holder  # who holds a run directory: asked of the supervisor's module


class Supervisor:
    def __init__(self, cfg: config_mod.Config, run_dir: str, config_path: str,
                 decls: dict[str, registry.Declaration], remote: dict[str, str] | None = None,
                 run_id: str | None = None):
        self.cfg, self.decls, self.run_dir, self.config_path = cfg, decls, run_dir, config_path
        self.remote = remote or {}  # placement: actor -> group of the supervisor that runs it
        self.order = config_mod.start_order(cfg, config_path)
        self.children = Children(self, cfg, self.order, decls)
        self.run_id = run_id or new_run_id()
        # Always on the console: readable on a terminal, plain lines elsewhere (nohup,
        # systemd, CI, 2>file), so the user sees every event and why it failed.
        self.log = logmod.setup(run_dir, "supervisor", self.run_id, cfg.service.log_level, console=True)
        self.record = RunRecord(run_dir, self.run_id, cfg.service.mode, config_path)
        if self.record.previous:
            prev = self.record.previous
            (self.log.info if self.record.previous_clean else self.log.warning)(
                "previous run", previous_run_id=self.record.previous_run_id, previous_pid=prev.get("pid"),
                ended=prev.get("ended") or "no (it did not shut down in order; resuming from the ledger)")
        self.hb_s = cfg.supervisor.heartbeat_ms / 1000.0
        self.hb_timeout_s = self.hb_s * cfg.supervisor.heartbeat_misses
        self._run_gap = RunGap(min(2 * self.hb_s, self.hb_timeout_s / 2))
        self.fanout = Fanout(self)
        self.phase = "starting"  # starting running stopping
        self.exit_code = EXIT_OK
        self.shutdown_reason = ""
        self.started_mono = time.monotonic()
        self._force = False  # a second SIGINT/SIGTERM during shutdown: kill at once
        self._sigchld = False
        self._stop_request: str | None = None
        self._next_hb = self._next_events = 0.0
        self.backtest = cfg.service.mode == "backtest"
        self.finished_text = ""
        self.bar_source = next((c for c in self.children.values() if c.decl.progress_bar), None)
        self.progress_bar = (ProgressBar(sys.stderr)
                             if self.backtest and self.bar_source and sys.stderr.isatty() else None)
        self.ctx = zmq.Context()
        self.stamper = Stamper("supervisor", self.run_id)
        self.endpoints = Endpoints.from_config(run_dir, cfg.bus, declared=registry.declared_endpoints(decls))
        self.effective_cfg = write_effective_config(run_dir, cfg, self.endpoints)
        self.lifecycle = self.control = self.events = self.peers = None
        try:
            self._open_ports()
        except BaseException:
            # A start that fails after binding (port taken, disk full) leaves no
            # socket file, no endpoints.json and no open context behind.
            self.close()
            raise

    def _open_ports(self) -> None:
        self.lifecycle = open_port(self.ctx, self.endpoints, "lifecycle", bind=True, stamper=self.stamper)
        self.control = open_port(self.ctx, self.endpoints, "control", bind=True, stamper=self.stamper)
        self.events = open_port(self.ctx, self.endpoints, "events", bind=True, stamper=self.stamper)
        publish_endpoints(self.run_dir, self.endpoints.published())
        self.record.started()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.poller = zmq.Poller()
        for sock in (self.lifecycle.sock, self.control.sock, self._wake_r.fileno()):
            self.poller.register(sock, zmq.POLLIN)
        needed = {self.remote[d] for c in self.children.values() for d in c.cfg.after if d in self.remote}
        self.peers = Peers(self.remote, needed, self.cfg, self.run_dir, self.ctx, self.stamper, self.log)
        for port in self.peers.ports.values():
            self.poller.register(port.sock, zmq.POLLIN)

    def holders(self, role: Role) -> tuple[str, ...]:
        """The actors declaring ``role``: ours in start order, then those of other groups."""
        return tuple(n for n in (*self.order, *self.remote) if n in self.decls and role in self.decls[n].roles)

    # ------------------------------------------------------------- signals
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)

    def _on_sigchld(self, *_: Any) -> None:
        self._sigchld = True

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.phase == "stopping" or self._stop_request is not None:
            self._force = True
        else:
            self._stop_request = signal.Signals(signum).name

    # ------------------------------------------------------------- messages
    def on_lifecycle(self, ident: bytes, msg: Any) -> None:
        c = self.children.get(ident.decode(errors="replace"))
        if c is not None and isinstance(msg, Fatal):  # kept even if its exit was reaped first
            c.info["fatal"] = msg.reason
            return
        if c is None or not c.alive:
            return
        now = c.last_seen = time.monotonic()
        if isinstance(msg, Heartbeat):
            if msg.info:
                c.status_info = dict(msg.info)
        elif isinstance(msg, Loaded):
            self.children.loaded(c, now)
        elif isinstance(msg, Ready):
            self.children.ready(c, dict(msg.info), now)
        elif isinstance(msg, InitFailed):
            self.log.error("actor init failed", actor=c.name, pid=c.pid, reason=msg.reason)
            c.info["init_error"] = msg.reason
        elif isinstance(msg, Stopped):
            self.log.info("actor stopped", actor=c.name, pid=c.pid)
        elif isinstance(msg, Finished):
            self.draw_progress(now, final=True)  # its last state, then its own line ends
            if self.progress_bar is not None:
                self.progress_bar.close()
            s = msg.summary  # short: the summary and where the results are follow on stdout
            self.log.info("backtest finished", bars=s.get("bars"), fills=s.get("fills"),
                          final_equity=s.get("final_equity"))
            if self.backtest and self._stop_request is None:
                self.finished_text = msg.text + f"\nresults       {self.run_dir}"
                self._stop_request = f"backtest finished ({c.name})"
        elif isinstance(msg, CommandReply):
            self.fanout.on_reply(msg)

    def draw_progress(self, now: float, final: bool = False) -> None:
        if self.progress_bar is not None:
            # The keys the source actor's class names: done in its heartbeat status, total in its READY info.
            done_key, total_key = self.bar_source.decl.progress_bar
            self.progress_bar.update(now, int(self.bar_source.status_info.get(done_key, 0) or 0),
                                     int(self.bar_source.info.get(total_key, 0) or 0), final)

    def on_control(self, ident: bytes, delim: bool, req: Any) -> None:
        """A ctl request, to its handler in the command table (actors/supervision/control.py)."""
        def reply(ok: bool, error: str = "", data: dict | None = None) -> None:
            self.control.send(CtlReply(id=getattr(req, "id", ""), ok=ok, error=error, data=data or {}), to=ident,
                              delim=delim, flags=zmq.NOBLOCK)

        if not isinstance(req, CtlRequest):
            reply(False, f"expected a ctl request, got {type(req).__name__}")
            return
        # status changes nothing and a dashboard asks it every second: debug, or it would
        # bury the log; every command that acts stays on info.
        (self.log.debug if req.cmd == "status" else self.log.info)("control request", cmd=req.cmd, arg=req.arg)
        entry = CONTROL.get(req.cmd)
        if entry is None or entry.handler is None:
            reply(False, f"unknown command {req.cmd!r} ({', '.join(SUPERVISOR_COMMANDS)})"
                  + (f"; {req.cmd} is done by ctl.py itself" if entry else ""))
        else:
            entry.handler(self, req, reply, ident, delim)

    def request_stop(self, why: str) -> None:
        self._stop_request = why

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
        self.peers.drain()

    # ------------------------------------------------------------- the loop
    def wait(self, timeout_s: float) -> None:
        for s, _ in self.poller.poll(max(0, int(timeout_s * 1000))):
            if s == self._wake_r.fileno():
                try:
                    while self._wake_r.recv(256):
                        pass
                except OSError:
                    pass
        if self._sigchld:
            self._sigchld = False
            self.children.reap()
        self.drain()
        if self._sigchld:
            self._sigchld = False
            self.children.reap()

    def heartbeat(self, now: float) -> None:
        if now >= self._next_hb:
            self._next_hb = now + self.hb_s
            self.children.heartbeat()
        if now >= self._next_events:
            self._next_events = now + EVENT_REFRESH_S
            for c in self.children.values():
                self.children.emit(c)

    def check_timeouts(self, now: float) -> None:
        # Judge silence only on silence seen while we ran (bus/liveness.py): after a
        # gap of our own every actor gets a fresh window; otherwise heartbeats that
        # queued up meanwhile are read before anyone is called hung.
        stalled = self._run_gap.gap(now)
        if stalled:
            self.log.warning("supervisor was not running; liveness windows restarted", gap_s=round(stalled, 3))
            for c in self.children.values():
                c.last_seen = max(c.last_seen, now)
        elif any(c.overdue(now, self.hb_timeout_s) == "hung" for c in self.children.values()):
            self.drain()
            now = time.monotonic()
        self.children.enforce_timeouts(now, self.hb_timeout_s)

    def next_timeout(self, now: float) -> float:
        t = min(self._next_hb, self._next_events, *(c.restart_due for c in self.children.values()
                                                     if c.state == S.BACKOFF)) - now
        if self.fanout.jobs:
            t = min(t, min(j.deadline for j in self.fanout.jobs) - now)
        if self.peers.ports:
            t = min(t, self.peers.next_poll - now)
        return max(0.0, min(t, 0.1))

    def begin_shutdown(self, reason: str, code: int) -> None:
        if self.phase == "stopping":
            return
        self.shutdown_reason, self.exit_code, self.phase = reason, code, "stopping"
        (self.log.error if code else self.log.info)("shutting down", reason=reason)

    def run(self) -> int:
        self.install_signals()
        self.log.info("supervisor started", run_dir=self.run_dir, config=self.config_path, order=self.order,
                      pid=os.getpid())
        t0 = time.monotonic()
        while self.phase != "stopping":
            now = time.monotonic()
            if self._stop_request is not None:
                self.begin_shutdown(self._stop_request, EXIT_OK)
                break
            self.children.start_due(now)
            if self.phase == "starting":
                if all(c.state == S.READY for c in self.children.values()):
                    for name in self.order:
                        self.children.send_run(self.children[name])
                    self.phase = "running"
                    self.log.info("all actors running", cold_start_s=round(time.monotonic() - t0, 4))
            else:
                self.fanout.send_deferred()
                self.children.run_ready()
            self.heartbeat(now)
            self.peers.poll(now)
            self.check_timeouts(now)
            self.fanout.finish(now)
            self.draw_progress(now)
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
            self.children.stop(c, self.shutdown_reason or "shutdown")
            while c.alive and not self._force:
                now = time.monotonic()
                self.heartbeat(now)
                self.check_timeouts(now)
                self.fanout.finish(now)
                self.wait(0.05)
        if self._force:
            self.log.warning("second interrupt: forcing shutdown")
            for c in self.children.values():
                self.children.kill(c, signal.SIGKILL)
        for c in self.children.values():
            if c.alive:
                c.proc.wait()
                self.children.on_exit(c)
        self.log.info("supervisor exiting", exit_code=self.exit_code, reason=self.shutdown_reason,
                      shutdown_s=round(time.monotonic() - t0, 4))
        try:
            self.record.ended(self.exit_code, self.shutdown_reason)
        except OSError as e:  # the run is over either way; the next start just sees it as unclean
            self.log.error("cannot record the end of the run", error=str(e))
        if self.progress_bar is not None:
            self.progress_bar.close()
        if self.exit_code:
            # The last line, whatever else the console showed: why, in the actor's own words.
            # Waited for a little (a pipe being read slowly), never forever.
            logmod.console_write(f"supervisor: {self.shutdown_reason}\n", wait_s=FINAL_LINE_WAIT_S)
        if self.finished_text:
            print(self.finished_text, flush=True)

    def close(self) -> None:
        unpublish_endpoints(self.run_dir)
        for p in (self.lifecycle, self.control, self.events, self.peers):
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
        # What every actor declares, its params checked: before anything is touched.
        decls = registry.declare(cfg, config_mod.source(args.config, args.sets))
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
        run_dir, lock_fd = claim_run_dir(run_dir, cfg.service.mode, run_id)
    except AlreadyRunning as e:
        print(f"supervisor: {e}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as e:
        print(f"supervisor: cannot use run directory {run_dir}: {e.strerror}" + (f" ({e.filename})" if e.filename else ""),
              file=sys.stderr)
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
        cfg, remote = place(cfg, run_dir, registry.declared_endpoints(decls))
        sup = Supervisor(cfg, run_dir, str(args.config or config_mod.DEFAULT_PATH), decls, remote, run_id=run_id)
    except (config_mod.ConfigError, EndpointError) as e:
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
            sup.children.kill(c, signal.SIGKILL)
        raise
    finally:
        sup.close()
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())

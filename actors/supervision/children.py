"""The supervised actors (circus: the watchers): their starts and stops, and their exits
with the restart policy's decision applied (actors/supervision/policy.py decides; this
does it, logs it and says why in the actor's own words).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import zmq

import config as config_mod
from actors.base import EXIT_DISK, Role
from actors.registry import Declaration
from actors.supervision import process
from actors.supervision.child import Child
from actors.supervision.policy import Action, Exit, History, Limits, Why, decide
from bus.actor_states import ActorState as S
from bus.codec import ProtocolError
from bus.messages import ActorEvent, Heartbeat, Init, Run, Stop
from bus.sockets import topic_for

EXIT_FAIL, EXIT_CONFIG = 1, 2
BEFORE_READY = (S.LOADING, S.LOADED, S.STARTING)
STARTED = (*BEFORE_READY, S.READY, S.RUNNING)  # up or on its way (restart_with stops these)


class Children(dict[str, Child]):
    """Name -> Child, in start order, and what the supervisor does to them."""

    def __init__(self, sup: Any, cfg: config_mod.Config, order: list[str], decls: dict[str, Declaration]):
        super().__init__((n, Child(n, cfg.actors[n], decls[n])) for n in order)
        self.sup = sup  # the loop: its phase, ports, log, fan-out, peers, begin_shutdown
        self.cfg = cfg
        self.limits = Limits.from_config(cfg.supervisor)
        self.history = History()

    # ------------------------------------------------------------- states
    def emit(self, c: Child, detail: str = "") -> None:
        if not detail and c.state == S.FAILED:
            detail = c.detail  # the periodic republish says why too, for subscribers that join late
        self.sup.events.send(ActorEvent(actor=c.name, state=c.state.event, pid=c.pid, restarts=c.restarts,
                                        detail=detail[:4000]), topic=topic_for("events", "actor"), flags=zmq.NOBLOCK)

    def set_state(self, c: Child, state: S, detail: str = "") -> None:
        c.state = state  # checked against bus/actor_states.py's table
        self.emit(c, detail)

    # ------------------------------------------------------------- starting
    def spawn(self, c: Child) -> None:
        sup = self.sup
        c.info.pop("init_error", None)  # a previous process's
        c.proc = process.ActorProcess.spawn(c.cfg.module, c.name, sup.run_dir, sup.effective_cfg, sup.run_id, sup.log)
        c.started_at = c.last_seen = time.monotonic()
        c.sigterm_sent = False
        sup.log.info("actor spawned", actor=c.name, pid=c.pid, module=c.cfg.module)
        self.set_state(c, S.LOADING)

    def send_init(self, c: Child) -> None:
        """Its dependencies are READY: the loaded actor may initialise."""
        self.sup.lifecycle.send(Init(), to=c.name.encode(), flags=zmq.NOBLOCK)
        c.init_at = time.monotonic()
        self.sup.log.info("actor started", actor=c.name, pid=c.pid, module=c.cfg.module)
        self.set_state(c, S.STARTING)

    def send_run(self, c: Child) -> None:
        self.sup.lifecycle.send(Run(), to=c.name.encode(), flags=zmq.NOBLOCK)
        self.set_state(c, S.RUNNING)
        self.sup.log.info("actor running", actor=c.name, pid=c.pid)

    def deps_up(self, c: Child) -> bool:
        return all((self[d].state if d in self else self.sup.peers.state.get(d, "")) in ("ready", "running")
                   for d in c.cfg.after if d in self or d in self.sup.remote)

    def loaded(self, c: Child, now: float) -> None:
        """LOADED: initialise it as soon as what it is `after` is READY (at once, if it is)."""
        if c.state == S.LOADING:
            self.sup.log.info("actor loaded", actor=c.name, pid=c.pid, load_s=round(now - c.started_at, 4))
            self.set_state(c, S.LOADED)
            if self.deps_up(c):
                self.send_init(c)
        elif c.state == S.STOPPING:  # told to stop before it had connected: tell it again
            self.sup.lifecycle.send(Stop(reason="shutdown"), to=c.name.encode(), flags=zmq.NOBLOCK)

    def ready(self, c: Child, info: dict[str, Any], now: float) -> None:
        """READY: running once what it is `after` runs (after a restart; at start, the barrier decides)."""
        if c.state != S.STARTING:
            return
        c.info, c.ready_at = info, now
        log = self.sup.log
        log.info("actor ready", actor=c.name, pid=c.pid, start_s=round(now - c.started_at, 4),
                 init_s=round(now - c.init_at, 4), **{k: v for k, v in info.items() if isinstance(v, (int, float, str))})
        for w in info.get("warnings") or ():  # e.g. replay rows skipped: said where the user looks
            log.warning("actor warning", actor=c.name, warning=str(w))
        self.set_state(c, S.READY)
        if self.sup.phase == "running":
            self.run_ready()

    def run_ready(self) -> None:
        """Once running, RUN goes to a READY actor as soon as what it is `after` here runs."""
        for c in self.values():
            if c.state == S.READY and all(self[d].state == S.RUNNING for d in c.cfg.after if d in self):
                self.send_run(c)

    def heartbeat(self) -> None:
        for c in self.values():
            if c.alive and c.state != S.LOADING:  # a loading actor has not connected yet
                self.sup.lifecycle.send(Heartbeat(), to=c.name.encode(), flags=zmq.NOBLOCK)

    def start_due(self, now: float) -> None:
        for c in self.values():
            # Every actor is spawned at once (imports overlap on all cores) and
            # initialises only when Init comes, once its dependencies are READY.
            if c.state == S.PENDING or (c.state == S.BACKOFF and now >= c.restart_due):
                self.spawn(c)
            elif c.state == S.LOADED and self.deps_up(c):
                self.send_init(c)

    # ------------------------------------------------------------- stopping
    def stop(self, c: Child, reason: str) -> None:
        if not c.alive:
            return
        self.sup.lifecycle.send(Stop(reason=reason), to=c.name.encode(), flags=zmq.NOBLOCK)
        c.stop_deadline = time.monotonic() + c.cfg.stop_timeout
        self.set_state(c, S.STOPPING, reason)

    def kill(self, c: Child, sig: int) -> None:
        if c.proc is not None:
            c.proc.signal(sig)

    def enforce_timeouts(self, now: float, hb_timeout_s: float) -> None:
        """Act on every actor that is overdue (Child.overdue)."""
        log = self.sup.log
        for c in self.values():
            due = c.overdue(now, hb_timeout_s)
            if due == "start":
                why = c.start_timeout_reason()
                log.error("actor start timeout", actor=c.name, pid=c.pid, reason=why)
                self.kill(c, signal.SIGKILL)
                if self.sup.phase == "starting":
                    c.proc.wait()
                    self.set_state(c, S.FAILED, why)
                    self.sup.begin_shutdown(f"{c.name}: {why}", EXIT_FAIL)
                    return
            elif due == "hung":
                log.error("actor hung: heartbeats missed, killing", actor=c.name, pid=c.pid,
                          silent_s=round(now - c.last_seen, 3), misses=self.cfg.supervisor.heartbeat_misses)
                self.kill(c, signal.SIGKILL)
                # Reaped on SIGCHLD in a moment; until then, judging it again on every loop
                # round would log (and kill) the same hang many times.
                c.last_seen = now
            elif due == "sigterm":
                log.warning("actor did not stop in time, SIGTERM", actor=c.name, pid=c.pid)
                self.kill(c, signal.SIGTERM)
                c.sigterm_sent, c.stop_deadline = True, now + 1.0
            elif due == "sigkill":
                log.warning("actor ignored SIGTERM, SIGKILL", actor=c.name, pid=c.pid)
                self.kill(c, signal.SIGKILL)
                c.stop_deadline = now + 5.0

    # ------------------------------------------------------------- exits
    def reap(self) -> None:
        for c in self.values():
            if c.alive and c.proc.reap():
                self.on_exit(c)

    def exit_cause(self, c: Child) -> str:
        return process.exit_cause(self.sup.run_dir, c.name, c.proc, c.info.get("init_error", ""))

    def on_exit(self, c: Child) -> None:
        """An actor's process is gone: the restart policy decides, this applies it and says why."""
        sup = self.sup
        rc = c.proc.returncode if c.proc else 0
        now = time.monotonic()
        how, uptime = process.describe_exit(rc), round(now - c.started_at, 3)
        asked, c.restart_asked = c.restart_asked, ""
        c.status_info = {}  # it described a process that is gone; the next incarnation reports its own
        ex = Exit(c.name, rc, now, c.ready_at, asked=bool(asked), before_ready=c.state in BEFORE_READY,
                  phase=sup.phase, backtest=sup.backtest)
        d, self.history = decide(ex, self.history, c.spec, self.limits)
        log = dict(actor=c.name, pid=c.pid, how=how, uptime_s=uptime)
        if d.why == Why.DISK_ERROR:  # a full or read-only run directory: stop the others in order
            reason = f"{c.name}: {self.fatal_reason(c) or f'disk error (exit code {EXIT_DISK})'}"
            sup.log.error("actor stopped on a disk error", actor=c.name, pid=c.pid, error=reason, uptime_s=uptime,
                          next="stop everything, exit 1")
            self.set_state(c, S.FAILED, reason)
            if sup.phase != "stopping":
                sup.begin_shutdown(reason, EXIT_FAIL)
            elif not sup.exit_code:  # already stopping: the exit code says so
                sup.exit_code, sup.shutdown_reason = EXIT_FAIL, reason
        elif d.action == Action.STAY_DOWN:
            stopping = d.why == Why.SHUTTING_DOWN
            (sup.log.info if stopping else sup.log.warning)(
                "actor exited", **log, next="none (shutting down)" if stopping else f"not restarted ({c.cfg.restart})")
            self.set_state(c, S.EXITED, how)
        elif d.why in (Why.START_FAILED, Why.BACKTEST):
            cause = self.exit_cause(c)
            if d.why == Why.START_FAILED:
                tail = process.stderr_tail(sup.run_dir, c.name, c.proc.stderr_at if c.proc else 0)
                sup.log.error("actor exited before READY", **log, reason=cause, next="abort start",
                              **({"stderr_tail": tail} if tail else {}))
            else:
                sup.log.error("actor exited during backtest", **log, reason=cause, next="abort backtest")
            self.set_state(c, S.FAILED, f"{how}: {cause}" if cause else how)
            what = f"{d.why} ({how})"
            sup.begin_shutdown(f"config error: {c.name}: {cause or what}" if d.exit_code == EXIT_CONFIG
                               else f"{c.name} {what}" + (f": {cause}" if cause else ""), d.exit_code)
        elif d.action == Action.GIVE_UP:
            self.disable(c, how, uptime, d.in_window)
        elif d.action == Action.ESCALATE:
            cause, lim = self.exit_cause(c), self.cfg.supervisor
            c.detail = (f"restart intensity exceeded: {c.name} exited ({how}); {d.in_window} restarts within "
                        f"{lim.max_seconds:g}s (max_restarts={lim.max_restarts})"
                        + (f"; last error: {cause}" if cause else ""))
            sup.log.error("restart intensity exceeded", actor=c.name, pid=c.pid, how=how, error=cause,
                          restarts_in_window=d.in_window, next="stop everything, exit 1")
            self.set_state(c, S.FAILED, c.detail)
            sup.begin_shutdown(c.detail, d.exit_code)
        else:
            self.restart(c, d.restart_at, d.delay, asked, log)

    def restart(self, c: Child, at: float, delay: float, asked: str, log: dict[str, Any]) -> None:
        c.restarts += 1
        c.restart_due, c.ready_at = at, 0.0
        if asked:  # an operator's or restart_with's doing, not a failure
            self.sup.log.info("actor exited", **log, restarts=c.restarts,
                              next=f"restart now ({asked}; not counted toward restart intensity)")
            self.set_state(c, S.BACKOFF, f"{log['how']}; restarting ({asked})")
        else:
            self.sup.log.warning("actor exited", **log, next=f"restart in {delay:.3f}s", restarts=c.restarts,
                                 reason=self.exit_cause(c))
            self.set_state(c, S.BACKOFF, f"{log['how']}; restarting")
        # Restart dependants together (e.g. the strategy re-queries the exchange).
        for other in self.cfg.supervisor.restart_with.get(c.name, []):
            o = self.get(other)
            if o is not None and o.alive and o.state in STARTED:
                self.sup.log.info("restarting with", actor=o.name, because=c.name)
                o.restart_asked = f"restart with {c.name}"
                self.stop(o, o.restart_asked)

    def disable(self, c: Child, how: str, uptime: float, n: int) -> None:
        """on_give_up = "disable": this actor crash-loops; it stays down, the others run on.

        The policy took its restarts out of the intensity window (a re-enabled actor
        starts with a clean budget). An order sender's open orders are cancelled
        at the exchange (its positions kept, or flattened with flatten_on_disable),
        at once or as soon as the exchange runs."""
        lim, sup = self.cfg.supervisor, self.sup
        err = self.exit_cause(c)
        c.disabled = True
        # The cause first: it is what a narrow screen keeps.
        c.detail = (f"{how}{': ' + err if err else ''}; disabled: restart intensity exceeded ({n} restarts "
                    f"within {lim.max_seconds:g}s, max_restarts={lim.max_restarts}); "
                    f"`ctl restart {c.name}` re-enables it")
        sup.log.error("actor disabled: restart intensity exceeded", actor=c.name, pid=c.pid, how=how, error=err,
                      uptime_s=uptime, restarts_in_window=n,
                      next=f"not restarted (on_give_up = disable); the others keep running; "
                           f"`ctl restart {c.name}` re-enables it")
        self.set_state(c, S.FAILED)
        if Role.ORDER_SENDER not in c.decl.roles:
            return
        cmd = "flatten" if c.cfg.flatten_on_disable else "cancel-all"
        for ex in sup.holders(Role.EXCHANGE):
            if ex in sup.remote:
                sup.log.warning("cannot reach the exchange of a disabled actor", actor=c.name, command=cmd,
                                exchange_group=sup.remote[ex],
                                hint=f"run `ctl {'stop-and-close' if cmd == 'flatten' else 'halt'}` on that "
                                     "group's supervisor if its open orders must go")
            else:
                sup.fanout.defer(ex, cmd, f"disable {c.name}", {"reason": f"{c.name} disabled"})

    def reenable(self, c: Child) -> None:
        """`ctl restart` of a disabled actor: a fresh start with a clean restart record."""
        self.sup.log.info("actor re-enabled", actor=c.name, by="ctl restart", was=c.detail)
        c.disabled, c.detail = False, ""
        self.history = self.history.forget(c.name)
        c.restarts += 1
        self.set_state(c, S.PENDING, "re-enabled by ctl restart")  # spawned on this loop round

    def fatal_reason(self, c: Child, timeout: float = 1.0) -> str:
        """The reason an actor sent (Fatal) just before exiting with EXIT_DISK.

        It is sent before the exit but may still be in flight when SIGCHLD is
        handled, so wait for it briefly; only lifecycle messages are handled meanwhile.
        """
        lifecycle = self.sup.lifecycle
        deadline = time.monotonic() + timeout
        while "fatal" not in c.info:
            left = deadline - time.monotonic()
            if left <= 0 or not lifecycle.sock.poll(int(left * 1000) + 1):
                break
            try:
                r = lifecycle.recv(zmq.NOBLOCK)
            except (zmq.Again, ProtocolError):
                continue
            self.sup.on_lifecycle(r.ident, r.msg)
        return c.info.get("fatal", "")

"""Commands in flight to actors: ctl's fan-outs and `send`, and the supervisor's own.

A fan-out (actors/supervision/control.py) addresses actors by role; each step
becomes one command to one actor, sent at once or once the actors it is gated
on answered. Every job ends within CTL_DEADLINE_S with each actor's answer, a
per-actor timeout or why it was not sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from actors.base import Role
from bus.actor_states import ActorState
from bus.messages import Command, CtlReply, CtlRequest

CTL_DEADLINE_S = 1.5  # answer the CLI before its 2 s timeout even if an actor is silent
GATE_WAIT_S = 0.2  # a command waits this long at most for the answers it is gated on


@dataclass
class CtlJob:
    ident: bytes | None  # None: the supervisor's own job (its outcome is logged, not replied)
    delim: bool
    req: CtlRequest
    deadline: float = 0.0
    waiting: dict[int, str] = field(default_factory=dict)  # command id -> actor
    results: dict[str, Any] = field(default_factory=dict)
    # (actor, command, gate actors, need_ok), from the fan-out's steps
    later: list[tuple[str, str, tuple[str, ...], bool]] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class Fanout:
    """Commands in flight to actors: ctl's fan-outs and `send`, and the supervisor's own."""

    def __init__(self, sup: Any):
        self.sup = sup  # children, remote, holders(), lifecycle, control, log
        self.jobs: list[CtlJob] = []
        self.deferred: list[CtlJob] = []  # own commands waiting for their actor to run
        self.cmd_id = 0

    def start(self, ident: bytes | None, delim: bool, req: CtlRequest, steps: list[tuple[str, str, tuple, bool]],
              args: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        self.jobs.append(CtlJob(ident, delim, req, now + CTL_DEADLINE_S, later=steps, args=args or {}, started=now))
        self.finish(now)

    def plan(self, steps: tuple[Any, ...]) -> list[tuple[str, str, tuple[str, ...], bool]]:
        """Roles to actors: every actor (local or remote) declaring the role, in start order."""
        return [(a, s.command, self.sup.holders(s.gate) if s.gate else (), s.need_ok)
                for s in steps for a in self.sup.holders(s.role)]

    def send_command(self, job: CtlJob, actor: str, cmd: str) -> None:
        self.cmd_id += 1
        job.waiting[self.cmd_id] = actor
        self.sup.lifecycle.send(Command(id=self.cmd_id, cmd=cmd, args=job.args), to=actor.encode(),
                                flags=zmq.NOBLOCK)

    def on_reply(self, msg: Any) -> None:
        for job in self.jobs:
            if msg.id in job.waiting:
                actor = job.waiting.pop(msg.id)
                job.results[actor] = {"ok": msg.ok, "error": msg.error, **({"data": msg.data} if msg.data else {})}

    def advance(self, job: CtlJob) -> None:
        """Send what is due of a job's commands; decide those that will not be sent."""
        pending = []
        for step in job.later:
            actor, cmd, gates, need_ok = step
            answers = [job.results.get(g) for g in gates]
            if any(a is None for a in answers) and (need_ok or time.monotonic() - job.started < GATE_WAIT_S):
                pending.append(step)
                continue
            refused = [g for g, a in zip(gates, answers) if a is not None and not a["ok"]]
            if need_ok and refused:
                job.results[actor] = {"ok": False, "skipped": f"not sent: {refused[0]} refused"}
                continue
            c = self.sup.children.get(actor)
            if c is None and actor in self.sup.remote:  # placement: its own supervisor takes the command
                job.results[actor] = {"ok": True, "skipped": f"runs under group {self.sup.remote[actor]}"}
            elif c is not None and c.disabled and c.state == ActorState.FAILED:
                # Nothing to tell it now; restarted, it takes paused/halted from the exchange.
                job.results[actor] = {"ok": True, "skipped": f"{actor} is disabled (failed); "
                                                             f"`ctl restart {actor}` re-enables it"}
            elif c is not None and Role.ORDER_SENDER in c.decl.roles and c.state != ActorState.RUNNING:
                job.results[actor] = {"ok": True, "skipped": f"{actor} is {c.state.event}; "
                                                             "it takes the exchange's state when it starts"}
            elif c is None or not c.alive or c.state != ActorState.RUNNING:
                job.results[actor] = {"ok": False, "error": f"{actor} is not running"}
            else:
                self.send_command(job, actor, cmd)
        job.later = pending

    def finish(self, now: float) -> None:
        keep = []
        for job in self.jobs:
            self.advance(job)
            if (job.waiting or job.later) and now < job.deadline:
                keep.append(job)
                continue
            for actor in job.waiting.values():
                job.results[actor] = {"ok": False, "error": f"{actor} did not answer within {CTL_DEADLINE_S}s"}
            for actor, _cmd, gates, _need_ok in job.later:
                silent = [g for g in gates if g not in job.results]
                job.results[actor] = {"ok": False, "skipped": f"not sent: no answer from {', '.join(silent)}"}
            ok = bool(job.results) and all(r["ok"] for r in job.results.values())
            errors = "; ".join(f"{a}: {r['error']}" for a, r in job.results.items() if r.get("error"))
            if job.ident is None:  # our own (disabling an actor): the log says how it went
                (self.sup.log.info if ok else self.sup.log.error)(
                    "supervisor command done" if ok else "supervisor command failed", what=job.req.cmd,
                    **{a: r.get("data", {}).get("message") or r.get("error") or r.get("skipped") or "ok"
                       for a, r in job.results.items()})
            else:
                self.sup.control.send(CtlReply(id=job.req.id, ok=ok, error=errors, data={"actors": job.results}),
                                      to=job.ident, delim=job.delim, flags=zmq.NOBLOCK)
        self.jobs = keep

    def defer(self, actor: str, cmd: str, why: str, args: dict[str, Any]) -> None:
        """The supervisor's own command to ``actor``, sent once it runs (the exchange may be
        restarting when the strategy is disabled: its rebuilt book still holds the
        strategy's orders, so the cancel must wait for it, not be lost)."""
        self.deferred.append(CtlJob(None, False, CtlRequest(cmd=why), later=[(actor, cmd, (), False)], args=args))
        self.send_deferred()

    def send_deferred(self) -> None:
        keep = []
        for job in self.deferred:
            actor, cmd, _gates, _need_ok = job.later[0]
            c = self.sup.children.get(actor)
            if c is None or not c.alive or c.state != ActorState.RUNNING:
                keep.append(job)
                continue
            job.later = []
            job.started = time.monotonic()
            job.deadline = job.started + CTL_DEADLINE_S
            self.send_command(job, actor, cmd)
            self.jobs.append(job)
        self.deferred = keep

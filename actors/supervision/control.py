"""The ctl commands, as one table (circus: the controller's commands).

``CONTROL`` has one entry per command: its help text, its arguments and what
the supervisor does with it: its ``handler`` answers it, or it fans out as
lifecycle ``Command``s to the actors that declare a role (``fanout``, carried
out by actors/supervision/fanout.py). scripts/ctl.py builds its usage, help
and checks from this same table, so a command and its help cannot drift apart.

A fan-out addresses actors by role, not by name (actors/base.py, ``Role``):
every actor with the role gets the command. ``gate``: sent only once the
actors of that role answered (or GATE_WAIT_S passed, so a silent strategy never
holds up a pause or the kill switch); with ``need_ok`` only if they all
answered ok (a refused resume changes nothing anywhere).
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from actors.base import Role
from bus import log as logmod
from bus.actor_states import ActorState
from bus.messages import CtlRequest

# handler(supervisor, request, reply, ident, delim); reply(ok, error="", data=None)
Handler = Callable[[Any, CtlRequest, Callable[..., None], bytes, bool], None]


@dataclass(frozen=True)
class Step:
    role: Role
    command: str
    gate: Role | None = None
    need_ok: bool = False


@dataclass(frozen=True)
class CtlCommand:
    name: str
    help: str
    handler: Handler | None = None  # None: done by ctl.py itself, no supervisor needed
    usage: str = ""  # its arguments, as ctl's usage shows them
    nargs: tuple[int, int | None] = (0, 0)  # fewest and most arguments (None: any number)
    fanout: tuple[Step, ...] = ()


def status(sup: Any, now: float) -> dict[str, Any]:
    """The `status` reply: the run, and every actor with its state, process and what it reported."""
    actors = {}
    for n in sup.order:
        c = sup.children[n]
        actors[n] = {
            "state": str(c.state), "pid": c.pid if c.alive else None, "restarts": c.restarts,
            "uptime_s": round(now - c.started_at, 3) if c.alive else None,
            "heartbeat_age_s": round(now - c.last_seen, 3) if c.alive else None,
            "info": c.info, "status": c.status_info,
            **({"detail": c.detail} if c.state == ActorState.FAILED and c.detail else {}),
        }
    rec = sup.record
    return {"run_id": sup.run_id, "previous_run_id": rec.previous_run_id, "previous_clean": rec.previous_clean,
            "pid": os.getpid(), "since": rec.since, "phase": sup.phase,
            "bad_messages": sup.lifecycle.stats["bad"] + sup.control.stats["bad"],
            "run_dir": sup.run_dir, "uptime_s": round(now - sup.started_mono, 3), "actors": actors,
            "log_write_errors": logmod.write_errors(),
            **({"placement": {"here": sup.cfg.placement.here, "remote": {
                a: {"group": g, "state": sup.peers.state.get(a, "unknown")} for a, g in sup.remote.items()}}}
               if sup.remote else {})}


def _status(sup: Any, req: CtlRequest, reply: Callable[..., None], *_: Any) -> None:
    reply(True, data=status(sup, time.monotonic()))


def _shutdown(sup: Any, req: CtlRequest, reply: Callable[..., None], *_: Any) -> None:
    reply(True, data={"stopping": list(reversed(sup.order))})
    sup.request_stop("ctl shutdown")


def _remote(sup: Any, name: str) -> str:
    group = sup.remote[name]
    return f"actor {name} runs under the supervisor of group {group} ({sup.cfg.placement.control[group]}); ask that one"


def _restart(sup: Any, req: CtlRequest, reply: Callable[..., None], *_: Any) -> None:
    c = sup.children.get(req.arg)
    if c is None and req.arg in sup.remote:
        reply(False, _remote(sup, req.arg))
    elif c is None:
        reply(False, f"unknown actor {req.arg!r} (actors: {', '.join(sup.order)})")
    elif sup.phase != "running":
        reply(False, f"supervisor is {sup.phase}")
    elif c.disabled and c.state == ActorState.FAILED:
        sup.children.reenable(c)
        reply(True, data={"restarting": c.name, "re-enabled": True, "message": f"{c.name} re-enabled: starting again"})
    elif not c.alive:
        reply(False, f"actor {req.arg} is not running (state {c.state})")
    else:
        c.restart_asked = "ctl restart"
        sup.children.stop(c, "ctl restart")
        reply(True, data={"restarting": c.name, "pid": c.pid})


def _send(sup: Any, req: CtlRequest, reply: Callable[..., None], ident: bytes, delim: bool) -> None:
    """One command an actor's class declares, its answer relayed; with none, the list of them."""
    decl = sup.decls.get(req.arg)
    if decl is None:
        reply(False, f"unknown actor {req.arg!r} (actors: {', '.join([*sup.order, *sup.remote])})")
    elif not req.command:
        listing = "".join(f"\n  {k}: {v}" for k, v in decl.commands.items()) or " none"
        reply(True, data={"commands": decl.commands, "message": f"commands of {decl.name}:{listing}"})
    elif req.command not in decl.commands:
        reply(False, f"{decl.name} has no command {req.command!r} (its commands: {', '.join(decl.commands) or 'none'}"
                     f"; `ctl send {decl.name}` lists them)")
    elif decl.name in sup.remote:
        reply(False, _remote(sup, decl.name))
    elif sup.phase != "running":
        reply(False, f"supervisor is {sup.phase}")
    else:
        sup.fanout.start(ident, delim, req, [(decl.name, req.command, (), False)], args=dict(req.args))


def _fan_out(sup: Any, req: CtlRequest, reply: Callable[..., None], ident: bytes, delim: bool) -> None:
    steps = CONTROL[req.cmd].fanout
    if sup.phase != "running":
        reply(False, f"supervisor is {sup.phase}")
    elif plan := sup.fanout.plan(steps):
        sup.fanout.start(ident, delim, req, plan)
    else:
        reply(False, f"no actor here takes {req.cmd}: none declares the role "
                     f"{' or '.join(sorted({str(s.role) for s in steps}))}")


_ORD, _EX = Role.ORDER_SENDER, Role.EXCHANGE
CONTROL: dict[str, CtlCommand] = {c.name: c for c in (
    CtlCommand("status", "trading state, actors, pids, uptime, restarts, heartbeat age, run_id", _status),
    CtlCommand("pause", "the strategy, then the exchange, stop taking new orders", _fan_out,
               fanout=(Step(_ORD, "pause"), Step(_EX, "pause", gate=_ORD))),
    CtlCommand("resume", "the exchange, then (if it resumed) the strategy, take orders again; refused while halted",
               _fan_out, fanout=(Step(_EX, "resume"), Step(_ORD, "resume", gate=_EX, need_ok=True))),
    CtlCommand("stop-and-close", "pause the strategy; the exchange pauses and flattens every position", _fan_out,
               fanout=(Step(_ORD, "pause"), Step(_EX, "stop-and-close", gate=_ORD))),
    CtlCommand("halt", "kill switch: pause the strategy; the exchange cancels everything and rejects new orders",
               _fan_out, fanout=(Step(_ORD, "pause"), Step(_EX, "halt", gate=_ORD))),
    CtlCommand("unhalt", "lift the kill switch; trading stays paused until resume", _fan_out,
               fanout=(Step(_EX, "unhalt"),)),
    CtlCommand("restart", "stop ACTOR and start it again at once (not counted toward restart intensity); "
               "re-enables an actor disabled after crash-looping", _restart, "ACTOR", (1, 1)),
    CtlCommand("send", "send ACTOR one of the commands its class declares, with KEY=VALUE arguments (a TOML "
               "value, or a bare word as a string); without COMMAND, list them", _send,
               "ACTOR [COMMAND [KEY=VALUE ...]]", (1, None)),
    CtlCommand("shutdown", "stop every actor in reverse start order, then the supervisor", _shutdown),
    CtlCommand("runs", "every run of the run directory: mode, start, end, exit code, fills, final equity "
               "(from its files; no supervisor needed)"),
    CtlCommand("keygen", "make the CurveZMQ keys tcp endpoints need (default DIR ./keys; docs/SECURITY.md)",
               usage="[DIR]", nargs=(0, 1)),
)}
SUPERVISOR_COMMANDS = tuple(n for n, c in CONTROL.items() if c.handler is not None)


def check_args(cmd: CtlCommand, args: list[str]) -> str:
    """"" if ``args`` fit ``cmd``, else what is wrong (ctl prints it and exits 2)."""
    least, most = cmd.nargs
    if len(args) < least:
        return f"{cmd.name} needs {cmd.usage}"
    if most is not None and len(args) > most:
        return (f"unrecognized arguments: {' '.join(args[most:])} ({cmd.name} takes "
                f"{cmd.usage or 'no argument'})")
    return ""


def parse_kv(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE arguments of `send`: a TOML value, or a bare word as a string. ValueError names a bad one."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"argument {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out

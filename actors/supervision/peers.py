"""Placement across supervisors: this one's share of the actors, and what its peers report.

With ``[placement] groups`` each supervisor runs one group's actors. ``place``
gives this supervisor its effective config; ``Peers`` asks the supervisors of
the other groups, over their control endpoints, for the states of the actors
this one's actors are ``after``, so such a dependency is met when the peer
reports the actor READY or running.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import zmq

import config as config_mod
from bus.codec import ProtocolError, Stamper
from bus.messages import CtlReply, CtlRequest
from bus.sockets import Endpoints, EndpointError, Port, SocketSpec, open_port

PEER_POLL_S = 0.2  # how often a supervisor asks its peers for their actors' states
PEER_ANSWER_S = 2.0  # an unanswered question to a peer is asked again after this


def place(cfg: config_mod.Config, run_dir: str,
          declared: dict[str, SocketSpec] | None = None) -> tuple[config_mod.Config, dict[str, str]]:
    """This supervisor's effective config and the remote actors (actor -> group).

    Actors of other groups are disabled here (their supervisor runs them); their
    names stay in ``after``. lifecycle and events stay local ipc files (each
    supervisor has its own); control is this group's tcp endpoint; every
    endpoint an actor binds (the engine's and those actors declare) must be tcp
    so the other group's actors reach it. Raises ConfigError.
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
        eps = Endpoints.from_config(run_dir, bus, declared=declared)
    except EndpointError as e:
        raise config_mod.ConfigError(f"placement: {e}") from None
    for name, spec in eps.specs.items():
        if spec.binder != "supervisor" and not eps[name].startswith("tcp://"):
            raise config_mod.ConfigError(
                f"placement: endpoint {name} (bound by {spec.binder}) is {eps[name]}: actors under the other "
                f"supervisors cannot reach it; set bus.transport = \"tcp\" or bus.endpoints.{name}")
    return eff, remote


class Peers:
    """Control clients of the peer supervisors whose actors ours wait on."""

    def __init__(self, remote: dict[str, str], needed: set[str], cfg: config_mod.Config, run_dir: str,
                 ctx: zmq.Context, stamper: Stamper, log: Any):
        self.remote = remote  # actor -> group of the supervisor that runs it
        self.state: dict[str, str] = {}  # last state each peer reported for its actors
        self.log = log
        self.ports: dict[str, Port] = {}
        self.next_poll = 0.0
        self._wait: dict[str, float] = {}  # group -> until when we wait for its answer
        for group in sorted(needed):
            bus = msgspec.structs.replace(cfg.bus, endpoints={**cfg.bus.endpoints,
                                                              "control": cfg.placement.control[group]})
            # strict=False: only "control" is used here; the supervisor checked every name already.
            self.ports[group] = open_port(ctx, Endpoints.from_config(run_dir, bus, strict=False), "control",
                                          bind=False, stamper=stamper)

    def poll(self, now: float) -> None:
        """Ask every peer for its actors' states (at most every PEER_POLL_S); replies come in drain()."""
        if not self.ports or now < self.next_poll:
            return
        self.next_poll = now + PEER_POLL_S
        for group, port in self.ports.items():
            # One question at a time: while a peer is down, requests would queue
            # up in our socket and reach it in a burst when it comes up.
            if now < self._wait.get(group, 0.0):
                continue
            try:
                port.send(CtlRequest(id=group, cmd="status"), flags=zmq.NOBLOCK)
                self._wait[group] = now + PEER_ANSWER_S
            except zmq.Again:  # no connection yet: ask again later
                pass

    def drain(self) -> None:
        for group, port in self.ports.items():
            for _ in range(100):
                try:
                    self.on_reply(group, port.recv(zmq.NOBLOCK).msg)
                except zmq.Again:
                    break
                except ProtocolError as e:
                    self.log.warning("bad message from peer supervisor", group=group, error=str(e))

    def on_reply(self, group: str, msg: Any) -> None:
        self._wait.pop(group, None)
        if not isinstance(msg, CtlReply) or not msg.ok:
            return
        for name, a in (msg.data.get("actors") or {}).items():
            if self.remote.get(name) == group and isinstance(a, dict):
                old = self.state.get(name)
                self.state[name] = str(a.get("state", ""))
                if old != self.state[name]:
                    self.log.info("remote actor", actor=name, group=group, state=self.state[name],
                                  peer_run_id=msg.data.get("run_id"))

    def close(self) -> None:
        for p in self.ports.values():
            p.close()

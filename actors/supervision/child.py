"""One supervised actor (OTP: a child; circus: a watcher of one process).

Its state moves only along bus/actor_states.py's table: assigning ``state``
checks the transition and raises IllegalTransition on any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import config as config_mod
from actors.registry import Declaration
from actors.supervision.policy import ChildSpec
from actors.supervision.process import ActorProcess
from bus.actor_states import ActorState, transition


@dataclass
class Child:
    name: str
    cfg: config_mod.ActorCfg
    decl: Declaration
    proc: ActorProcess | None = None
    started_at: float = 0.0  # monotonic: spawned
    init_at: float = 0.0  # INIT sent (start_timeout for READY counts from here)
    ready_at: float = 0.0
    last_seen: float = 0.0
    restarts: int = 0
    restart_due: float = 0.0
    stop_deadline: float = 0.0
    sigterm_sent: bool = False
    restart_asked: str = ""  # why it is being stopped to be restarted (ctl restart, restart with X): not counted
    detail: str = ""  # why it is "failed" (shown by ctl status and every ActorEvent while it stays so)
    disabled: bool = False  # failed by on_give_up = "disable": the others run on, ctl restart re-enables it
    info: dict[str, Any] = field(default_factory=dict)  # READY info (and init_error, fatal)
    status_info: dict[str, Any] = field(default_factory=dict)  # the latest heartbeat's
    _state: ActorState = ActorState.PENDING

    @property
    def state(self) -> ActorState:
        return self._state

    @state.setter
    def state(self, new: ActorState) -> None:
        self._state = transition(self.name, self._state, new)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    @property
    def spec(self) -> ChildSpec:
        return ChildSpec(self.cfg.restart, self.cfg.on_give_up)

    def overdue(self, now: float, hb_timeout_s: float) -> str:
        """What its silence or slowness calls for now, or "": "start" (no LOADED or
        READY within start_timeout), "hung" (heartbeats missed), "sigterm" / "sigkill"
        (a STOP not obeyed within stop_timeout, then SIGTERM not within 1 s)."""
        if not self.alive:
            return ""
        s = self._state
        if (s == ActorState.STARTING and now - self.init_at > self.cfg.start_timeout) or (
                s == ActorState.LOADING and now - self.started_at > self.cfg.start_timeout):
            return "start"
        if s in (ActorState.LOADED, ActorState.READY, ActorState.RUNNING) and now - self.last_seen > hb_timeout_s:
            return "hung"
        if s == ActorState.STOPPING and now > self.stop_deadline:
            return "sigkill" if self.sigterm_sent else "sigterm"
        return ""

    def start_timeout_reason(self) -> str:
        t = f"start_timeout {self.cfg.start_timeout:g}s"
        return f"no READY within {t}" if self._state == ActorState.STARTING else f"not loaded within {t}"

"""The restart policy: a pure function from an actor's exit and the restart history to a decision.

OTP's vocabulary: each actor has a child spec (``restart``: permanent,
transient, temporary; ``on_give_up``), the supervisor has its restart intensity
(more than ``max_restarts`` counted restarts within ``max_seconds``) and a
backoff (``backoff_initial_ms`` doubling per consecutive restart up to
``backoff_max_ms``, reset once an actor stayed up ``stable_seconds``).

``decide`` is the whole rule; no process, socket, clock or log is involved, so
tests/test_restart_policy.py drives every path directly. The supervisor
applies the decision (spawns, stops, logs, says why in the actor's own words).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from actors.base import EXIT_CONFIG, EXIT_DISK, EXIT_ERROR


class Action(StrEnum):
    RESTART = "restart"  # spawn again at ``restart_at``
    STAY_DOWN = "stay-down"  # not restarted: its policy says so, or the supervisor is stopping
    GIVE_UP = "give-up"  # on_give_up = "disable": leave it failed, the others run on
    ESCALATE = "escalate"  # stop everything in order and exit with ``exit_code``


class Why(StrEnum):
    DISK_ERROR = "disk error"  # a full or read-only run directory: a restart cannot help
    SHUTTING_DOWN = "shutting down"
    START_FAILED = "exited before READY"  # while the supervisor starts: the run cannot start
    BACKTEST = "exited during the backtest"  # a replay cannot resume mid-way and stay deterministic
    TEMPORARY = "temporary"
    TRANSIENT = "transient"  # a clean exit of a transient actor
    ASKED = "asked"  # a deliberate restart: ctl restart, restart_with
    CRASHED = "crashed"  # restarted after its backoff
    INTENSITY = "restart intensity exceeded"


@dataclass(frozen=True)
class Limits:
    """The supervisor's restart intensity and backoff (OTP: supervisor flags)."""

    max_restarts: int = 5
    max_seconds: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    stable_seconds: float = 30.0

    @classmethod
    def from_config(cls, sup: Any) -> "Limits":
        return cls(sup.max_restarts, sup.max_seconds, sup.backoff_initial_ms / 1000.0, sup.backoff_max_ms / 1000.0,
                   sup.stable_seconds)


@dataclass(frozen=True)
class ChildSpec:
    """What the policy knows of one actor (OTP: its child spec)."""

    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    on_give_up: Literal["shutdown", "disable"] = "shutdown"


@dataclass(frozen=True)
class Exit:
    actor: str
    code: int  # the process's return code; negative: killed by that signal
    at: float  # when it exited (monotonic seconds)
    ready_at: float = 0.0  # when this incarnation sent READY; 0: it never did
    asked: bool = False  # the supervisor stopped it to restart it (ctl restart, restart_with)
    before_ready: bool = False  # it exited loading or starting (no READY yet)
    phase: Literal["starting", "running", "stopping"] = "running"  # the supervisor's
    backtest: bool = False


@dataclass(frozen=True)
class History:
    """What earlier exits left: counted restarts within the window, and each actor's
    consecutive restarts since it was last stable (the backoff exponent)."""

    window: tuple[tuple[float, str, bool], ...] = ()  # (time, actor, on its own budget)
    consecutive: dict[str, int] = field(default_factory=dict)

    def forget(self, actor: str) -> "History":
        """A disabled or re-enabled actor: its restarts leave the window, its backoff starts over."""
        return History(tuple(w for w in self.window if w[1] != actor),
                       {a: n for a, n in self.consecutive.items() if a != actor})


@dataclass(frozen=True)
class Decision:
    action: Action
    why: Why
    restart_at: float = 0.0
    delay: float = 0.0
    counted: bool = False  # it took a place in the intensity window
    in_window: int = 0  # counted restarts in the window against the same budget, this one included
    exit_code: int = 0  # ESCALATE: the supervisor's exit code (2: the actor refused the user's input)


def decide(ex: Exit, history: History, spec: ChildSpec, limits: Limits) -> tuple[Decision, History]:
    """What to do about ``ex``, and the history that decision leaves."""
    if ex.code == EXIT_DISK:
        return Decision(Action.ESCALATE, Why.DISK_ERROR, exit_code=EXIT_ERROR), history
    if ex.phase == "stopping":
        return Decision(Action.STAY_DOWN, Why.SHUTTING_DOWN), history
    if ex.before_ready and ex.phase == "starting":
        return Decision(Action.ESCALATE, Why.START_FAILED, exit_code=_failure_code(ex.code)), history
    if ex.backtest:
        return Decision(Action.ESCALATE, Why.BACKTEST, exit_code=_failure_code(ex.code)), history
    if ex.asked:  # an operator's or restart_with's doing, not a failure: at once, never counted
        return Decision(Action.RESTART, Why.ASKED, restart_at=ex.at), history
    if spec.restart == "temporary":
        return Decision(Action.STAY_DOWN, Why.TEMPORARY), history
    if spec.restart == "transient" and ex.code == 0:
        return Decision(Action.STAY_DOWN, Why.TRANSIENT), history
    consecutive = history.consecutive.get(ex.actor, 0)
    if ex.ready_at and ex.at - ex.ready_at >= limits.stable_seconds:
        consecutive = 0
    # An actor that may be disabled has a budget of its own: its crash loop neither
    # uses up the others' budget nor gets it blamed for theirs.
    own = spec.on_give_up == "disable"
    window = tuple(w for w in history.window if ex.at - w[0] < limits.max_seconds) + ((ex.at, ex.actor, own),)
    n = sum(1 for _t, a, o in window if (a == ex.actor if own else not o))
    if n > limits.max_restarts:
        if own:
            return (Decision(Action.GIVE_UP, Why.INTENSITY, counted=True, in_window=n),
                    History(window, history.consecutive).forget(ex.actor))
        return (Decision(Action.ESCALATE, Why.INTENSITY, counted=True, in_window=n, exit_code=EXIT_ERROR),
                History(window, {**history.consecutive, ex.actor: consecutive}))
    delay = min(limits.backoff_initial_s * (2 ** consecutive), limits.backoff_max_s)
    return (Decision(Action.RESTART, Why.CRASHED, restart_at=ex.at + delay, delay=delay, counted=True, in_window=n),
            History(window, {**history.consecutive, ex.actor: consecutive + 1}))


def _failure_code(rc: int) -> int:
    """An actor refusing the user's input (a plugin, its params, a data file:
    actors.base.UserError, its exit 2) is a config error, exit 2; anything else 1."""
    return EXIT_CONFIG if rc == EXIT_CONFIG else EXIT_ERROR


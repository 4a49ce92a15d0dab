"""Actor states: one definition for the supervisor and the wire.

The supervisor moves each actor through ``ActorState`` along ``TRANSITIONS``
only (``transition`` raises on anything else, so a path the code was not meant
to take fails loudly instead of showing a state that cannot be). ``ActorEvent``
(bus/messages.py) publishes the coarser wire vocabulary ``EVENT_STATES``: each
state's ``event`` name, so subscribers never see the supervisor's bookkeeping
states (loading, loaded, backoff).
"""

from __future__ import annotations

from enum import StrEnum


class ActorState(StrEnum):
    PENDING = "pending"  # configured, not spawned yet (or re-enabled, spawned on the next round)
    LOADING = "loading"  # spawned: importing, connecting the lifecycle channel
    LOADED = "loaded"  # imported and connected, waiting for INIT (its dependencies are not READY yet)
    STARTING = "starting"  # INIT sent: running init()
    READY = "ready"  # init() done, waiting for RUN
    RUNNING = "running"
    STOPPING = "stopping"  # STOP sent (then SIGTERM, then SIGKILL)
    BACKOFF = "backoff"  # exited; spawned again once its restart delay is over
    EXITED = "exited"  # exited and stays down: its restart policy says so, or the supervisor is stopping
    FAILED = "failed"  # exited on a failure that stops the run, or disabled (on_give_up = "disable")

    @property
    def event(self) -> str:
        """The name ``ActorEvent`` carries for this state."""
        return _EVENT[self]


# What subscribers (state-publisher, monitors) see: the order is the wire enum's.
EVENT_STATES = ("starting", "ready", "running", "stopping", "stopped", "exited", "restarting", "failed")

_EVENT = {
    ActorState.PENDING: "stopped",
    ActorState.LOADING: "starting",
    ActorState.LOADED: "starting",
    ActorState.STARTING: "starting",
    ActorState.READY: "ready",
    ActorState.RUNNING: "running",
    ActorState.STOPPING: "stopping",
    ActorState.BACKOFF: "restarting",
    ActorState.EXITED: "exited",
    ActorState.FAILED: "failed",
}
assert set(_EVENT) == set(ActorState) and set(_EVENT.values()) == set(EVENT_STATES)

# Where an exit leads (the restart policy decides which): restarted later, down for good, failed.
_EXIT = frozenset({ActorState.BACKOFF, ActorState.EXITED, ActorState.FAILED})

TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    ActorState.PENDING: frozenset({ActorState.LOADING}),
    ActorState.LOADING: frozenset({ActorState.LOADED, ActorState.STOPPING}) | _EXIT,
    ActorState.LOADED: frozenset({ActorState.STARTING, ActorState.STOPPING}) | _EXIT,
    ActorState.STARTING: frozenset({ActorState.READY, ActorState.STOPPING}) | _EXIT,
    ActorState.READY: frozenset({ActorState.RUNNING, ActorState.STOPPING}) | _EXIT,
    ActorState.RUNNING: frozenset({ActorState.STOPPING}) | _EXIT,
    # STOP again: a shutdown reaching an actor a `ctl restart` is already stopping.
    ActorState.STOPPING: frozenset({ActorState.STOPPING}) | _EXIT,
    ActorState.BACKOFF: frozenset({ActorState.LOADING}),
    ActorState.EXITED: frozenset(),  # down for good in this run
    ActorState.FAILED: frozenset({ActorState.PENDING}),  # `ctl restart` of a disabled actor
}
assert set(TRANSITIONS) == set(ActorState)


class IllegalTransition(RuntimeError):
    """The supervisor tried a state change the table does not allow: a bug in the supervisor."""


def transition(actor: str, old: ActorState, new: ActorState) -> ActorState:
    """``new`` if the table allows ``old -> new``, else IllegalTransition naming the actor and both states."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none"
        raise IllegalTransition(f"actor {actor}: illegal state change {old} -> {new} (from {old}: {allowed})")
    return new

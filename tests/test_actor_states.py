"""Actor states: one table (bus/actor_states.py) for the supervisor and ActorEvent.

The supervisor's actor handling (actors/supervision/children.py) is driven here
through every path an actor takes: start, crash and backoff, restart_with, a
hang killed, disable and re-enable, a disk error, a failed start, a start
timeout, shutdown. Processes are stand-ins, so each path is exact; a state
change outside the table raises IllegalTransition and fails the test. The
same paths with real processes are in test_supervisor.py, test_disk_faults.py
and test_system.py.
"""

from __future__ import annotations

import signal
import typing

import pytest

import config as config_mod
from actors import registry
from actors.supervision import process
from actors.supervision.children import Children
from bus import actor_states
from bus.actor_states import ActorState as S
from bus.actor_states import IllegalTransition, transition
from bus.messages import ActorEvent

DUMMIES = "tests/fixtures/dummies.toml"
LIVE = (S.LOADING, S.LOADED, S.STARTING, S.READY, S.RUNNING, S.STOPPING)


class FakeProc:
    """An actor process that exits when the test says so, or when signalled."""

    pids = iter(range(10_000, 1_000_000))

    def __init__(self) -> None:
        self.pid, self.returncode, self.stderr_at = next(self.pids), None, 0
        self.exited: int | None = None  # it is gone, not reaped yet (waitpid collects it)

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def reap(self) -> bool:
        self.returncode = self.exited
        return self.returncode is not None

    def wait(self) -> int:
        return self.reap() and self.returncode

    def signal(self, sig: int) -> None:
        if self.exited is None:
            self.exited = -sig


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **kw: self.lines.append((level, event, kw))


class Port:
    def __init__(self) -> None:
        self.sent: list[tuple[typing.Any, dict]] = []

    def send(self, msg, **kw) -> bool:
        self.sent.append((msg, kw))
        return True


class FakeSup:
    """What Children asks of the supervisor's loop; ``taken`` records every state change."""

    def __init__(self, tmp_path, sets=()):
        self.cfg = config_mod.load(DUMMIES, list(sets))
        self.order = config_mod.start_order(self.cfg)
        self.log, self.events, self.lifecycle = Recorder(), Port(), Port()
        self.run_dir, self.run_id, self.effective_cfg = str(tmp_path), "r", str(tmp_path / "config.json")
        (tmp_path / "logs").mkdir()
        self.phase, self.backtest, self.exit_code, self.shutdown_reason = "starting", False, 0, ""
        self.remote, self.shutdowns, self.deferred = {}, [], []
        self.peers = type("Peers", (), {"state": {}})()
        self.fanout = type("Fanout", (), {"defer": lambda _s, *a: self.deferred.append(a)})()
        self.children = Children(self, self.cfg, self.order, registry.declare(self.cfg, DUMMIES))

    def begin_shutdown(self, reason: str, code: int) -> None:
        self.shutdowns.append((reason, code))
        self.phase = "stopping"

    def holders(self, role):
        return tuple(n for n in self.order if role in self.children[n].decl.roles)


@pytest.fixture
def make(tmp_path_factory, monkeypatch):
    """A factory of FakeSups whose state changes all land in ``make.taken``."""
    monkeypatch.setattr(process.ActorProcess, "spawn", classmethod(lambda cls, *a, **kw: FakeProc()))
    taken: list[tuple[S, S]] = []

    def recording(actor, old, new):
        new = transition(actor, old, new)
        taken.append((old, new))
        return new
    monkeypatch.setattr("actors.supervision.child.transition", recording)

    def make(sets=()):
        return FakeSup(tmp_path_factory.mktemp("sup"), sets)
    make.taken = taken
    return make


def events(sup, actor):
    return [m.state for m, _ in sup.events.sent if isinstance(m, ActorEvent) and m.actor == actor]


def drive_to(sup, name, state):
    """Actor ``name`` brought to ``state`` the way the supervisor does it."""
    ch, c = sup.children, sup.children[name]
    steps = ((S.LOADING, lambda: ch.start_due(c.restart_due)), (S.LOADED, lambda: ch.set_state(c, S.LOADED)),
             (S.STARTING, lambda: ch.send_init(c)), (S.READY, lambda: ch.set_state(c, S.READY)),
             (S.RUNNING, lambda: ch.send_run(c)))
    for s, act in steps:
        act()
        if s == state:
            break
    if state == S.STOPPING:
        ch.stop(c, "test")
    assert c.state == state
    return c


def bring_up(sup):
    for name in sup.order:
        drive_to(sup, name, S.RUNNING)
    sup.phase = "running"


def exit_(sup, name, code):
    c = sup.children[name]
    c.proc.exited = code
    sup.children.reap()
    return c


# ------------------------------------------------------------------ the paths
def start_crash_restart(sup):
    bring_up(sup)
    assert events(sup, "a") == ["starting", "starting", "starting", "ready", "running"]
    c = exit_(sup, "a", 1)
    assert c.state == S.BACKOFF and c.restarts == 1 and events(sup, "a")[-1] == "restarting"
    sup.children.start_due(c.restart_due)
    assert c.state == S.LOADING and c.proc.alive


def restart_with(sup):
    bring_up(sup)
    b, c = exit_(sup, "b", -9), sup.children["c"]  # dummies.toml: restart_with = { b = ["c"] }
    assert b.state == S.BACKOFF and c.state == S.STOPPING and c.restart_asked == "restart with b"
    exit_(sup, "c", 0)
    assert c.state == S.BACKOFF and [a for _t, a, _o in sup.children.history.window] == ["b"]  # c's not counted
    assert [kw["next"] for _lv, ev, kw in sup.log.lines if ev == "actor exited" and kw["actor"] == "c"] == [
        "restart now (restart with b; not counted toward restart intensity)"]


def hang_killed(sup):
    bring_up(sup)
    c = sup.children["b"]
    c.last_seen = 0.0
    sup.children.enforce_timeouts(100.0, hb_timeout_s=1.0)
    assert c.proc.exited == -signal.SIGKILL and c.state == S.RUNNING  # reaped on SIGCHLD, next
    sup.children.reap()
    assert c.state == S.BACKOFF


def disable_and_re_enable(sup):
    bring_up(sup)
    c = sup.children["c"]
    assert c.cfg.on_give_up == "disable"
    for _ in range(sup.cfg.supervisor.max_restarts + 1):
        if c.state == S.BACKOFF:
            drive_to(sup, "c", S.RUNNING)  # spawned at its restart time, up again
        exit_(sup, "c", 1)
    assert c.state == S.FAILED and c.disabled and "disabled: restart intensity exceeded (4 restarts" in c.detail
    assert not sup.shutdowns and events(sup, "c")[-1] == "failed"
    sup.children.reenable(c)
    assert c.state == S.PENDING and not c.disabled and "c" not in sup.children.history.consecutive
    sup.children.start_due(0.0)
    assert c.state == S.LOADING


def disk_error(sup):
    bring_up(sup)
    c = sup.children["a"]
    c.info["fatal"] = "disk error: writing x: [Errno 28] No space left on device"
    exit_(sup, "a", 4)
    assert c.state == S.FAILED
    assert sup.shutdowns == [("a: disk error: writing x: [Errno 28] No space left on device", 1)]


def start_failure(sup, at):
    c = drive_to(sup, "b", at)
    c.info["init_error"] = "dummy init failure: instrument file missing"
    exit_(sup, "b", 2)
    assert c.state == S.FAILED
    assert sup.shutdowns == [("config error: b: dummy init failure: instrument file missing", 2)]


def start_timeout(sup):
    c = drive_to(sup, "a", S.STARTING)
    sup.children.enforce_timeouts(c.init_at + c.cfg.start_timeout + 1, hb_timeout_s=1e9)
    assert c.state == S.FAILED and sup.shutdowns == [("a: no READY within start_timeout 5s", 1)]


def shutdown(sup):
    bring_up(sup)
    sup.phase = "stopping"
    for name in reversed(sup.order):
        sup.children.stop(sup.children[name], "shutdown")
        exit_(sup, name, 0)
    assert all(c.state == S.EXITED for c in sup.children.values())


def temporary(sup):
    bring_up(sup)
    assert exit_(sup, "c", 0).state == S.EXITED


def exit_from(sup, state, outcome):
    """Crashed (restarted), exited while the supervisor stops, or a disk error: from any live state."""
    sup.phase = "running"
    c = drive_to(sup, "a", state)
    if outcome == S.EXITED:
        sup.phase = "stopping"
    c.info["fatal"] = "disk error"
    exit_(sup, "a", 4 if outcome == S.FAILED else 1)
    assert c.state == outcome


def stop_from(sup, state):
    """A shutdown reaches an actor whatever it is doing, a `ctl restart` in progress too."""
    c = drive_to(sup, "a", state)
    sup.children.stop(c, "shutdown")
    assert c.state == S.STOPPING


PATHS = {
    "start, crash, restart": (start_crash_restart, ()),
    "restart_with": (restart_with, ()),
    "hang killed": (hang_killed, ()),
    "disable, re-enable": (disable_and_re_enable, ("actors.c.on_give_up=disable",)),
    "disk error": (disk_error, ()),
    "start timeout": (start_timeout, ()),
    "shutdown": (shutdown, ()),
    "temporary": (temporary, ("actors.c.restart=temporary",)),
    **{f"start failure in {at}": (lambda sup, at=at: start_failure(sup, at), ()) for at in LIVE[:3]},
    **{f"exit from {st} to {out}": (lambda sup, st=st, out=out: exit_from(sup, st, out), ())
       for st in LIVE for out in (S.BACKOFF, S.EXITED, S.FAILED)},
    **{f"stop in {st}": (lambda sup, st=st: stop_from(sup, st), ()) for st in LIVE},
}


@pytest.mark.parametrize("name", PATHS)
def test_path(make, name):
    fn, sets = PATHS[name]
    fn(make(sets))


def test_the_paths_take_every_transition_of_the_table_and_no_other(make):
    for fn, sets in PATHS.values():
        fn(make(sets))
    table = {(old, new) for old, news in actor_states.TRANSITIONS.items() for new in news}
    assert set(make.taken) == table, sorted(table ^ set(make.taken))


# ------------------------------------------------------------------ the table itself
def test_the_wire_vocabulary_is_the_tables():
    allowed = set(typing.get_args(typing.get_type_hints(ActorEvent)["state"]))
    assert allowed == set(actor_states.EVENT_STATES) == {s.event for s in S}


def test_an_illegal_transition_raises_naming_the_actor_and_both_states():
    with pytest.raises(IllegalTransition, match=r"actor a: illegal state change exited -> loading"):
        transition("a", S.EXITED, S.LOADING)
    with pytest.raises(IllegalTransition, match="running -> ready"):
        transition("a", S.RUNNING, S.READY)


def test_the_supervisor_cannot_take_an_illegal_path(make):
    sup = make()
    c = sup.children["a"]
    with pytest.raises(IllegalTransition, match="pending -> running"):
        sup.children.send_run(c)  # RUN before the actor was even spawned
    assert c.state == S.PENDING
    shutdown(sup)
    with pytest.raises(IllegalTransition, match="exited -> loading"):
        sup.children.spawn(c)  # down for good in this run

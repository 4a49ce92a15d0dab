"""The restart policy as a pure function: exits and history in, decisions out; no process anywhere."""

import pytest

from actors.supervision.policy import Action, ChildSpec, Exit, History, Limits, Why, decide

LIM = Limits(max_restarts=3, max_seconds=30.0, backoff_initial_s=0.05, backoff_max_s=0.4, stable_seconds=10.0)
PERM, DISABLE = ChildSpec(), ChildSpec(on_give_up="disable")


def crash_loop(times, actor="a", spec=PERM, t0=100.0, every=1.0, history=None, **kw):
    """``times`` crashes of ``actor``, ``every`` seconds apart: the decisions, and the history left."""
    h, out = history or History(), []
    for i in range(times):
        d, h = decide(Exit(actor, 1, t0 + i * every, **kw), h, spec, LIM)
        out.append(d)
    return out, h


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap():
    ds, _ = crash_loop(3, every=20.0)  # spaced out: never over the intensity limit
    ds += crash_loop(3, every=20.0, t0=160.0, history=_)[0]
    assert [d.action for d in ds] == [Action.RESTART] * 6
    assert [d.delay for d in ds] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert ds[0].restart_at == 100.05 and all(d.counted for d in ds)


def test_an_actor_that_stayed_up_stable_seconds_starts_its_backoff_over():
    ds, h = crash_loop(3, every=20.0)
    assert ds[-1].delay == 0.2
    d, h = decide(Exit("a", 1, 200.0, ready_at=200.0 - LIM.stable_seconds), h, PERM, LIM)
    assert d.delay == 0.05
    d, _ = decide(Exit("a", 1, 300.0, ready_at=300.0 - LIM.stable_seconds + 0.5), h, PERM, LIM)
    assert d.delay == 0.1  # up less than stable_seconds: the backoff goes on


def test_more_than_max_restarts_within_max_seconds_escalates():
    ds, h = crash_loop(4)
    assert [d.action for d in ds] == [Action.RESTART] * 3 + [Action.ESCALATE]
    last = ds[-1]
    assert last.why == Why.INTENSITY and last.in_window == 4 and last.exit_code == 1


def test_restarts_older_than_max_seconds_leave_the_window():
    ds, h = crash_loop(3)
    d, h = decide(Exit("a", 1, 101.5 + LIM.max_seconds), h, PERM, LIM)  # the first two are out of the window now
    assert d.action == Action.RESTART and d.in_window == 2
    assert len(h.window) == 2


def test_every_actor_that_shuts_down_on_give_up_shares_one_budget():
    _, h = crash_loop(2, actor="a")
    ds, _ = crash_loop(2, actor="b", t0=102.0, history=h)
    assert [d.action for d in ds] == [Action.RESTART, Action.ESCALATE]
    assert ds[-1].in_window == 4


def test_a_disabled_actor_has_a_budget_of_its_own_and_is_given_up_on_past_it():
    _, h = crash_loop(3, actor="a")  # the others' whole budget used ...
    ds, h = crash_loop(4, actor="s", spec=DISABLE, t0=103.0, history=h)  # ... is not the strategy's
    assert [d.action for d in ds] == [Action.RESTART] * 3 + [Action.GIVE_UP]
    assert ds[-1].why == Why.INTENSITY and ds[-1].in_window == 4
    assert all(a != "s" for _t, a, _o in h.window) and "s" not in h.consecutive  # a clean budget if re-enabled
    d, _ = decide(Exit("a", 1, 108.0), h, PERM, LIM)
    assert d.action == Action.ESCALATE and d.in_window == 4  # the strategy's crashes were never blamed on a


def test_the_others_crashing_does_not_use_up_a_disabled_actors_budget():
    _, h = crash_loop(3, actor="s", spec=DISABLE)
    d, h = decide(Exit("a", 1, 103.0), h, PERM, LIM)
    assert d.action == Action.RESTART and d.in_window == 1


def test_re_enabling_forgets_the_actor():
    _, h = crash_loop(3, actor="s", spec=DISABLE)
    h = h.forget("s")
    ds, _ = crash_loop(3, actor="s", spec=DISABLE, t0=104.0, history=h)
    assert [d.action for d in ds] == [Action.RESTART] * 3 and ds[0].delay == 0.05


def test_deliberate_restarts_are_immediate_and_never_counted():
    h = History()
    for i in range(10):
        d, h = decide(Exit("a", 0, 100.0 + i, asked=True), h, PERM, LIM)
        assert (d.action, d.why, d.delay, d.restart_at, d.counted) == (Action.RESTART, Why.ASKED, 0.0, 100.0 + i, False)
    assert h == History()
    d, h = decide(Exit("a", 1, 120.0), h, PERM, LIM)
    assert d.in_window == 1 and d.delay == 0.05  # and they did not advance the backoff either


@pytest.mark.parametrize("spec,code,action,why", [
    (ChildSpec(restart="temporary"), 1, Action.STAY_DOWN, Why.TEMPORARY),
    (ChildSpec(restart="temporary"), 0, Action.STAY_DOWN, Why.TEMPORARY),
    (ChildSpec(restart="transient"), 0, Action.STAY_DOWN, Why.TRANSIENT),
    (ChildSpec(restart="transient"), 1, Action.RESTART, Why.CRASHED),
    (ChildSpec(restart="transient"), -9, Action.RESTART, Why.CRASHED),
    (ChildSpec(restart="permanent"), 0, Action.RESTART, Why.CRASHED),
])
def test_restart_kinds(spec, code, action, why):
    d, h = decide(Exit("a", code, 100.0), History(), spec, LIM)
    assert (d.action, d.why) == (action, why)
    assert d.counted == (action == Action.RESTART) and bool(h.window) == d.counted


@pytest.mark.parametrize("code,exit_code", [(1, 1), (0, 1), (-9, 1), (2, 2)])
def test_in_a_backtest_any_exit_aborts(code, exit_code):
    for asked in (False, True):
        d, h = decide(Exit("a", code, 100.0, backtest=True, asked=asked), History(), PERM, LIM)
        assert (d.action, d.why, d.exit_code) == (Action.ESCALATE, Why.BACKTEST, exit_code)
        assert h == History()


@pytest.mark.parametrize("code,exit_code", [(1, 1), (-9, 1), (2, 2)])
def test_an_exit_before_ready_while_starting_aborts_the_start(code, exit_code):
    d, _ = decide(Exit("a", code, 100.0, before_ready=True, phase="starting"), History(), PERM, LIM)
    assert (d.action, d.why, d.exit_code) == (Action.ESCALATE, Why.START_FAILED, exit_code)
    # once running, a restarted actor failing its start is just a crash
    d, _ = decide(Exit("a", code, 100.0, before_ready=True, phase="running"), History(), PERM, LIM)
    assert d.action == Action.RESTART
    # an actor already READY that exits while the others start is a crash too
    d, _ = decide(Exit("a", code, 100.0, phase="starting"), History(), PERM, LIM)
    assert d.action == Action.RESTART


def test_a_disk_error_stops_everything_even_when_asked_or_stopping():
    for kw in ({}, {"asked": True}, {"phase": "stopping"}, {"backtest": True}):
        d, _ = decide(Exit("a", 4, 100.0, **kw), History(), DISABLE, LIM)
        assert (d.action, d.why, d.exit_code) == (Action.ESCALATE, Why.DISK_ERROR, 1), kw


def test_while_stopping_nothing_restarts():
    for code in (0, 1, -9, 2):
        d, h = decide(Exit("a", code, 100.0, phase="stopping", asked=True), History(), PERM, LIM)
        assert (d.action, d.why) == (Action.STAY_DOWN, Why.SHUTTING_DOWN) and h == History()


def test_limits_from_the_config():
    import config
    lim = Limits.from_config(config.load(None, ["supervisor.backoff_initial_ms=250"]).supervisor)
    assert lim == Limits(5, 60.0, 0.25, 5.0, 30.0)

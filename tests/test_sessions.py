"""actors/sessions.py: states, transitions, DST on a US calendar, holidays, early closes."""

from __future__ import annotations

import datetime as dt

import pytest

from actors.sessions import SessionCalendar, SessionError, Transitions

UTC = dt.timezone.utc


def ns(y, mo, d, h, mi=0, s=0):
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture(scope="module")
def xnys():
    return SessionCalendar("America/New_York", open="09:30", close="16:00", square_off="15:50", pre_open="09:00",
                           calendar="XNYS")


def test_states_through_a_day(xnys):
    # Friday 2026-03-06, EST (UTC-5)
    assert xnys.state(ns(2026, 3, 6, 13, 59)) == "closed"
    assert xnys.state(ns(2026, 3, 6, 14, 0)) == "pre-open"
    assert xnys.state(ns(2026, 3, 6, 14, 30)) == "open"
    assert xnys.state(ns(2026, 3, 6, 20, 49, 59)) == "open"
    assert xnys.state(ns(2026, 3, 6, 20, 50)) == "square-off"
    assert xnys.state(ns(2026, 3, 6, 21, 0)) == "closed"
    assert xnys.publishes(ns(2026, 3, 6, 14, 0)) and not xnys.publishes(ns(2026, 3, 6, 21, 0))


def test_square_off_across_the_march_dst_change(xnys):
    # US clocks go forward on Sunday 2026-03-08: 15:50 New York is 20:50 UTC on Friday the 6th,
    # 19:50 UTC on Monday the 9th.
    assert xnys.next_transition(ns(2026, 3, 6, 15)) == (ns(2026, 3, 6, 20, 50), "square-off")
    assert xnys.next_transition(ns(2026, 3, 9, 15)) == (ns(2026, 3, 9, 19, 50), "square-off")
    assert xnys.state(ns(2026, 3, 9, 19, 50)) == "square-off"
    assert xnys.state(ns(2026, 3, 6, 19, 50)) == "open"  # the same UTC minute was still trading before it
    # over the weekend the next change is Monday's pre-open, 09:00 EDT = 13:00 UTC
    assert xnys.next_transition(ns(2026, 3, 7, 12)) == (ns(2026, 3, 9, 13), "pre-open")


def test_a_holiday_has_no_session(xnys):
    assert not xnys.is_trading_day(dt.date(2026, 12, 25))  # Christmas, a Friday
    assert xnys.boundaries(dt.date(2026, 12, 25)) == []
    assert xnys.state(ns(2026, 12, 25, 16)) == "closed"
    assert xnys.next_transition(ns(2026, 12, 24, 23)) == (ns(2026, 12, 28, 14), "pre-open")


def test_early_close_moves_the_square_off(xnys):
    # 2026-11-27, the day after Thanksgiving: NYSE closes at 13:00, so square-off at 12:50 EST
    b = dict((s, t) for t, s in xnys.boundaries(dt.date(2026, 11, 27)))
    assert b["closed"] == ns(2026, 11, 27, 18) and b["square-off"] == ns(2026, 11, 27, 17, 50)


def test_holiday_file_and_list(tmp_path):
    f = tmp_path / "holidays.txt"
    f.write_text("# exchange holidays\n2026-07-03\n\n2026-12-24  # Christmas Eve\n")
    cal = SessionCalendar("Asia/Kolkata", open="09:15", close="15:30", square_off="15:20", holidays=["2026-01-26"],
                          holiday_file=str(f))
    for d in (dt.date(2026, 7, 3), dt.date(2026, 12, 24), dt.date(2026, 1, 26), dt.date(2026, 7, 4)):
        assert not cal.is_trading_day(d)
    assert cal.is_trading_day(dt.date(2026, 7, 6))
    assert cal.state(ns(2026, 7, 6, 9, 55)) == "square-off"  # 15:25 IST = 09:55 UTC
    bad = tmp_path / "bad.txt"
    bad.write_text("2026-01-01\nnot-a-date\n")
    with pytest.raises(SessionError, match=r"bad.txt: line 2: 'not-a-date'"):
        SessionCalendar(holiday_file=str(bad))


@pytest.mark.parametrize("kw,match", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"open": "16:00", "close": "09:30"}, "before session.close"),
    ({"square_off": "17:00"}, "square_off"),
    ({"open": "9.30"}, "not HH:MM"),
    ({"days": ["Mon", "Funday"]}, "not weekdays"),
    ({"calendar": "NOPE"}, "unknown exchange calendar"),
])
def test_bad_config_is_named(kw, match):
    with pytest.raises(SessionError, match=match):
        SessionCalendar(**kw)


def test_transitions_give_open_and_close_events(xnys):
    tr = Transitions(xnys)
    assert tr.feed(ns(2026, 3, 6, 14, 10)) == []  # pre-open
    assert tr.feed(ns(2026, 3, 6, 14, 30)) == [("open", dt.date(2026, 3, 6))]
    assert tr.feed(ns(2026, 3, 6, 20, 55)) == []  # square-off: still in session
    # the next bar is Monday's open: Friday's close comes first
    assert tr.feed(ns(2026, 3, 9, 13, 30)) == [("close", dt.date(2026, 3, 6)), ("open", dt.date(2026, 3, 9))]

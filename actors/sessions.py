"""Trading sessions without transport: which instants are in session, in which state,
and when the state next changes. Pure (no sockets, no clock of its own): live callers
pass the wall clock, backtests the bar timestamps, so both apply the same rules.

A trading day (local date in ``timezone``) has, in order::

    closed -> pre-open (optional) -> open -> square-off (optional) -> closed
              pre_open               open    square_off              close

- ``pre-open``: market data flows (indicators warm up) but the exchange takes no orders;
- ``open``: trading;
- ``square-off``: the exchange has flattened the positions and takes only orders that
  reduce a position (new opening orders are refused);
- ``closed``: no market data is published, every order is refused (``market-closed``).

Trading days are the configured weekdays (``days``) minus the holidays: those of an
exchange calendar (``calendar = "XNYS"``, from the exchange_calendars package, which
also gives early closes: the close of such a day moves earlier and the square-off with
it) and those of ``holidays`` / a ``holiday_file`` (one YYYY-MM-DD a line, ``#``
comments). Local times become instants through zoneinfo, so a 15:50 square-off in
America/New_York is 20:50 UTC in winter and 19:50 UTC in summer (DST). A session never
spans midnight (open < close).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from actors.base import UserError

STATES = ("pre-open", "open", "square-off", "closed")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
SCAN_DAYS = 400  # how far next_transition looks for a trading day (a year of holidays is never longer)
NS = 10**9


class SessionError(UserError, ValueError):
    """A bad [session] table or holiday file; the message names the key or the line."""


def _hhmm(text: str, key: str) -> _dt.time:
    try:
        h, m = str(text).split(":")
        return _dt.time(int(h), int(m))
    except ValueError:
        raise SessionError(f"session.{key}: {text!r} is not HH:MM (24-hour clock)") from None


def read_holiday_file(path: str) -> list[_dt.date]:
    """Dates of a holiday file: one YYYY-MM-DD a line; blank lines and # comments ignored."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                s = line.split("#", 1)[0].strip()
                if not s:
                    continue
                try:
                    out.append(_dt.date.fromisoformat(s))
                except ValueError:
                    raise SessionError(f"{path}: line {n}: {s!r} is not a date (YYYY-MM-DD)") from None
    except OSError as e:
        raise SessionError(f"session.holiday_file: cannot read {path}: {e.strerror or e}") from None
    return out


class SessionCalendar:
    """One market's sessions. ``cfg`` is the ``[session]`` table (config.SessionCfg)."""

    def __init__(self, timezone: str = "UTC", open: str = "09:30", close: str = "16:00", square_off: str = "",
                 pre_open: str = "", days: Iterable[str] = WEEKDAYS[:5], holidays: Iterable[str] = (),
                 holiday_file: str = "", calendar: str = ""):
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SessionError(f"session.timezone: unknown time zone {timezone!r} (e.g. America/New_York)") from None
        self.timezone = timezone
        self.open_t, self.close_t = _hhmm(open, "open"), _hhmm(close, "close")
        if not self.open_t < self.close_t:
            raise SessionError(f"session.open ({open}) must be before session.close ({close}): "
                               "a session does not span midnight")
        self.square_t = _hhmm(square_off, "square_off") if square_off else None
        if self.square_t is not None and not self.open_t < self.square_t <= self.close_t:
            raise SessionError(f"session.square_off ({square_off}) must be after open ({open}) and at or "
                               f"before close ({close})")
        self.pre_t = _hhmm(pre_open, "pre_open") if pre_open else None
        if self.pre_t is not None and not self.pre_t < self.open_t:
            raise SessionError(f"session.pre_open ({pre_open}) must be before open ({open})")
        bad = [d for d in days if d not in WEEKDAYS]
        if bad:
            raise SessionError(f"session.days: {bad} are not weekdays ({', '.join(WEEKDAYS)})")
        self.weekdays = {WEEKDAYS.index(d) for d in days}
        self.holidays: set[_dt.date] = set()
        for h in holidays:
            try:
                self.holidays.add(_dt.date.fromisoformat(h))
            except (TypeError, ValueError):
                raise SessionError(f"session.holidays: {h!r} is not a date (YYYY-MM-DD)") from None
        if holiday_file:
            self.holidays.update(read_holiday_file(holiday_file))
        self.calendar = calendar
        self.cal_days: set[_dt.date] = set()  # the exchange calendar's sessions, within its range
        self.cal_range: tuple[_dt.date, _dt.date] | None = None
        self.early_close: dict[_dt.date, _dt.time] = {}  # local close earlier than close_t
        if calendar:
            self._load_calendar(calendar)
        self._cache = (0, -1, "closed")  # [lo, hi) -> state: consecutive timestamps reuse it

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SessionCalendar":
        return cls(timezone=cfg.timezone, open=cfg.open, close=cfg.close, square_off=cfg.square_off,
                   pre_open=cfg.pre_open, days=cfg.days, holidays=cfg.holidays, holiday_file=cfg.holiday_file,
                   calendar=cfg.calendar)

    def _load_calendar(self, name: str) -> None:
        # exchange_calendars imports pandas (about a second): only a process with a calendar pays it.
        try:
            import exchange_calendars as xcals
        except ImportError:
            raise SessionError(f"session.calendar = {name!r} needs the exchange_calendars package "
                               "(pip install 'paperbus[calendars]'), or use session.holidays / holiday_file") from None
        try:
            cal = xcals.get_calendar(name)
        except Exception as e:  # InvalidCalendarName and friends
            raise SessionError(f"session.calendar: unknown exchange calendar {name!r} ({type(e).__name__}: {e})") \
                from None
        for day, close in zip(cal.sessions, cal.closes):
            d = day.date()
            self.cal_days.add(d)
            local = close.tz_convert(self.timezone).time() if close.tzinfo else close.time()
            if local < self.close_t:
                self.early_close[d] = local
        self.cal_range = (cal.first_session.date(), cal.last_session.date())

    # ---------------------------------------------------------------- days
    def is_trading_day(self, d: _dt.date) -> bool:
        if d in self.holidays or d.weekday() not in self.weekdays:
            return False
        if self.cal_range is not None and self.cal_range[0] <= d <= self.cal_range[1]:
            return d in self.cal_days
        return True

    def _at(self, d: _dt.date, t: _dt.time) -> int:
        return int(_dt.datetime.combine(d, t, tzinfo=self.tz).timestamp()) * NS

    def boundaries(self, d: _dt.date) -> list[tuple[int, str]]:
        """The state changes of local date ``d`` as (instant ns, state entered); [] on a day off."""
        if not self.is_trading_day(d):
            return []
        close_t = self.early_close.get(d, self.close_t)
        out = []
        if self.pre_t is not None:
            out.append((self._at(d, self.pre_t), "pre-open"))
        out.append((self._at(d, self.open_t), "open"))
        if self.square_t is not None:
            sq = self.square_t
            if close_t != self.close_t:  # an early close moves the square-off by as much
                gap = (_dt.datetime.combine(d, self.close_t) - _dt.datetime.combine(d, self.square_t))
                sq = max(self.open_t, (_dt.datetime.combine(d, close_t) - gap).time())
            out.append((self._at(d, sq), "square-off"))
        out.append((self._at(d, close_t), "closed"))
        return out

    def _local_date(self, ts: int) -> _dt.date:
        return _dt.datetime.fromtimestamp(ts / NS, self.tz).date()

    # -------------------------------------------------------------- states
    def state(self, ts: int) -> str:
        """The state at instant ``ts`` (ns)."""
        lo, hi, st = self._cache
        if lo <= ts < hi:
            return st
        d = self._local_date(ts)
        st, lo = "closed", 0
        for at, s in self.boundaries(d):
            if at <= ts:
                st, lo = s, at
        hi = self.next_transition(ts)[0]
        self._cache = (lo if lo else ts, hi, st)
        return st

    def next_transition(self, ts: int) -> tuple[int, str]:
        """(instant, state entered) of the first state change after ``ts``."""
        d = self._local_date(ts)
        for i in range(SCAN_DAYS):
            for at, s in self.boundaries(d + _dt.timedelta(days=i)):
                if at > ts:
                    return at, s
        raise SessionError(f"no trading day within {SCAN_DAYS} days of {d}: check session.days and the holidays")

    def session_of(self, ts: int) -> _dt.date | None:
        """The local trading date whose session ``ts`` is in (pre-open to close), or None."""
        return self._local_date(ts) if self.state(ts) != "closed" else None

    def publishes(self, ts: int) -> bool:
        """Market data at ``ts`` goes out: from the pre-open (warm-up) to the close."""
        return self.state(ts) != "closed"

    def describe(self, ts: int) -> dict[str, Any]:
        """What the state view shows: the state, the next change and the time zone."""
        nxt, to = self.next_transition(ts)
        return {"state": self.state(ts), "next_ns": nxt, "next_state": to, "timezone": self.timezone,
                "calendar": self.calendar}


class Transitions:
    """Turns a stream of instants into session events for a strategy: ``feed(ts)`` returns
    the ("open" | "close", local trading date) events crossed since the last instant, in
    order (a backtest's daily bars may cross a close and the next open at once)."""

    def __init__(self, cal: SessionCalendar):
        self.cal = cal
        self.in_session: _dt.date | None = None  # the session open (between open and close)

    def feed(self, ts: int) -> list[tuple[str, _dt.date]]:
        st = self.cal.state(ts)
        live = st in ("open", "square-off")
        d = self.cal._local_date(ts)
        out: list[tuple[str, _dt.date]] = []
        if self.in_session is not None and (not live or d != self.in_session):
            out.append(("close", self.in_session))
            self.in_session = None
        if live and self.in_session is None:
            out.append(("open", d))
            self.in_session = d
        return out


def calendar_of(cfg: Any) -> SessionCalendar | None:
    """The calendar of a whole config's ``[session]`` table; None without one (24/7)."""
    return SessionCalendar.from_cfg(cfg.session) if cfg.session is not None else None

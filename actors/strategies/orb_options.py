"""OrbOptions: an intraday options strategy on an opening-range breakout of the underlying.

Each session (``on_session_open``; without a [session] table, from the first bar):

1. range: the high and low of the underlying's first ``range_bars`` bars;
2. armed: a close above the range high buys ``qty`` at-the-money calls, a close below
   the low buys ATM puts (strike nearest the close, of the nearest expiry that is not
   today's when ``skip_same_day`` is set, else the nearest);
3. in a trade: a close back through the middle of the range sells the option (a stop;
   ``stop = false``: none);
   otherwise the position is held until the exchange's square-off flattens it before
   the close (``[session] square_off``), or ``on_session_close`` forgets it;
4. after an exit, a new range forms from the next ``range_bars`` bars, up to
   ``max_trades`` trades a session (1: the classic one breakout a day).

Config (config/options-intraday.toml)::

    [strategy]
    plugin = "actors.strategies.orb_options:OrbOptions"
    symbols = ["SYN1"]              # the underlying's bars are enough: options are priced by the feed
    params = { underlying = "SYN1", range_bars = 30, qty = 1, max_trades = 1, stop = true }
"""

from __future__ import annotations

from typing import Any

from actors.strategies.base import Strategy
from bus.messages import Bar


class OrbOptions(Strategy):
    def __init__(self, underlying: str, range_bars: int = 30, qty: int = 1, max_trades: int = 1,
                 skip_same_day: bool = False, stop: bool = True):
        for k, v in (("range_bars", range_bars), ("qty", qty), ("max_trades", max_trades)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise TypeError(f"OrbOptions: {k} must be a positive int, not {v!r}")
        if not isinstance(underlying, str) or not underlying:
            raise TypeError(f"OrbOptions: underlying must be a symbol, not {underlying!r}")
        self.underlying, self.range_bars, self.qty = underlying, range_bars, qty
        self.max_trades, self.skip_same_day, self.stop = max_trades, bool(skip_same_day), bool(stop)
        self.warmup_bars = 0
        self.day: Any = None
        self.trades = 0
        self._new_range()
        self.option: str | None = None  # the option held (or ordered)
        self.log_trades: list[tuple[str, str, float]] = []  # (what, option, underlying close), for tests

    def _new_range(self) -> None:
        self.n = 0
        self.hi = float("-inf")
        self.lo = float("inf")

    def on_start(self) -> None:
        if self.underlying not in self.instruments:
            raise ValueError(f"OrbOptions: underlying {self.underlying!r} is not in the instrument master")

    def on_session_open(self, day: Any) -> None:
        self.day, self.trades, self.option = day, 0, None
        self._new_range()

    def on_session_close(self, day: Any) -> None:
        # The exchange squared the position off (or the option expired): start clean.
        self.option = None

    def on_bar(self, bar: Bar) -> None:
        if bar.symbol != self.underlying:
            return
        c = bar.close
        if self.option is not None and not self.stop:
            return  # held until the square-off (or the expiry)
        if self.option is not None:
            # target_position counts what is in flight: the same decisions whenever the
            # fills arrive (either kernel). A position the exchange squared off is 0 already.
            mid = (self.hi + self.lo) / 2
            right = self.instruments[self.option].right
            if (right == "C" and c < mid) or (right == "P" and c > mid):
                self.target_position(self.option, 0)
                self.log_trades.append(("exit", self.option, c))
                self.option = None
                self._new_range()
            return
        if self.n < self.range_bars:
            self.n += 1
            self.hi, self.lo = max(self.hi, bar.high), min(self.lo, bar.low)
            return
        if self.trades >= self.max_trades or self.session_state() != "open":
            return
        right = "C" if c > self.hi else "P" if c < self.lo else None
        if right is None:
            return
        opt = self.atm(self.underlying, right, self._expiry())
        if opt is None:
            return
        if self.target_position(opt.symbol, self.qty):
            self.option = opt.symbol
            self.trades += 1
            self.log_trades.append(("entry", opt.symbol, c))

    def _expiry(self) -> str | None:
        exps = self.expiries(self.underlying)
        if self.skip_same_day and self.day is not None:
            later = [e for e in exps if e > self.day.isoformat()]
            return later[0] if later else None
        return exps[0] if exps else None

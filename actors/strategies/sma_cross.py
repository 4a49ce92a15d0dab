"""SmaCross: moving-average crossover, long-short (or long-only) at a fixed size.

Crossover rule, evaluated on the close of each bar t once both SMAs exist at
t-1 and t (so ``warmup_bars = slow + 1``):

- up-cross   when fast[t-1] < slow[t-1] and fast[t] > slow[t] -> target +qty
- down-cross when fast[t-1] > slow[t-1] and fast[t] < slow[t] -> target -qty
  (0 when ``long_only``)

Strict on both sides: an SMA equal to the other at t-1 or t is not a cross, so
touching without crossing never trades. Between crosses nothing is sent.
Difference from backtrader's ``CrossOver``: it carries the last non-zero
difference through ties, so fast == slow at t-1 followed by fast > slow at t
is a cross there when the difference was negative before the tie; here it is
not. The two agree whenever the SMAs are never exactly equal.

Example (fast=2, slow=3, qty=5), closes 10 10 10 9 8 9 11 12:
SMA2 from the 2nd bar, SMA3 from the 3rd; at bar 7 (close 11) SMA2 = 10.0 >
SMA3 = 9.33 while at bar 6 SMA2 = 8.5 < SMA3 = 8.67: up-cross -> buy 5.

Config::

    [strategy]
    plugin = "actors.strategies.sma_cross:SmaCross"
    params = { fast = 10, slow = 30, qty = 10, long_only = false }
"""

from __future__ import annotations

from collections import deque

from actors.strategies.base import Strategy
from bus.messages import Bar


class SmaCross(Strategy):
    def __init__(self, fast: int, slow: int, qty: int, long_only: bool = False):
        for k, v in (("fast", fast), ("slow", slow), ("qty", qty)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise TypeError(f"SmaCross: {k} must be a positive int, not {v!r}")
        if fast >= slow:
            raise TypeError(f"SmaCross: fast ({fast}) must be shorter than slow ({slow})")
        self.fast, self.slow, self.qty, self.long_only = fast, slow, qty, bool(long_only)
        self.warmup_bars = slow + 1
        self.closes: dict[str, deque[float]] = {}
        self.prev: dict[str, tuple[float, float]] = {}  # (fast, slow) SMA at the previous bar

    def on_bar(self, bar: Bar) -> None:
        c = self.closes.get(bar.symbol)
        if c is None:
            c = self.closes[bar.symbol] = deque(maxlen=self.slow)
        c.append(bar.close)
        if len(c) < self.slow:
            return
        closes = list(c)
        f = sum(closes[-self.fast:]) / self.fast
        s = sum(closes) / self.slow
        prev = self.prev.get(bar.symbol)
        self.prev[bar.symbol] = (f, s)
        if prev is None:
            return
        pf, ps = prev
        if pf < ps and f > s:
            self.target_position(bar.symbol, self.qty)
        elif pf > ps and f < s:
            self.target_position(bar.symbol, 0 if self.long_only else -self.qty)

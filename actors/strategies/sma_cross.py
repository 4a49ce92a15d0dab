"""SmaCross: moving-average crossover, long-short (or long-only) at a fixed size.

Crossover rule (backtrader's ``CrossOver``, so backtests agree with it exactly,
see docs/PARITY.md), evaluated on the close of each bar t once both SMAs exist:

- d[t] = fast[t] - slow[t]; nzd[t] = d[t] if it is non-zero, else nzd[t-1]
  (seeded on the first bar where both SMAs exist, even if zero);
- up-cross   at t when nzd[t-1] < 0 and fast[t] > slow[t] -> target +qty
- down-cross at t when nzd[t-1] > 0 and fast[t] < slow[t] -> target -qty
  (0 when ``long_only``)

So touching (equal SMAs) and then passing through is one cross, on the bar
where it passes through; touching and going back is no cross. Between crosses
nothing is sent. The first possible signal is on bar ``slow + 1``.

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
        self.nzd: dict[str, float] = {}  # last non-zero fast - slow difference, per symbol

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
        prev = self.nzd.get(bar.symbol)
        d = f - s
        self.nzd[bar.symbol] = d if (d or prev is None) else prev
        if prev is None:
            return  # seed bar: no signal
        if prev < 0.0 and f > s:
            self.target_position(bar.symbol, self.qty)
        elif prev > 0.0 and f < s:
            self.target_position(bar.symbol, 0 if self.long_only else -self.qty)

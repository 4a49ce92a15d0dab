"""SmaCross: moving-average crossover, long-short (or long-only) at a fixed size.

Crossover rule (backtrader's ``CrossOver``, so backtests agree with it exactly,
see docs/PARITY.md), evaluated on the close of each bar t once both SMAs exist:

- SMA(n)[t] = math.fsum(last n closes) / n, backtrader's ``Average``: the sum is
  correctly rounded, so it does not depend on the order of the additions nor on
  what left the window before. A plain or running sum differs in the last bits,
  and on prices such as 50.05 (not exact in binary) those bits decide whether
  two SMAs tie, so they move crosses. (The plugin decides the sign of
  fast - slow from plain sums where their rounding error cannot change it, and
  from the fsum averages otherwise: the same decisions, faster.);
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
    params = { fast = 10, slow = 30, qty = 10, long_only = false }   # qty = 0.01 on BTC/USDT
"""

from __future__ import annotations

import math
from collections import deque

from actors.strategies.base import Strategy
from bus.messages import Bar

# Unit roundoff of a float. A plain sum of n floats is within about (n - 1) U sum(|x|) of
# the exact sum (Higham, Accuracy and Stability of Numerical Algorithms, 4.2), so its
# average of n positive closes is within (n + 1) U of the exact mean, relative; fsum / n,
# correctly rounded twice, within 2 U.
U = 2.0 ** -53


class _Windows:
    """One symbol's closes and crossover memory."""

    __slots__ = ("fast", "slow", "bars", "last_nonpositive", "nzd")

    def __init__(self, fast: int, slow: int):
        self.fast: deque[float] = deque(maxlen=fast)
        self.slow: deque[float] = deque(maxlen=slow)
        self.bars = 0
        self.last_nonpositive = -slow  # bar number of the last close <= 0 (none yet)
        self.nzd: float | None = None  # last non-zero fast - slow difference


class SmaCross(Strategy):
    def __init__(self, fast: int, slow: int, qty: int | float, long_only: bool = False):
        for k, v in (("fast", fast), ("slow", slow)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise TypeError(f"SmaCross: {k} must be a positive int, not {v!r}")
        # qty: whole units, or a fraction of a crypto (0.01 BTC); the instrument's step is
        # checked when an order is made (Context.target_position names it).
        if not isinstance(qty, (int, float)) or isinstance(qty, bool) or not (0 < qty < float("inf")):
            raise TypeError(f"SmaCross: qty must be a positive number, not {qty!r}")
        if fast >= slow:
            raise TypeError(f"SmaCross: fast ({fast}) must be shorter than slow ({slow})")
        self.fast, self.slow, self.qty, self.long_only = fast, slow, qty, bool(long_only)
        self.warmup_bars = slow + 1
        self.windows: dict[str, _Windows] = {}
        # |plain-sum average - fsum average| <= (slow + 3) U x the average for either window
        # while every close in it is positive; twice that is the margin (see on_bar).
        self._doubt = 2 * (slow + 3) * U

    def on_bar(self, bar: Bar) -> None:
        w = self.windows.get(bar.symbol)
        if w is None:
            w = self.windows[bar.symbol] = _Windows(self.fast, self.slow)
        c = bar.close
        w.fast.append(c)
        w.slow.append(c)
        n = w.bars = w.bars + 1
        if c <= 0.0:
            w.last_nonpositive = n
        if n < self.slow:
            return
        # Only the signs of fast - slow matter, and those of backtrader's fsum averages
        # equal those of plain sums unless the plain difference is within the rounding
        # error of the sums: then (ties, near-ties) or when a close <= 0 is in the window
        # (the bound needs positive terms), compute backtrader's floats themselves.
        # fsum on every bar would be exact too, at about 1.5 times the plugin's cost.
        f = sum(w.fast) / self.fast
        s = sum(w.slow) / self.slow
        if abs(f - s) <= self._doubt * (f + s) or n - w.last_nonpositive < self.slow:
            f = math.fsum(w.fast) / self.fast
            s = math.fsum(w.slow) / self.slow
        prev = w.nzd
        d = f - s
        w.nzd = d if (d or prev is None) else prev
        if prev is None:
            return  # seed bar: no signal
        if prev < 0.0 and f > s:
            self.target_position(bar.symbol, self.qty)
        elif prev > 0.0 and f < s:
            self.target_position(bar.symbol, 0 if self.long_only else -self.qty)

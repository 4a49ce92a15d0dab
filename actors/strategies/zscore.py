"""ZScoreReversion: fade moves away from the rolling mean.

z = (close - mean) / stdev over the last ``window`` closes (the current one
included; population stdev). Both sums are ``math.fsum``, correctly rounded like
SmaCross's averages (docs/PARITY.md): no rounding error of the additions reaches
a comparison with a band. On each bar, once ``window`` closes exist:

- z >  entry_z  -> target -qty (price stretched up: sell)
- z < -entry_z  -> target +qty
- |z| < exit_z  -> target 0 (back near the mean: close)
- otherwise hold. A flat window (stdev 0) sends nothing.

Example (window=3, entry_z=1.2, exit_z=0.5, qty=10): closes 10 10 13 give
mean 11, stdev 1.414, z = 1.41 > 1.2 -> sell to -10; a later close at the
window mean has z = 0 < 0.5 -> buy back to 0.

Config::

    [strategy]
    plugin = "actors.strategies.zscore:ZScoreReversion"
    params = { window = 20, entry_z = 2.0, exit_z = 0.5, qty = 10 }
"""

from __future__ import annotations

import math
from collections import deque

from actors.strategies.base import Strategy
from bus.messages import Bar


class ZScoreReversion(Strategy):
    def __init__(self, window: int, entry_z: float, exit_z: float, qty: int):
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise TypeError(f"ZScoreReversion: window must be an int >= 2, not {window!r}")
        if not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0:
            raise TypeError(f"ZScoreReversion: qty must be a positive int, not {qty!r}")
        if not (isinstance(entry_z, (int, float)) and isinstance(exit_z, (int, float))
                and 0 <= exit_z < entry_z and math.isfinite(entry_z)):
            raise TypeError(f"ZScoreReversion: need 0 <= exit_z < entry_z, got exit_z={exit_z!r} entry_z={entry_z!r}")
        self.window, self.entry_z, self.exit_z, self.qty = window, float(entry_z), float(exit_z), qty
        self.warmup_bars = window
        self.closes: dict[str, deque[float]] = {}

    def on_bar(self, bar: Bar) -> None:
        c = self.closes.get(bar.symbol)
        if c is None:
            c = self.closes[bar.symbol] = deque(maxlen=self.window)
        c.append(bar.close)
        if len(c) < self.window:
            return
        mean = math.fsum(c) / self.window
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in c) / self.window)
        if sd <= 1e-12 * max(1.0, abs(mean)):
            return
        z = (bar.close - mean) / sd
        if z > self.entry_z:
            self.target_position(bar.symbol, -self.qty)
        elif z < -self.entry_z:
            self.target_position(bar.symbol, self.qty)
        elif abs(z) < self.exit_z:
            self.target_position(bar.symbol, 0)

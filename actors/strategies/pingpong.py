"""PingPong: trades on every bar, alternating long and flat. A probe, not an edge.

Used by the latency benchmark (every bar produces exactly one order, so bar ->
order -> ack -> fill can be timed on each) and wherever a strategy that trades
often is wanted (fault injection). With ``qty = 1``: bar 1 buys 1, bar 2 sells
1, bar 3 buys 1, ...; target positions, so a missed fill is never doubled.

Config::

    [strategy]
    plugin = "actors.strategies.pingpong:PingPong"
    params = { qty = 1 }
"""

from __future__ import annotations

from actors.strategies.base import Strategy
from bus.messages import Bar


class PingPong(Strategy):
    def __init__(self, qty: int = 1):
        if not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0:
            raise TypeError(f"PingPong: qty must be a positive int, not {qty!r}")
        self.qty = qty
        self.warmup_bars = 0
        self.long: dict[str, bool] = {}

    def on_bar(self, bar: Bar) -> None:
        go_long = not self.long.get(bar.symbol, False)
        self.long[bar.symbol] = go_long
        self.target_position(bar.symbol, self.qty if go_long else 0)

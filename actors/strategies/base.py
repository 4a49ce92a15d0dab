"""Strategy plugin API.

A strategy is one class in one file, subclassing ``Strategy``; config names it
as ``strategy.plugin = "package.module:Class"`` and passes ``strategy.params``
to its constructor as keyword arguments::

    # mystrats/breakout.py
    from actors.strategies.base import Strategy

    class Breakout(Strategy):
        def __init__(self, lookback: int = 20, qty: int = 10):
            self.lookback, self.qty = lookback, qty
            self.warmup_bars = lookback  # "warming" until this many bars per symbol
            self.highs: dict[str, list[float]] = {}

        def on_bar(self, bar):
            h = self.highs.setdefault(bar.symbol, [])
            if len(h) >= self.lookback and bar.close > max(h[-self.lookback:]):
                self.target_position(bar.symbol, self.qty)
            h.append(bar.high)

    # config: [strategy] plugin = "mystrats.breakout:Breakout"  params = { lookback = 50 }

Hooks (all optional): ``on_start``, ``on_bar(bar)``, ``on_tick(tick)``,
``on_quote(quote)`` (best bid/offer of a live venue: bid, ask, bid_size, ask_size),
``on_fill(fill)``, ``on_order_rejected(reject)``, ``on_stop``; with a [session]
table ``on_session_open(day)`` / ``on_session_close(day)``. Options: ``chain``,
``expiries``, ``atm``, ``option_by_offset``, ``option_by_delta``, ``greeks``,
``session_state`` (actors/strategies/market_api.py).
Helpers: ``submit(symbol, side, qty, order_type, price=None, tif="GTC")`` (order_type
has no default), ``cancel``, ``target_position`` (market orders); read access: ``position``,
``instruments``, ``params``, ``log``.

Quantities: an ``int`` for whole-unit instruments (equities: ``lot_size`` 1), or a
``float`` on the instrument's quantity step (``self.instruments[sym].lot_size``, e.g.
0.001 for BTC/USDT: 0.015 is fine, 0.0015 is not). A float is taken as the decimal it
prints as (3 * 0.1 is 0.3), to at most 9 decimals. ``submit`` and ``target_position``
raise ValueError naming the quantity and the step when it is off the step, so the
mistake shows in the strategy rather than as a reject. ``position(sym)`` and
``fill.qty``/``fill.position`` are ints for whole units, floats otherwise; the
instrument's ``min_qty`` and ``min_notional`` are checked by the exchange
(``below-min-qty``, ``below-min-notional`` rejects, seen in ``on_order_rejected``).

Orders are only sent while the host is trading: not while it is warming up
(fewer than ``warmup_bars`` bars seen for that symbol, history included) nor
paused. Otherwise the helpers send nothing and return None, so the same code
runs over history and live data.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
import math
from typing import Any, Callable, get_args

from actors.strategies.market_api import MarketApi
from bus.messages import (
    Bar, CancelOrder, Fill, Instrument, OrderReject, OrderType, OrderUpdate, QueryReply, Quote, SubmitOrder, Tick,
    TimeInForce,
)
from bus.quantity import from_atoms, show, to_atoms

SIDES = ("buy", "sell")
ORDER_TYPES = get_args(OrderType)
TIFS = get_args(TimeInForce)
TERMINAL = ("filled", "cancelled", "rejected", "expired")


@dataclass
class LiveOrder:
    """An order of ours that may still change the position."""

    cl_id: str
    symbol: str
    side: str
    qty: int  # atoms (bus/quantity.py): sums of quantities are exact
    seen: int = 0  # filled quantity whose Fill we have applied, atoms
    final_filled: int | None = None  # set when the exchange says the order is done, atoms

    def outstanding(self) -> int:
        """Quantity that may still reach the position (unsigned), atoms."""
        target = self.qty if self.final_filled is None else self.final_filled
        return max(0, target - self.seen)


class Context:
    """Order bookkeeping shared by the host and the plugin.

    Positions come from the exchange (Query at start, then ``Fill.position``,
    which is absolute). In-flight orders are ours until the exchange says they
    are done *and* all their fills have been applied: fills and order updates
    travel on the same PUB but an update may be seen before its fill, and
    ``target_position`` must never count a quantity twice or not at all.
    """

    def __init__(self, instruments: list[Instrument], send: Callable[[Any], Any], cl_prefix: str,
                 params: dict[str, Any] | None = None, can_trade: Callable[[str], bool] | None = None,
                 log: Any = None):
        self.instruments = {i.symbol: i for i in instruments}
        self.params = dict(params or {})
        self.send = send
        self.can_trade = can_trade or (lambda _s: True)
        self.log = log or logging.getLogger("strategy")
        self.positions: dict[str, int] = {}
        self.orders: dict[str, LiveOrder] = {}
        self._ids = itertools.count(1)
        self.cl_prefix = cl_prefix
        self.sent = 0  # submits sent
        self.suppressed = 0  # submits refused because warming/paused

    # ------------------------------------------------------------- from the exchange
    def seed(self, reply: QueryReply) -> None:
        """Start from the exchange's view: positions and still-open orders."""
        self.positions = {p.symbol: p.qty for p in reply.positions}
        for o in reply.orders:
            if o.status in ("new", "partially-filled"):
                # Their fills so far are already in the position.
                self.orders[o.cl_id] = LiveOrder(o.cl_id, o.symbol, o.side, to_atoms(o.qty), seen=to_atoms(o.filled))

    def apply_fill(self, fill: Fill) -> bool:
        """Update position/order from a fill; True if the fill was for one of our orders."""
        self.positions[fill.symbol] = fill.position
        o = self.orders.get(fill.cl_id)
        if o is None:
            return False
        o.seen += to_atoms(fill.qty)
        self._maybe_forget(o)
        return True

    def apply_update(self, upd: OrderUpdate) -> None:
        o = self.orders.get(upd.order.cl_id)
        if o is not None and upd.order.status in TERMINAL:
            o.final_filled = to_atoms(upd.order.filled)
            self._maybe_forget(o)

    def apply_reject(self, rej: OrderReject) -> bool:
        return self.orders.pop(rej.cl_id, None) is not None

    def _maybe_forget(self, o: LiveOrder) -> None:
        if o.outstanding() == 0:
            self.orders.pop(o.cl_id, None)

    # ------------------------------------------------------------------ queries
    def position(self, symbol: str) -> int | float:
        return self.positions.get(symbol, 0)

    def _inflight_atoms(self, symbol: str) -> int:
        return sum((o.outstanding() if o.side == "buy" else -o.outstanding())
                   for o in self.orders.values() if o.symbol == symbol)

    def inflight(self, symbol: str) -> int | float:
        """Signed quantity of our orders in ``symbol`` not yet in the position."""
        return from_atoms(self._inflight_atoms(symbol))

    def _step_error(self, what: str, symbol: str, qty: Any, signed: bool = False) -> str | None:
        """Why ``qty`` is not a quantity of ``symbol`` (a number on its lot size), or None."""
        if isinstance(qty, bool) or not isinstance(qty, (int, float)) or not math.isfinite(qty):
            return f"{what}: qty must be a number (int, or float on the lot size), not {qty!r}"
        if not signed and qty <= 0:
            return f"{what}: qty must be > 0, not {qty!r}"
        a = to_atoms(abs(qty))
        step = to_atoms(self.instruments[symbol].lot_size)
        if a % step or (a == 0 and qty != 0):
            return (f"{what}: qty {qty!r} of {symbol} is not a multiple of its lot size "
                    f"{show(self.instruments[symbol].lot_size)} (quantities are read to 9 decimals)")
        return None

    # ------------------------------------------------------------------ actions
    def next_cl_id(self) -> str:
        return f"{self.cl_prefix}-{next(self._ids)}"

    def submit(self, symbol: str, side: str, qty: int | float, order_type: str, price: float | None = None,
               tif: str = "GTC") -> str | None:
        if symbol not in self.instruments:
            raise ValueError(f"submit: unknown instrument {symbol!r}")
        if side not in SIDES:
            raise ValueError(f"submit: side must be 'buy' or 'sell', not {side!r}")
        err = self._step_error("submit", symbol, qty)
        if err:
            raise ValueError(err)
        qa = to_atoms(qty)
        qty = from_atoms(qa)  # the decimal it means: 0.1 + 0.2 goes out as 0.3
        if order_type not in ORDER_TYPES:
            raise ValueError(f"submit: order_type must be one of {', '.join(ORDER_TYPES)}, not {order_type!r}")
        if tif not in TIFS:
            raise ValueError(f"submit: tif must be one of {', '.join(TIFS)}, not {tif!r}")
        if not self.can_trade(symbol):
            self.suppressed += 1
            return None
        cl_id = self.next_cl_id()
        msg = SubmitOrder(cl_id=cl_id, symbol=symbol, side=side, qty=qty, order_type=order_type,  # type: ignore[arg-type]
                          price=price, tif=tif)  # type: ignore[arg-type]
        # Registered before sending: a fill may arrive before the ack.
        self.orders[cl_id] = LiveOrder(cl_id, symbol, side, qa)
        self.sent += 1
        self.send(msg)
        return cl_id

    def cancel(self, cl_id: str) -> bool:
        if cl_id not in self.orders:
            return False
        self.send(CancelOrder(cl_id=cl_id))
        return True

    def target_position(self, symbol: str, qty: int | float) -> str | None:
        if symbol not in self.instruments:
            raise ValueError(f"target_position: unknown instrument {symbol!r}")
        err = self._step_error("target_position", symbol, qty, signed=True)
        if err:
            raise ValueError(err)
        diff = to_atoms(qty) - to_atoms(self.position(symbol)) - self._inflight_atoms(symbol)
        if diff == 0:
            return None
        return self.submit(symbol, "buy" if diff > 0 else "sell", from_atoms(abs(diff)), "market")


class Strategy(MarketApi):
    """Base class of strategy plugins (options and trading hours: actors/strategies/market_api.py). The constructor takes ``strategy.params`` as keywords.

    ``warmup_bars``: bars per symbol the indicators need; orders are refused
    until then (the host warms up from market-data history at start).
    """

    warmup_bars: int = 0
    _ctx: Context

    def bind(self, ctx: Context) -> None:
        """Called by the host after construction; subclasses need not call super().__init__."""
        self._ctx = ctx

    # ---------------------------------------------------------------- hooks
    def on_start(self) -> None:
        """Once, after the instruments and the position are known, before any bar."""

    def on_bar(self, bar: Bar) -> None:
        """Each bar of a traded symbol, history first (orders refused while warming)."""

    def on_tick(self, tick: Tick) -> None:
        """Each tick of a traded symbol."""

    def on_quote(self, quote: Quote) -> None:
        """Each best bid/offer of a traded symbol (live venues; bar replays have none).
        With quotes the exchange fills market buys at the ask and sells at the bid."""

    def on_fill(self, fill: Fill) -> None:
        """A fill of one of this strategy's orders; ``position()`` already includes it."""

    def on_order_rejected(self, reject: OrderReject) -> None:
        """The exchange refused one of this strategy's orders."""

    def on_stop(self) -> None:
        """The actor is stopping."""

    # -------------------------------------------------------------- helpers
    def submit(self, symbol: str, side: str, qty: int | float, order_type: str, price: float | None = None,
               tif: str = "GTC") -> str | None:
        """Send an order; returns its client order id, or None while warming/paused.

        ``qty``: an int, or a float on the instrument's lot size (ValueError otherwise, naming both).

        ``order_type`` ("market", "limit" or "stop") has no default: nothing becomes
        a market order by omission. ``price`` is the limit or stop price (None for market)."""
        return self._ctx.submit(symbol, side, qty, order_type, price, tif)

    def cancel(self, cl_id: str) -> bool:
        """Ask to cancel one of our open orders; False if it is not open."""
        return self._ctx.cancel(cl_id)

    def target_position(self, symbol: str, qty: int | float) -> str | None:
        """Trade towards ``qty`` (signed, on the lot size) with a market order, counting orders
        already in flight: never double-sends. Exact for fractional steps (0.1 + 0.2 == 0.3)."""
        return self._ctx.target_position(symbol, qty)

    def position(self, symbol: str) -> int | float:
        return self._ctx.position(symbol)

    @property
    def instruments(self) -> dict[str, Instrument]:
        return self._ctx.instruments

    @property
    def params(self) -> dict[str, Any]:
        return self._ctx.params

    @property
    def log(self) -> Any:
        return self._ctx.log

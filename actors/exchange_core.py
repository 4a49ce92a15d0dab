"""The paper exchange's logic without transport: order entry and risk, the fill model,
accounting, the ledger, fills.csv/trades.csv and a backtest's results.

Calls in, replies back, events out, no sockets, no threads, no timers:

- requests: ``submit``, ``cancel``, ``cancel_all``, ``flatten``, ``query`` return the
  reply; ``settle()`` after a submit's reply was delivered fills what fills at once
  (``fill_on = "close"``: the client sees its order id before the fill);
- operator commands: ``command(cmd, args)`` (pause, resume, halt, unhalt, flatten,
  stop-and-close, cancel-all) returns the answer or raises ``Refused``;
- market data: ``on_bar``, ``on_tick``, ``on_quote``, ``on_feed_status``, ``end_of_data``;
- events: ``emit(msg)`` gets every Fill, OrderUpdate and AccountUpdate in the order they
  happen, each after the ledger committed what it reports;
- the caller's timers: ``publish_marks`` (an AccountUpdate when marks changed since the
  last one), ``maybe_export``.

Two callers drive this same code: the paper-exchange actor (actors/exchange.py) decodes
requests, calls these and publishes what comes out; the in-process backtest kernel
(actors/kernel.py) calls them between the feed and the strategy host. So there is one
matching, one accounting, one ledger, whichever kernel runs a backtest.

Fill model (documented rules):
- Every order is whole: no partial fills, volume is not a constraint.
- An order can only fill on market data processed *after* accepting it (the callers
  feed pending market data in before each request); in a backtest an order decided on
  bar f (``decision_bar``) may fill from bar f + 1 on, never on the bar that produced it.
- Bars: market orders fill at the open of the next bar (``fill_on = "next_open"``)
  or, with ``fill_on = "close"``, at once at the close of the last bar seen for the
  symbol (at the next bar's close if none was seen yet).
  Buy limit L fills if low <= L at min(open, L); sell limit if high >= L at
  max(open, L). Buy stop S triggers if high >= S, fills at max(open, S); sell stop
  if low <= S at min(open, S): the limit/stop price, or the open on a gap through it.
- Ticks are bars with open = high = low = close = the tick price.
- Quotes (best bid/offer): once a symbol has had one, it fills and marks on quotes
  only (a bar or trade print says where the market traded, not where we could).
  Market buys fill at the ask, sells at the bid (plus slippage); buy limit L when
  ask <= L at the ask, sell limit when bid >= L at the bid; a buy stop triggers when
  the bid reaches S, a sell stop when the ask does (the opposite side, so a spread
  widening alone triggers nothing), filled at the ask / bid plus slippage. A crossed
  or locked quote (bid >= ask) fills nothing and marks nothing; marks are the mid.
- Feed status: while a feed is not ok nothing fills on its symbols (all of the feed's
  when ``symbols`` is empty), whatever data still arrives; orders are accepted as
  usual. Once it is ok again, orders fill on the first fresh data (a market order
  under fill_on = "close" does not fill at once on a price from before the outage).
- Slippage (``slippage_bps``) moves market and stop fill prices against the trader,
  rounded outwards to the tick size. Commission per fill:
  max(commission_min, commission_pct * qty * price * multiplier + commission_per_unit * qty).
- IOC: fills on the next market-data event of its symbol, else is cancelled then.
- DAY: expires (status "expired") when the first event of a later UTC day (by
  market timestamp) arrives for its symbol, before that event can fill it, and at
  end of data. IOC orders still pending at end of data are cancelled.
- Flatten cancels the open orders of the symbols concerned and sends a market
  order closing each position; it is allowed while paused or halted (it only
  reduces risk). Pause rejects new orders ("paused"), halt cancels every open
  order and rejects new ones ("halted"); both flags persist in the ledger, so a
  restarted exchange stays paused/halted. "resume" clears a pause but never a
  halt (it is refused while halted); only "unhalt" lifts the kill switch, and
  leaves trading paused until a "resume". "stop-and-close" pauses and flattens.
  The flags (and "flattening": flatten orders still open) ride on every
  AccountUpdate and QueryReply, and an AccountUpdate goes out on each change.

Quantities: an int for whole units, else a float; kept as integer atoms of 10^-9 units
(bus/quantity.py) in the book, the account and every comparison, so positions, fills and
realized PnL never drift (whole-unit instruments compute the very same floats as ever).

Checks on submit, in order: halted, paused, known instrument, price given for limit and
stop only, qty a positive multiple of the lot size (bad-lot-size), at least min_qty
(below-min-qty), price on the tick size; max open orders; worst-case position
(position + open orders on the same side + this order) within max_position; order
notional (qty * price * multiplier, market orders at the ask/bid or last price if one
is known) within max_order_notional and at least min_notional (below-min-notional);
then buying power (insufficient-funds):

- ``account = "cash"``: a buy's cost plus fee (at its limit, else the market's price)
  must fit in the cash less what open buys hold; a sell may not exceed the position
  less the open sells (no short sales). At its fill a buy whose cost plus fee exceeds
  the cash (a gap) is cancelled ("insufficient funds at fill"): cash never goes below 0.
- ``account = "margin"``: the initial margin the order adds, max(initial_margin,
  1/leverage) * the notional by which it grows |position| (open orders on its side
  counted as filled; reducing orders add none), plus fee, must fit in the equity less
  the positions' initial margin (at their marks) and what open orders hold. When a
  mark leaves the equity below maintenance_margin * the positions' value, every open
  order is cancelled and each position closed by a market order ("liquidation",
  cl_id liquidation-N) that fills as any market order on the next data; the ledger's
  events table records the equity and margin figures. maintenance_margin = 0: never.

Query returns every position (flat ones too, with their realized PnL), the open orders
and the account.

Memory holds what can still change: open orders, positions, the account. Closed orders
are in the ledger (a retried or cancelled client order id is looked up there), fills.csv
and trades.csv are written from the ledger's fills as they are read, and a backtest's
equity curve goes to a scratch file (actors/results.py), so a long run costs disk, not
memory. In a backtest the ledger commits thousands of writes at a time
(``Ledger.group_commits``): a backtest that dies is run again, never resumed.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from array import array
from typing import Any, Callable

import msgspec

from actors import exports, report
from actors import options as options_mod
from actors.accounting import Account, RoundTrip
from actors.ledger import Ledger
from actors.results import EquitySeries
from bus.messages import (
    AccountInfo, AccountUpdate, CancelReply, EndOfData, FeedStatus, Fill, Instrument, OrderAck, OrderInfo,
    OrderReject, OrderUpdate, PositionInfo, QueryReply, Quote, SubmitOrder,
)
from bus.quantity import SCALE, decimals as qty_decimals, from_atoms, show, to_atoms

DAY_NS = 86_400 * 10**9
OPEN = ("new", "partially-filled")


def _money(x: float) -> float:
    """Within the wire's Money bounds (an absurd figure must not make the account unsendable)."""
    return max(-9.9e14, min(9.9e14, x))


class Refused(Exception):
    """An operator command the exchange refuses; the message says why (an error reply)."""


class ExchangeCore:
    """One exchange's books. ``cfg`` is the ``[exchange]`` config table (bus: config.ExchangeCfg).

    ``ledger`` has been started (``Ledger.start_run``); the books are rebuilt from it
    here. ``out_dir`` receives fills.csv and trades.csv (and a backtest's results).
    ``backtest``: orders decided on bar f fill from f + 1 on, the account goes out on the
    caller's timer rather than per fill, and an equity row is kept per bar timestamp.
    ``wall_clock``: market data is stamped with the wall clock (the live synthetic feed),
    so a fill is never stamped before its order.
    """

    def __init__(self, cfg: Any, instruments: list[Instrument], ledger: Ledger, *, out_dir: str,
                 emit: Callable[[Any], None], log: Any, backtest: bool = False, wall_clock: bool = False,
                 now_ns: Callable[[], int] = time.time_ns):
        self.cfg = cfg
        self.instruments: dict[str, Instrument] = {i.symbol: i for i in instruments}
        self.ledger = ledger
        self.out_dir = out_dir
        self.emit = emit
        self.log = log
        self.backtest = backtest
        self.wall_clock = wall_clock
        self.now_ns = now_ns
        self.slip = cfg.slippage_bps / 10_000.0
        self.step = {i.symbol: to_atoms(i.lot_size) for i in instruments}  # quantity step, atoms
        self.cash_account = cfg.account == "cash"
        self.im = max(cfg.initial_margin, 1.0 / cfg.leverage)  # initial margin, fraction of notional
        self.mm = cfg.maintenance_margin
        self.reserve: dict[int, float] = {}  # open order id -> cash (cash) or margin (margin) it holds
        self.quotes: dict[str, tuple[float, float]] = {}  # symbol -> (bid, ask) of its last quote
        self.feed_stale: dict[str, set[str] | None] = {}  # feed -> its stale symbols (None: all of them)
        self.liquidating: set[int] = set()  # open liquidation orders
        self._pending_hold = 0.0  # what the order being accepted holds (set by _funds_refusal)
        self._fseq = 0  # fseq of the market data being processed
        self.unfresh: set[str] = set()  # symbols whose feed recovered and that have had no data since
        self.paused = self.halted = False
        self.flattening: set[int] = set()  # open flatten orders of the exchange's own
        self.open: dict[int, OrderInfo] = {}  # open orders by id (closed ones are only in the ledger)
        self.open_cl: dict[str, int] = {}  # client order id -> id, open orders
        self.book: dict[str, list[int]] = {}  # symbol -> open order ids, oldest first
        self.open_qty: dict[tuple[str, str], int] = {}  # (symbol, side) -> open quantity, atoms
        self.day_of: dict[int, int] = {}  # DAY order -> UTC day it belongs to
        self.eligible: dict[int, int] = {}  # backtest: open order id -> first fseq it may fill on
        self.decision_bar = 0  # backtest: the bar (fseq) orders arriving now were decided on
        self.last_px: dict[str, float] = {}
        self.last_ts: dict[str, int] = {}
        self.n_prices = 0  # bars/ticks priced (status: shows trading keeps pace with the feed)
        self.marks_dirty = False
        self.export_dirty = False
        self.last_export = 0.0
        self._at_close: list[OrderInfo] = []  # accepted, to fill at once after the ack (settle)
        self.exported = False  # fills.csv/trades.csv written by this process
        # The account keeps no round trips: trades.csv is made from the ledger's fills,
        # and the summary needs only each trip's net PnL and each fill's fee.
        self.acct = Account(float(ledger.meta("initial_cash")), keep_trips=False)
        self.trip_nets = array("d")
        self.fill_fees = array("d")
        self._held: list[Any] = []  # the account's positions, for the equity of every bar
        self._units = 0  # position units for the exposure figure (net, or gross over several symbols)
        self.series: EquitySeries | None = None
        if backtest:
            # One row per bar timestamp, in bounded memory (a scratch file in out_dir).
            self.series = EquitySeries(os.path.join(out_dir, ".equity.bin"))
        self._rebuild()
        if backtest:
            ledger.group_commits()

    def _rebuild(self) -> None:
        """Replay the ledger: fills through the accounting, open orders back into the book."""
        led = self.ledger
        self.paused = led.meta("paused") == "1"
        self.halted = led.meta("halted") == "1"
        for r in led.iter_fills():
            res = self.acct.apply_fill(r["symbol"], r["side"], r["qty"], r["price"], r["fee"], r["ts"],
                                       r["multiplier"])
            self._booked(res.trips, r["fee"])
        for sym, row in led.positions().items():
            p = self.acct.positions.get(sym)
            got = p.units if p else 0
            if got != to_atoms(row["qty"]):
                # Cannot happen when fills and positions commit together; fills are the truth.
                self.log.error("ledger positions table disagrees with the fills; using the fills",
                               symbol=sym, table=row["qty"], fills=got)
        for r in led.open_orders():
            o = OrderInfo(order_id=r["order_id"], cl_id=r["cl_id"], symbol=r["symbol"], side=r["side"], qty=r["qty"],
                          filled=r["filled"], order_type=r["order_type"], price=r["price"], tif=r["tif"],
                          status=r["status"], ts=r["ts"])
            # What it holds, as when it was accepted: before it is in the book's open quantities.
            hold = self._hold(o.symbol, o.side, to_atoms(o.qty) - to_atoms(o.filled), o.price)
            self._book_add(o)
            if hold:
                self.reserve[o.order_id] = hold
            if r["reason"] == "flatten":
                self.flattening.add(o.order_id)
            elif r["reason"] == "liquidation":
                self.liquidating.add(o.order_id)
            if o.tif == "DAY" and r["day"] is not None:
                self.day_of[o.order_id] = r["day"]
        self.next_oid, self.next_fid = led.next_ids()
        if self.acct.n_fills or self.next_oid > 1:
            self.log.info("ledger resumed", previous_run_id=led.previous_run_id, fills=self.acct.n_fills,
                          orders=self.n_orders, open_orders=self.n_open, cash=round(self.acct.cash, 2),
                          positions={s: p.qty for s, p in self.acct.positions.items() if p.qty})

    @property
    def n_orders(self) -> int:
        """Orders in the ledger (ids are given out 1, 2, 3...)."""
        return self.next_oid - 1

    @property
    def n_open(self) -> int:
        return len(self.open)

    # ------------------------------------------------------------ book helpers
    def _book_add(self, o: OrderInfo) -> None:
        self.open[o.order_id] = o
        self.open_cl[o.cl_id] = o.order_id
        self.book.setdefault(o.symbol, []).append(o.order_id)
        k = (o.symbol, o.side)
        self.open_qty[k] = self.open_qty.get(k, 0) + to_atoms(o.qty) - to_atoms(o.filled)

    def _book_remove(self, o: OrderInfo, left: int) -> None:
        """``left``: the quantity it no longer holds open, in atoms."""
        del self.open[o.order_id]
        del self.open_cl[o.cl_id]
        self.book[o.symbol].remove(o.order_id)
        self.open_qty[(o.symbol, o.side)] -= left
        self.day_of.pop(o.order_id, None)
        self.eligible.pop(o.order_id, None)
        self.reserve.pop(o.order_id, None)
        self.liquidating.discard(o.order_id)
        if o.order_id in self.flattening:
            self.flattening.discard(o.order_id)
            if not self.flattening:
                self.marks_dirty = True  # the account update then says flattening is over

    @staticmethod
    def _fingerprint(o: OrderInfo) -> tuple:
        return o.symbol, o.side, o.qty, o.order_type, o.price, o.tif

    def _known(self, cl_id: str) -> tuple[int, tuple] | None:
        """(order id, request fingerprint) of a client order id ever used here, open or not."""
        oid = self.open_cl.get(cl_id)
        if oid is not None:
            return oid, self._fingerprint(self.open[oid])
        r = self.ledger.order_by_cl(cl_id)
        if r is None:
            return None
        return r["order_id"], (r["symbol"], r["side"], r["qty"], r["order_type"], r["price"], r["tif"])

    # -------------------------------------------------------------- requests
    @staticmethod
    def _reject(m: SubmitOrder, code: str, text: str) -> OrderReject:
        return OrderReject(cl_id=m.cl_id, code=code, text=text)

    def submit(self, m: SubmitOrder) -> OrderAck | OrderReject:
        """Risk-check and accept (ledger first) or reject; call ``settle()`` once the reply is out.

        A client order id already used gets the original ack (same terms: a retry) or a
        reject: checked in memory for open orders, and in the ledger (the cl_id UNIQUE
        index) for the others only when it matters, on a reject or when the insert
        finds it, so an order that is simply new costs no extra lookup."""
        if type(m.qty) is not int:
            # The decimal the float means (0.1 + 0.2 is 0.3): the order, its retries' terms
            # and its fills all carry that one figure.
            m = msgspec.structs.replace(m, qty=from_atoms(to_atoms(m.qty)))
        fp = (m.symbol, m.side, m.qty, m.order_type, m.price, m.tif)
        oid = self.open_cl.get(m.cl_id)
        if oid is not None:
            return self._again(m, fp, (oid, self._fingerprint(self.open[oid])))
        refusal = self._refusal(m)
        if refusal is not None:
            seen = self._known(m.cl_id)  # a retry is answered as one, whatever the state now
            if seen is not None:
                return self._again(m, fp, seen)
            self.log.debug("order rejected", cl_id=m.cl_id, code=refusal.code, text=refusal.text)
            return refusal
        try:
            o = self._accept(m.cl_id, m.symbol, m.side, m.qty, m.order_type, m.price, m.tif, "accepted",
                             hold=self._pending_hold)
        except sqlite3.IntegrityError:
            seen = self._known(m.cl_id)
            if seen is None:
                raise
            return self._again(m, fp, seen)
        if o.order_type == "market" and self.cfg.fill_on == "close" and self._now_px(o) is not None:
            self._at_close.append(o)
        return OrderAck(cl_id=m.cl_id, order_id=o.order_id)

    def _again(self, m: SubmitOrder, fp: tuple, seen: tuple[int, tuple]) -> OrderAck | OrderReject:
        """A client order id used before: the original ack for the same terms, else a reject."""
        if seen[1] == fp:
            return OrderAck(cl_id=m.cl_id, order_id=seen[0], duplicate=True)
        return self._reject(m, "duplicate-client-order-id",
                            f"client order id {m.cl_id!r} already used by order {seen[0]} with different terms")

    def _refusal(self, m: SubmitOrder) -> OrderReject | None:
        """The reject for the first rule a new order breaks, or None."""
        if self.halted:
            return self._reject(m, "halted", "trading halted (kill switch): no new orders")
        if self.paused:
            return self._reject(m, "paused", "trading paused: no new orders (cancels are accepted)")
        inst = self.instruments.get(m.symbol)
        if inst is None:
            return self._reject(m, "unknown-instrument", f"unknown instrument {m.symbol!r}")
        if self.session is not None:  # trading hours (attach_market_rules)
            closed = self._session_refusal(m)
            if closed is not None:
                return closed
        if m.order_type == "market":
            if m.price is not None:
                return self._reject(m, "bad-request", "a market order takes no price")
        elif m.price is None:
            return self._reject(m, "bad-request", f"a {m.order_type} order needs a price")
        qa = to_atoms(m.qty)
        step = self.step[m.symbol]
        if qa <= 0 or qa % step:
            return self._reject(m, "bad-lot-size", f"qty {show(m.qty)} is not a multiple of the lot size "
                                                   f"{show(inst.lot_size)} of {m.symbol}")
        if inst.min_qty and qa < to_atoms(inst.min_qty):
            return self._reject(m, "below-min-qty", f"qty {show(m.qty)} is below the min_qty {show(inst.min_qty)} "
                                                    f"of {m.symbol}")
        if m.price is not None:
            steps = m.price / inst.tick_size
            if abs(steps - round(steps)) > 1e-6:  # tolerance for binary floats like 0.1
                return self._reject(m, "bad-tick-size", f"price {m.price} is not on the tick size {inst.tick_size}")
        cfg = self.cfg
        if self.n_open >= cfg.max_open_orders:
            return self._reject(m, "risk-limit", f"max open orders {cfg.max_open_orders} reached")
        pos = self.acct.units(m.symbol)
        if m.side == "buy":
            worst = pos + self.open_qty.get((m.symbol, "buy"), 0) + qa
        else:
            worst = pos - self.open_qty.get((m.symbol, "sell"), 0) - qa
        if abs(worst) > cfg.max_position * SCALE:
            return self._reject(m, "risk-limit",
                                f"position could reach {show(from_atoms(worst))}, beyond max_position "
                                f"{cfg.max_position}")
        ref = m.price if m.price is not None else self._ref_px(m.symbol, m.side)
        if ref is not None:
            notional = m.qty * ref * inst.multiplier
            if notional > cfg.max_order_notional:
                return self._reject(m, "risk-limit", f"order notional {notional:.2f} exceeds "
                                                     f"max_order_notional {cfg.max_order_notional}")
            if notional < inst.min_notional:
                return self._reject(m, "below-min-notional",
                                    f"order notional {notional:.8g} (qty {show(m.qty)} x price {ref:g} x multiplier "
                                    f"{inst.multiplier:g}) is below the min_notional {inst.min_notional:g} of "
                                    f"{m.symbol}")
        return self._funds_refusal(m, qa, ref)

    # ------------------------------------------------------------ buying power
    def _ref_px(self, sym: str, side: str) -> float | None:
        """The price a market order of ``side`` would pay now: the ask or bid with quotes, else the last price."""
        q = self.quotes.get(sym)
        if q is not None:
            return q[1] if side == "buy" else q[0]
        return self.last_px.get(sym)

    def _hold(self, sym: str, side: str, qa: int, price: float | None) -> float:
        """What an open order of ``qa`` atoms holds of the buying power: its cost plus fee for a
        cash account's buy; the initial margin it adds plus fee for a margin account (orders
        that only reduce the position, taking the other open orders on that side as filled,
        hold nothing). Priced at its limit, else at the market's price now (0 if none)."""
        ref = price if price is not None else self._ref_px(sym, side)
        if ref is None or qa <= 0:
            return 0.0
        inst = self.instruments.get(sym)
        mult = inst.multiplier if inst is not None else 1.0
        q = from_atoms(qa)
        if self.cash_account:
            if side == "sell":
                return 0.0
            return q * ref * mult + self._commission(q, ref, mult)
        pos = self.acct.units(sym)
        if side == "buy":
            now = pos + self.open_qty.get((sym, "buy"), 0)
            grow = abs(now + qa) - abs(now)
        else:
            now = pos - self.open_qty.get((sym, "sell"), 0)
            grow = abs(now - qa) - abs(now)
        if grow <= 0:
            return 0.0
        return from_atoms(grow) * ref * mult * self.im + self._commission(q, ref, mult)

    def _positions_value(self) -> float:
        """Sum of |qty| * mark * multiplier of the open positions (the margins' base)."""
        return sum(abs(p.qty) * p.mark * p.multiplier for p in self.acct.positions.values() if p.units)

    def _margin_used(self) -> float:
        return self._positions_value() * self.im

    def buying_power(self) -> float:
        """Cash: cash less what open buys hold. Margin: equity less the positions' initial
        margin and what open orders hold."""
        held = sum(self.reserve.values())
        if self.cash_account:
            return self.acct.cash - held
        return self.acct.equity - self._margin_used() - held

    def _funds_refusal(self, m: SubmitOrder, qa: int, ref: float | None) -> OrderReject | None:
        """insufficient-funds, or None; remembers what the order will hold (``_pending_hold``)."""
        self._pending_hold = 0.0
        if self.cash_account and m.side == "sell":
            pos = self.acct.units(m.symbol)
            selling = self.open_qty.get((m.symbol, "sell"), 0)
            if qa > pos - selling:
                return self._reject(m, "insufficient-funds",
                                    f"a cash account cannot sell short: selling {show(m.qty)} {m.symbol} with a "
                                    f"position of {show(from_atoms(pos))} and {show(from_atoms(selling))} already "
                                    f"on open sell orders")
            return None
        need = self._hold(m.symbol, m.side, qa, m.price)
        if need <= 0.0:
            return None
        avail = self.buying_power()
        if need > avail:
            held = sum(self.reserve.values())
            if self.cash_account:
                why = (f"cost plus fee {need:.2f} (qty {show(m.qty)} at {ref:g}) exceeds the available cash "
                       f"{avail:.2f} (cash {self.acct.cash:.2f} less {held:.2f} held by open buy orders)")
            else:
                why = (f"initial margin plus fee {need:.2f} (qty {show(m.qty)} at {ref:g}, margin "
                       f"{self.im:g}) exceeds the available margin {avail:.2f} (equity {self.acct.equity:.2f} "
                       f"less margin used {self._margin_used():.2f} and {held:.2f} held by open orders)")
            return self._reject(m, "insufficient-funds", why)
        self._pending_hold = need
        return None

    def settle(self) -> None:
        """Fill the market orders that fill at once (``fill_on = "close"``), after their ack."""
        while self._at_close:
            o = self._at_close.pop(0)
            if o.order_id in self.open:
                px = self._now_px(o)
                if px is not None:
                    self._fill(o, px, self.last_ts[o.symbol])

    def _now_px(self, o: OrderInfo) -> float | None:
        """Where a market order fills at once (fill_on = "close"): the ask or bid of the last quote,
        else the last price, plus slippage; None when there is no price, the book is crossed or
        the feed is stale (it then fills on the next fresh data)."""
        sym = o.symbol
        if self.feed_stale and self._stale(sym) or sym in self.unfresh:
            return None
        q = self.quotes.get(sym)
        if q is not None:
            if q[0] >= q[1]:
                return None
            return self._slipped(o, q[1] if o.side == "buy" else q[0])
        px = self.last_px.get(sym)
        return None if px is None else self._slipped(o, px)

    def _stale(self, sym: str) -> bool:
        for syms in self.feed_stale.values():
            if syms is None or sym in syms:
                return True
        return False

    def _accept(self, cl_id: str, symbol: str, side: str, qty: int | float, order_type: str, price: float | None,
                tif: str, reason: str, hold: float = 0.0) -> OrderInfo:
        o = OrderInfo(order_id=self.next_oid, cl_id=cl_id, symbol=symbol, side=side,  # type: ignore[arg-type]
                      qty=qty, order_type=order_type, price=price, tif=tif,  # type: ignore[arg-type]
                      status="new", ts=self.now_ns())
        day = None
        if tif == "DAY" and symbol in self.last_ts:
            day = self.last_ts[symbol] // DAY_NS
        self.ledger.insert_order(o, day, reason)  # committed before the ack goes out
        self.next_oid += 1
        self._book_add(o)
        if hold:
            self.reserve[o.order_id] = hold
        if reason == "flatten":
            self.flattening.add(o.order_id)
            self.marks_dirty = True  # subscribers learn it is flattening
        elif reason == "liquidation":
            self.liquidating.add(o.order_id)
        if day is not None:
            self.day_of[o.order_id] = day
        if self.backtest:
            self.eligible[o.order_id] = self.decision_bar + 1
        self._publish_order(o, reason)
        return o

    def cancel(self, cl_id: str) -> CancelReply | OrderReject:
        oid = self.open_cl.get(cl_id)
        if oid is None:
            if self.ledger.order_by_cl(cl_id) is None:
                return OrderReject(cl_id=cl_id, code="unknown-order", text=f"no order with client order id {cl_id!r}")
            return CancelReply(cancelled=[])  # already done: a retried cancel is harmless
        self._close_orders([self.open[oid]], "cancelled", "cancel")
        return CancelReply(cancelled=[oid])

    def cancel_all(self, symbol: str = "") -> CancelReply:
        return CancelReply(cancelled=self._cancel_where(symbol, "cancel-all"))

    def _cancel_where(self, symbol: str, reason: str) -> list[int]:
        syms = [symbol] if symbol else list(self.book)
        victims = [self.open[oid] for s in syms for oid in self.book.get(s, ())]
        self._close_orders(victims, "cancelled", reason)
        return [o.order_id for o in victims]

    def _close_orders(self, orders: list[OrderInfo], status: str, reason: str) -> None:
        """Cancel/expire orders: one ledger transaction, then the updates."""
        if not orders:
            return
        self.ledger.update_orders([(o.order_id, status, o.filled, reason) for o in orders])
        for o in orders:
            left = to_atoms(o.qty) - to_atoms(o.filled)
            o.status = status  # type: ignore[assignment]
            self._book_remove(o, left)
            self._publish_order(o, reason)

    def flatten(self, symbol: str = "") -> CancelReply:
        """Cancel the open orders of ``symbol`` (every symbol: "") and close its positions at market."""
        cancelled = self._cancel_where(symbol, "flatten")
        for sym, p in list(self.acct.positions.items()):
            if p.qty == 0 or (symbol and sym != symbol):
                continue
            cl_id = f"flatten-{self.next_oid}"
            while self._known(cl_id) is not None:  # a client may have used the name already
                cl_id += "-x"
            o = self._accept(cl_id, sym, "sell" if p.qty > 0 else "buy", abs(p.qty), "market",
                             None, "GTC", "flatten")
            px = self._now_px(o) if self.cfg.fill_on == "close" else None
            if px is not None:
                self._fill(o, px, self.last_ts[sym])
        return CancelReply(cancelled=cancelled)

    def _liquidate(self, ts: int) -> None:
        """Margin account: equity below the maintenance margin of the open positions. Cancel
        every open order and close each position with a market order through the normal
        fills (the next fresh data, as any market order); the ledger records why."""
        a = self.acct
        maint = self._positions_value() * self.mm
        why = (f"equity {a.equity:.2f} below the maintenance margin {maint:.2f} "
               f"({self.mm:g} of the positions' value)")
        self.log.warning("liquidation", reason=why)
        self.ledger.record_event(ts, "liquidation", why)
        victims = [self.open[oid] for ids in self.book.values() for oid in ids]
        self._close_orders(victims, "cancelled", "liquidation")
        for sym, p in list(a.positions.items()):
            if not p.units:
                continue
            cl_id = f"liquidation-{self.next_oid}"
            while self._known(cl_id) is not None:
                cl_id += "-x"
            o = self._accept(cl_id, sym, "sell" if p.units > 0 else "buy", abs(p.qty), "market", None, "GTC",
                             "liquidation")
            if self.backtest:  # decided on the data being processed: fills from the next on
                self.eligible[o.order_id] = self._fseq + 1
        self.marks_dirty = True

    def _check_margin(self, ts: int) -> None:
        """Liquidate when equity is below the maintenance margin (margin accounts, once per breach)."""
        if self.liquidating or self.cash_account or not self.mm:
            return
        value = self._positions_value()
        if value and self.acct.equity < value * self.mm:
            self._liquidate(ts)

    def query(self, what: str = "all") -> QueryReply:
        r = QueryReply(paused=self.paused, halted=self.halted, flattening=bool(self.flattening))
        if what in ("all", "positions"):
            r.positions = self._positions()
        if what in ("all", "orders"):
            r.orders = [self.open[oid] for ids in self.book.values() for oid in ids]
        if what in ("all", "account"):
            r.account = self._account_info()
        return r

    # ------------------------------------------------------------ market data
    def on_bar(self, bar: Any) -> None:
        if self._timed:
            self.market_time(bar.ts)
        self._on_price(bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.fseq)
        if self.session is not None:
            self.session_clock(bar.fseq)

    def on_tick(self, tick: Any) -> None:
        if self._timed:
            self.market_time(tick.ts)
        p = tick.price
        self._on_price(tick.symbol, tick.ts, p, p, p, p, tick.fseq)
        if self.session is not None:
            self.session_clock(tick.fseq)

    def on_quote(self, q: Quote) -> None:
        """Best bid/offer: fills at the bid or ask (module docstring, "Quotes"), marks at the mid."""
        sym = q.symbol
        bid, ask = q.bid, q.ask
        self.quotes[sym] = (bid, ask)
        self.unfresh.discard(sym)
        self.n_prices += 1
        if bid >= ask:
            return  # crossed or locked: no fill, no mark until a sane quote
        ts = q.ts
        self._fseq = q.fseq
        ids = self.book.get(sym)
        if ids and not (self.feed_stale and self._stale(sym)):
            self._expire_days(ids, ts)
            ioc_missed = []
            eligible = self.eligible
            for oid in list(ids):
                if eligible and eligible.get(oid, 0) > q.fseq:
                    continue
                o = self.open[oid]
                px = self._match_quote(o, bid, ask)
                if px is not None:
                    self._fill(o, px, ts)
                elif o.tif == "IOC":
                    ioc_missed.append(o)
            self._close_orders(ioc_missed, "cancelled", "ioc not filled on the next market data")
        self._marked(sym, ts, (bid + ask) / 2.0)

    def _marked(self, sym: str, ts: int, px: float) -> None:
        """After a price event's orders: the last price, the mark (the margin checked when a
        position's value changed) and, in a backtest, the equity curve's point."""
        self.last_px[sym] = px
        self.last_ts[sym] = ts
        if self.acct.mark(sym, px):
            self.marks_dirty = True
            if self.mm:
                self._check_margin(ts)
        if self.series is not None:
            self._equity_point(ts)

    def _equity_point(self, ts: int) -> None:
        """The backtest equity curve's row at ``ts``: cash + each position's qty * mark *
        multiplier, summed in the account's order (Account.equity, without its call overhead)."""
        mv = 0
        for p in self._held:
            mv += p.qty * p.mark * p.multiplier
        self.series.record(ts, self.acct.cash + mv, self._units)

    def _match_quote(self, o: OrderInfo, bid: float, ask: float) -> float | None:
        t = o.order_type
        buy = o.side == "buy"
        if t == "market":
            return self._slipped(o, ask if buy else bid)
        lim = o.price
        assert lim is not None
        if t == "limit":
            if buy:
                return min(lim, ask) if ask <= lim else None
            return max(lim, bid) if bid >= lim else None
        # Stops trigger on the side opposite to theirs (a buy stop when the bid reaches it: a
        # wide spread alone does not set it off) and fill at market: their own side.
        if buy:
            return self._slipped(o, ask) if bid >= lim else None
        return self._slipped(o, bid) if ask <= lim else None

    def on_feed_status(self, fs: FeedStatus) -> None:
        """A feed's health: while it is not ok nothing fills on its symbols (all of them when
        ``fs.symbols`` is empty); orders are still accepted and fill on the first data that
        arrives after it is ok again (never on a price from before)."""
        was = self.feed_stale.get(fs.feed, False)
        if fs.state == "ok":
            if fs.symbols and was is not False:
                # Some symbols are back: the rest of the feed's stay stale ("all" becomes
                # every instrument but those).
                left = (set(self.instruments) if was is None else set(was)) - set(fs.symbols)
                if left:
                    self.feed_stale[fs.feed] = left
                else:
                    del self.feed_stale[fs.feed]
            else:
                self.feed_stale.pop(fs.feed, None)
        else:
            if fs.symbols and was is not None:
                self.feed_stale[fs.feed] = set(was or ()) | set(fs.symbols)
            else:
                self.feed_stale[fs.feed] = None
        now = self.feed_stale.get(fs.feed, False)
        if now != was:
            self.log.warning("feed state", feed=fs.feed, state=fs.state, symbols=fs.symbols or "all",
                             detail=fs.detail, fills="stopped" if now is not False else "resume on fresh data")
        if fs.state == "ok" and was is not False:
            # Fresh data only: a price from before the outage is not one to fill at once at.
            self.unfresh.update(fs.symbols or self.instruments)

    def on_bars(self, bars: list[Any]) -> None:
        """Bars in order, as ``on_bar`` of each, with less work for a symbol that has no open
        order (most bars): its equity row is made from the bar's close, and its mark and last
        price are set once, at the end of the batch or before an order of any symbol is
        matched. The equity sums the same products in the same order as on_bar's, so the
        rows are the same floats. For a caller that has the bars of a batch before it must
        answer anything (the actor kernel; the in-process kernel takes turns per bar)."""
        book, series, held = self.book, self.series, self._held
        pending: dict[str, Any] = {}  # symbol -> its last bar not yet marked
        quiet = 0  # bars that took the short way
        timed = self._timed
        for b in bars:
            sym = b.symbol
            if timed:
                self._mark_pending(pending)  # settlement reads the underlying's last price
                self.market_time(b.ts)
                held = self._held
            if book.get(sym):
                self._mark_pending(pending)
                self._on_price(sym, b.ts, b.open, b.high, b.low, b.close, b.fseq)
                held = self._held  # a fill may have opened a position
                if timed:
                    held = self._after_bar(pending, b.fseq)
                continue
            pending[sym] = b
            quiet += 1
            if series is not None:
                mv = 0
                for p in held:
                    q = pending.get(p.symbol)
                    mv += p.qty * (q.close if q is not None else p.mark) * p.multiplier
                series.record(b.ts, self.acct.cash + mv, self._units)
            if timed:
                held = self._after_bar(pending, b.fseq)
        self._mark_pending(pending)
        self.n_prices += quiet

    def _mark_pending(self, pending: dict[str, Any]) -> None:
        ts = 0
        for sym, b in pending.items():
            self.last_px[sym] = b.close
            self.last_ts[sym] = ts = b.ts
            self._fseq = b.fseq
            if self.acct.mark(sym, b.close):
                self.marks_dirty = True
        pending.clear()
        if ts and self.mm:
            self._check_margin(ts)

    def _on_price(self, sym: str, ts: int, op: float, hi: float, lo: float, cl: float, fseq: int = 0) -> None:
        if self.quotes and sym in self.quotes:
            # A quoted symbol fills and marks on its quotes only: a bar or trade says where
            # the market traded, not where we could trade now.
            self.n_prices += 1
            if self.series is not None:  # still a row of the curve, at the quotes' marks
                self._equity_point(ts)
            return
        ids = self.book.get(sym)
        if self.feed_stale and self._stale(sym):
            ids = None  # a stale feed fills nothing; its orders wait for fresh data
        elif self.unfresh:
            self.unfresh.discard(sym)
        self._fseq = fseq
        if ids:
            self._expire_days(ids, ts)
            ioc_missed = []
            eligible = self.eligible
            for oid in list(ids):
                if eligible and eligible.get(oid, 0) > fseq:
                    continue  # backtest: decided on this bar or later, may not fill on it
                o = self.open[oid]
                px = self._match(o, op, hi, lo, cl)
                if px is not None:
                    self._fill(o, px, ts)
                elif o.tif == "IOC":
                    ioc_missed.append(o)
            self._close_orders(ioc_missed, "cancelled", "ioc not filled on the next market data")
        self.n_prices += 1
        self._marked(sym, ts, cl)

    def _expire_days(self, ids: list[int], ts: int) -> None:
        """Expire the DAY orders of an earlier UTC day than ``ts`` (first: a DAY order must not
        fill on a later day's data); a DAY order's day is that of the first data it meets."""
        day = ts // DAY_NS
        expired = []
        for oid in ids:
            o = self.open[oid]
            if o.tif == "DAY":
                d = self.day_of.get(oid)
                if d is None:
                    self.day_of[oid] = day
                    self.ledger.set_order_day(oid, day)
                elif day > d:
                    expired.append(o)
        self._close_orders(expired, "expired", "day order expired")

    def _match(self, o: OrderInfo, op: float, hi: float, lo: float, cl: float) -> float | None:
        t = o.order_type
        buy = o.side == "buy"
        if t == "market":
            return self._slipped(o, cl if self.cfg.fill_on == "close" else op)
        lim = o.price
        assert lim is not None
        if t == "limit":
            if buy:
                return min(op, lim) if lo <= lim else None
            return max(op, lim) if hi >= lim else None
        if buy:
            return self._slipped(o, max(op, lim)) if hi >= lim else None
        return self._slipped(o, min(op, lim)) if lo <= lim else None

    def _slipped(self, o: OrderInfo, px: float) -> float:
        if not self.slip:
            return px
        inst = self.instruments.get(o.symbol)
        tick = inst.tick_size if inst else 0.0
        if o.side == "buy":
            px *= 1.0 + self.slip
            if tick:
                px = math.ceil(px / tick - 1e-9) * tick
        else:
            px *= 1.0 - self.slip
            if tick:
                px = max(1, math.floor(px / tick + 1e-9)) * tick
        return round(px, 10)

    def end_of_data(self, m: EndOfData) -> tuple[int, int]:
        """Expire DAY and cancel IOC orders, publish the account, export; (expired, cancelled)."""
        days = [self.open[oid] for ids in self.book.values() for oid in ids if self.open[oid].tif == "DAY"]
        iocs = [self.open[oid] for ids in self.book.values() for oid in ids if self.open[oid].tif == "IOC"]
        self._close_orders(days, "expired", "day order expired at end of data")
        self._close_orders(iocs, "cancelled", "ioc not filled before end of data")
        self.log.info("end of data", feed=m.feed, count=m.count, expired=len(days), cancelled=len(iocs))
        self.ledger.flush()
        self.publish_account()
        self.export()
        return len(days), len(iocs)

    # ------------------------------------------ trading hours and option expiry
    # Off unless attach_market_rules() is called (a [session] table, or options listed):
    # class attributes, so a core without them pays one attribute test per price.
    session: Any = None  # actors/sessions.SessionCalendar
    flatten_at_square_off = True
    _timed = False  # market_time() runs on every price
    _expiring: list[tuple[int, str]] = []  # (expiry instant ns, option symbol), soonest last
    _session_state = ""  # the state market_time last saw
    _mkt_ts = 0  # the latest market time seen
    n_settled = 0  # option positions settled at expiry
    n_square_offs = 0

    def attach_market_rules(self, session: Any = None, chains: Any = None, flatten_at_square_off: bool = True) -> None:
        """Trading hours (``session``: orders outside them are rejected ``market-closed``, and at
        square-off every position is flattened and only reducing orders are taken) and option
        expiry (``chains``: actors/options.OptionChains; at an option's expiry instant its
        open orders are cancelled and its position settled, see ``_settle``)."""
        self.session = session
        self.flatten_at_square_off = flatten_at_square_off
        if chains is not None:
            self._expiring = sorted(((t, sym) for sym, t in chains.expiry_of.items()), reverse=True)
        self._timed = session is not None or bool(self._expiring)

    def _now(self) -> int:
        """The exchange's clock for trading hours: the wall clock live on the synthetic feed
        (orders arrive when no data flows), else the market time of the data."""
        return self.now_ns() if self.wall_clock else self._mkt_ts

    def market_time(self, ts: int) -> None:
        """Market time reached ``ts`` (before every price, and the live actor's timer): settle
        the options whose expiry instant it passed, before the price can trade them."""
        if ts > self._mkt_ts:
            self._mkt_ts = ts
        exp = self._expiring
        while exp and exp[-1][0] <= ts:
            at, sym = exp.pop()
            self._settle(sym, at)

    def session_clock(self, fseq: int = 0) -> None:
        """After a price (and on the live actor's timer): act on a change of session state;
        entering square-off flattens every position (the market orders fill as any other:
        at the next price, or at once at this close with fill_on = "close"). ``fseq``: the bar
        it follows: in a backtest the square-off orders fill from the bar after it, under
        either kernel (not from the strategy's decision bar, which the actor kernel is ahead of)."""
        st = self.session.state(self._now())
        if st != self._session_state:
            prev, self._session_state = self._session_state, st
            if st == "square-off" and prev and self.flatten_at_square_off:
                self._square_off(fseq)

    def _after_bar(self, pending: dict[str, Any], fseq: int) -> list[Any]:
        """on_bars, after each bar when timed: the session clock (a square-off at the close
        fills at this bar's price, so the pending marks go in first); the held positions."""
        if self.session is not None:
            self._mark_pending(pending)
            self.session_clock(fseq)
        return self._held

    def _session_refusal(self, m: SubmitOrder) -> OrderReject | None:
        now = self._now()
        st = self.session.state(now)
        if st == "open":
            return None
        if st == "square-off":
            pos = self.acct.position(m.symbol)
            if m.side == "buy":
                after = pos + self.open_qty.get((m.symbol, "buy"), 0) + m.qty
                reduces = pos < 0 and after <= 0
            else:
                after = pos - self.open_qty.get((m.symbol, "sell"), 0) - m.qty
                reduces = pos > 0 and after >= 0
            if reduces:
                return None
            return self._reject(m, "market-closed", f"square-off: {m.symbol} position {pos}: only orders that "
                                                    "reduce a position are taken until the close")
        nxt, to = self.session.next_transition(now)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(nxt // 10**9))
        return self._reject(m, "market-closed", f"market {st}: no orders until the session opens "
                                                f"(next: {to} at {when})")

    def _square_off(self, fseq: int = 0) -> None:
        """Cancel every open order and close every position at market (reason square-off)."""
        self.n_square_offs += 1
        cancelled = self._cancel_where("", "square-off")
        closed = 0
        for sym, p in list(self.acct.positions.items()):
            if p.qty == 0:
                continue
            o = self._accept(self._own_cl_id("square-off"), sym, "sell" if p.qty > 0 else "buy", abs(p.qty),
                             "market", None, "GTC", "square-off")
            if self.backtest and fseq:
                self.eligible[o.order_id] = fseq + 1
            closed += 1
            if self.cfg.fill_on == "close" and sym in self.last_px:
                self._fill(o, self._slipped(o, self.last_px[sym]), self.last_ts[sym])
        self.log.info("square-off", cancelled=len(cancelled), positions=closed, ts=self._mkt_ts)

    def _own_cl_id(self, prefix: str) -> str:
        cl_id = f"{prefix}-{self.next_oid}"
        while self._known(cl_id) is not None:  # a client may have used the name already
            cl_id += "-x"
        return cl_id

    def _settle(self, sym: str, at: int) -> None:
        """Expire option ``sym`` at instant ``at``: cancel its open orders (reason expiry) and
        close its position at the settlement price (actors/options.settlement: intrinsic
        value from the underlying's last price for cash; 0 and a delivery of the underlying
        at the strike for physical), no commission. The ledger holds it as an order
        ``expiry-N`` (reason expiry) and its fill; the Fill goes out as any other."""
        self._cancel_where(sym, "expiry")
        p = self.acct.positions.get(sym)
        inst = self.instruments.get(sym)
        if p is None or p.qty == 0 or inst is None:
            return
        und = self.last_px.get(inst.underlying)
        if und is None:
            # No underlying price ever seen: the option's own last price is the best there is.
            und_px = None
            px = self.last_px.get(sym, p.mark)
            deliver = 0.0
            self.log.warning("expiry without an underlying price: settled at the option's last price",
                             symbol=sym, underlying=inst.underlying, price=px)
        else:
            und_px = und
            px, deliver = options_mod.settlement(inst, und)
        qty = p.qty
        o = self._accept(self._own_cl_id("expiry"), sym, "sell" if qty > 0 else "buy", abs(qty), "market", None,
                         "GTC", "expiry")
        self._fill(o, round(px, 10), at, fee=0.0)
        self.n_settled += 1
        if deliver > 0:
            u = self.instruments[inst.underlying]
            units = abs(qty) * inst.multiplier / u.multiplier
            side = ("buy" if inst.right == "C" else "sell") if qty > 0 else ("sell" if inst.right == "C" else "buy")
            d = self._accept(self._own_cl_id("expiry"), u.symbol, side, int(round(units)), "market", None, "GTC",
                             "expiry")
            self._fill(d, deliver, at, fee=0.0)
        self.log.info("option expired", symbol=sym, qty=qty, settlement=inst.settlement, underlying_price=und_px,
                      price=px, delivered=deliver > 0)

    # ------------------------------------------------------------------ fills
    def _booked(self, trips: list[RoundTrip], fee: float) -> None:
        """What the summary and the equity curve need of a fill the account took (a backtest's
        results: a live exchange has neither, and its fills would only grow these arrays)."""
        if self.series is None:
            return
        self.trip_nets.extend(t.net for t in trips)
        self.fill_fees.append(fee)
        held = self._held = list(self.acct.positions.values())
        if len(held) <= 1:
            self._units = sum(p.qty for p in held)
        else:  # several instruments: gross units, for exposure time
            self._units = sum(abs(p.qty) for p in held)

    def _commission(self, qty: int | float, px: float, mult: float) -> float:
        cfg = self.cfg
        return max(cfg.commission_min, cfg.commission_pct * qty * px * mult + cfg.commission_per_unit * qty)

    def _fill(self, o: OrderInfo, px: float, ts: int, fee: float | None = None) -> None:
        if self.wall_clock and ts < o.ts:
            # Live bars carry the wall-clock start of their interval: a next-open fill
            # would be stamped a moment before the order it fills. Never before it.
            ts = o.ts
        p = self.acct.positions.get(o.symbol)
        inst = self.instruments.get(o.symbol)
        mult = p.multiplier if p is not None else (inst.multiplier if inst else 1.0)
        left = to_atoms(o.qty) - to_atoms(o.filled) if o.filled else 0
        qty = from_atoms(left) if o.filled else o.qty
        if fee is None:  # an expiry settlement passes 0: no commission on it
            fee = self._commission(qty, px, mult)
        if self.cash_account and o.side == "buy" and qty * px * mult + fee > self.acct.cash:
            # The price moved since it was accepted (a gap): a cash account never goes below 0.
            self.log.info("buy cancelled: insufficient funds at fill", order_id=o.order_id, qty=show(qty), price=px,
                          cost=round(qty * px * mult + fee, 2), cash=round(self.acct.cash, 2))
            self._close_orders([o], "cancelled", "insufficient funds at fill")
            return
        res = self.acct.apply_fill(o.symbol, o.side, qty, px, fee, ts, mult)
        p = self.acct.positions[o.symbol]
        self._booked(res.trips, fee)
        fid = self.next_fid
        o.filled = o.qty
        o.status = "filled"
        # If this commit fails it is rolled back whole and nothing is published: the
        # in-memory state is ahead of the ledger, so the exception ends the caller
        # (a disk error, no restart) and the next start rebuilds from the ledger.
        self.ledger.record_fill(
            (fid, o.order_id, o.cl_id, o.symbol, o.side, qty, px, fee, ts, mult, res.position, res.realized),
            (o.order_id, "filled", o.filled, "filled"),
            (o.symbol, p.qty, p.avg_price, p.realized, p.fees),
        )
        self.next_fid += 1
        self._book_remove(o, left or to_atoms(qty))
        self.emit(Fill(fill_id=fid, order_id=o.order_id, cl_id=o.cl_id, symbol=o.symbol, side=o.side, qty=qty,
                       price=px, fee=fee, ts=ts, position=res.position, realized=res.realized))
        self._publish_order(o, "filled")
        if self.backtest:
            # Thousands of fills a second: the account goes out on the caller's
            # timer (and at end of data), not once per fill.
            self.marks_dirty = True
        else:
            self.publish_account(ts)
        self.export_dirty = True
        if self.cfg.export_every_ms == 0:
            self.export()

    # ------------------------------------------------------------- publishing
    def _publish_order(self, o: OrderInfo, reason: str) -> None:
        # A copy: the book goes on changing the order, and an in-process receiver holds
        # the update until later (the actor's copy is the encoded bytes).
        self.emit(OrderUpdate(order=msgspec.structs.replace(o), reason=reason))

    def _account_info(self) -> AccountInfo:
        a = self.acct
        margin = 0.0 if self.cash_account else self._margin_used()
        return AccountInfo(cash=a.cash, equity=a.equity, initial_cash=a.initial_cash, realized=a.realized,
                           unrealized=a.unrealized, fees=a.fees, gross_exposure=a.gross_exposure,
                           account_type="cash" if self.cash_account else "margin",
                           buying_power=_money(self.buying_power()), margin_used=_money(margin))

    def _positions(self) -> list[PositionInfo]:
        return [PositionInfo(symbol=p.symbol, qty=p.qty, avg_price=p.avg_price, mark=p.mark, realized=p.realized,
                             unrealized=p.unrealized, fees=p.fees) for p in self.acct.positions.values()]

    def publish_account(self, ts: int = 0) -> None:
        self.marks_dirty = False
        self.emit(AccountUpdate(account=self._account_info(), positions=self._positions(), ts=ts or self.now_ns(),
                                paused=self.paused, halted=self.halted, flattening=bool(self.flattening)))

    def publish_marks(self) -> None:
        if self.marks_dirty:
            self.publish_account()

    # ----------------------------------------------------------------- export
    def maybe_export(self) -> None:
        if self.export_dirty and time.monotonic() - self.last_export >= self.cfg.export_every_ms / 1000.0:
            self.export()

    def export(self) -> None:
        """fills.csv and trades.csv, from the ledger's fills as they are read (actors/exports.py)."""
        self.export_dirty = False
        self.last_export = time.monotonic()
        self.exported = True
        exports.write_fills_csv(os.path.join(self.out_dir, "fills.csv"), self.ledger, self.decimals,
                                self.qty_decimals)
        exports.write_trades_csv(os.path.join(self.out_dir, "trades.csv"), self.ledger, self.decimals,
                                 self.acct.initial_cash, self.qty_decimals)

    def decimals(self, symbol: str) -> tuple[int, int]:
        """(price decimals, money decimals) of an instrument: report.decimals of its tick size."""
        inst = self.instruments.get(symbol)
        return report.decimals(inst.tick_size if inst is not None else 0.01)

    def qty_decimals(self, symbol: str) -> int:
        """Decimals quantities of an instrument print with: its lot size's (0 for whole units)."""
        inst = self.instruments.get(symbol)
        return qty_decimals(inst.lot_size) if inst is not None else 0

    # ---------------------------------------------------------------- results
    def write_results(self, title: str, rows_skipped: int = 0, png: bool = True) -> tuple[str, dict[str, Any]]:
        """A backtest's equity.csv, summary.json and report.png (unless not ``png``); (text summary, summary).
        Reads only the equity series and the arrays of trip nets and fill fees, never the
        ledger, so it may run on another thread while the caller's loop goes on."""
        series = self.series
        if series is None or not len(series):
            return "no bars", {}
        money = max((self.decimals(sym)[1] for sym in self.instruments), default=2)
        summary = report.write_results_series(self.out_dir, series, self.trip_nets, self.fill_fees, title=title,
                                              log=self.log, money_decimals=money,
                                              # Replay rows dropped for bad values: in the results, not only a log.
                                              extra={"rows_skipped": rows_skipped}, png=png)
        series.close()
        text = report.format_text_summary(summary)
        if rows_skipped:
            text += f"\ndata          {rows_skipped} rows skipped (bad values; see the market-data warning)"
        return text, summary

    # --------------------------------------------------------------- control
    def _set_flags(self, **flags: bool) -> None:
        """Persist first (a restarted exchange resumes what the operator set), then
        tell every subscriber at once: the state view and the strategy follow it."""
        self.ledger.set_flags(**flags)
        for k, v in flags.items():
            setattr(self, k, v)
        self.publish_account()

    def command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """An operator's command (see the module docstring); Refused names why it is refused."""
        if cmd == "pause":
            self._set_flags(paused=True)
        elif cmd == "resume":
            if self.halted:
                raise Refused("trading is halted (kill switch): resume does not lift a halt; "
                              "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
            self._set_flags(paused=False)
        elif cmd == "halt":
            self._set_flags(halted=True)
            n = self._cancel_where("", "halt")
            self.log.warning("halted (kill switch)", cancelled=len(n))
            return {"halted": True, "cancelled": n}
        elif cmd == "unhalt":
            if not self.halted:
                raise Refused("trading is not halted: there is no halt to lift")
            # Lifting the kill switch does not start trading: that takes a resume.
            self._set_flags(halted=False, paused=True)
            self.log.warning("halt lifted (kill switch off); trading stays paused until resume")
            return {"halted": False, "paused": True,
                    "message": "halt lifted; trading stays paused until `ctl resume`"}
        elif cmd in ("flatten", "stop-and-close"):
            sym = args.get("symbol", "")
            if not isinstance(sym, str):
                raise Refused(f"{cmd}: symbol must be a string")
            if cmd == "stop-and-close":
                self._set_flags(paused=True)
            cancelled = self.flatten(sym).cancelled
            self.log.info("command", cmd=cmd, cancelled=len(cancelled), flattening=len(self.flattening))
            self.publish_account()
            return {"cancelled": cancelled, "open_orders": self.n_open, "paused": self.paused,
                    "flattening": bool(self.flattening)}
        elif cmd == "cancel-all":
            # Every open order but the exchange's own flatten orders: what a
            # disabled strategy left behind (its positions are kept).
            why = args.get("reason", "cancel-all")
            if not isinstance(why, str) or not why:
                raise Refused("cancel-all: reason must be a non-empty string")
            victims = [self.open[oid] for ids in self.book.values() for oid in ids if oid not in self.flattening]
            self._close_orders(victims, "cancelled", why)
            self.log.info("command", cmd=cmd, cancelled=len(victims), reason=why)
            return {"cancelled": [o.order_id for o in victims],
                    "message": f"cancelled {len(victims)} open order(s)"}
        else:
            raise Refused(f"paper-exchange does not handle command {cmd!r} "
                          "(pause, resume, halt, unhalt, flatten, stop-and-close, cancel-all)")
        self.log.info("command", cmd=cmd, paused=self.paused, halted=self.halted)
        return {"paused": self.paused, "halted": self.halted}

    def status(self) -> dict[str, Any]:
        return {"orders": self.n_orders, "fills": self.acct.n_fills, "bars": self.n_prices,
                "open_orders": self.n_open,
                "paused": self.paused, "halted": self.halted, "flattening": bool(self.flattening),
                "equity": round(self.acct.equity, 2),
                "previous_run_id": self.ledger.previous_run_id}

    def close(self) -> None:
        """An ordered stop: export (unless nothing changed since the last), record the run's
        end and equity, close the ledger."""
        try:
            try:
                if self.export_dirty or not self.exported:
                    self.export()
            except (OSError, sqlite3.Error) as e:
                self.log.error("final export failed", error=str(e))
            self.ledger.end_run(self.acct.equity)  # a disk error here is the caller's (exit on it)
        finally:
            self.ledger.close()
            if self.series is not None:
                self.series.close()


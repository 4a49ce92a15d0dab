"""The paper exchange: order entry, a fill model driven by market data, accounting, the ledger.

Sockets: ROUTER "orders" (requests from strategies/monitors), PUB "exec" (fills on
exec.fill.<SYM>, order updates on exec.order.<SYM>, account on acct.update), SUB
"md" (bars, ticks, end-of-data), DEALER "md.ref" (instrument master, asked once in init).

Fill model (documented rules):
- Every order is whole: no partial fills, volume is not a constraint.
- An order can only fill on market data the exchange processes *after* accepting
  it; pending market data is drained before each request so an order sent in
  reaction to bar N is matched from bar N+1 on.
- Bars: market orders fill at the open of the next bar (``fill_on = "next_open"``)
  or, with ``fill_on = "close"``, at once at the close of the last bar seen for the
  symbol (at the next bar's close if none was seen yet).
  Buy limit L fills if low <= L at min(open, L); sell limit if high >= L at
  max(open, L). Buy stop S triggers if high >= S, fills at max(open, S); sell stop
  if low <= S at min(open, S): the limit/stop price, or the open on a gap through it.
- Ticks are bars with open = high = low = close = the tick price.
- Slippage (``slippage_bps``) moves market and stop fill prices against the trader,
  rounded outwards to the tick size. Commission per fill:
  max(commission_min, commission_pct * qty * price * multiplier + commission_per_unit * qty).
- IOC: fills on the next market-data event of its symbol, else is cancelled then.
- DAY: expires (status "expired") when the first event of a later UTC day (by
  market timestamp) arrives for its symbol, before that event can fill it, and at
  EndOfData. IOC orders still pending at EndOfData are cancelled.
- Flatten cancels the open orders of the symbols concerned and sends a market
  order closing each position; it is allowed while paused or halted (it only
  reduces risk). Pause rejects new orders ("paused"), halt cancels every open
  order and rejects new ones ("halted"); both flags persist in the ledger, so a
  restarted exchange stays paused/halted. "resume" clears a pause but never a
  halt (it is refused while halted); only "unhalt" lifts the kill switch, and
  leaves trading paused until a "resume". "stop-and-close" pauses and flattens.
  The flags (and "flattening": flatten orders still open) ride on every
  AccountUpdate and QueryReply, and an AccountUpdate goes out on each change.

Query returns every position (flat ones too, with their realized PnL), the open
orders and the account.

Backtest mode (``service.mode = "backtest"``), deterministic and lossless:
- bars are buffered and bar ``f`` is processed only once the strategy has
  reported ``Progress(fseq >= f - 1)`` on the orders socket, so every order it
  sent while handling bar ``f - 1`` is already in the book (one DEALER, FIFO);
- an order accepted while the strategy's progress is ``g`` was decided on bar
  ``g + 1`` or later, so it may fill from bar ``g + 2`` on, never on the bar
  that produced it;
- after processing, the exchange reports its own Progress to market-data,
  which keeps at most a window of bars in flight (no PUB drop, ever);
- after EndOfData and the last bar: orders expire as at end of data, then
  fills.csv, trades.csv, equity.csv (one row per timestamp), summary.json and
  report.png are written and ``Finished`` goes to the supervisor.

Risk checks on submit: max open orders; worst-case position
(position + open orders on the same side + this order) within max_position;
order notional (qty * price * multiplier, market orders at the last price if one is
known) within max_order_notional.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sqlite3
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import msgspec
import zmq

from actors.accounting import Account
from actors.base import Actor, CommandError, Role, main
from actors.ledger import Ledger
from actors import report
from bus.codec import ProtocolError
from bus.faults import disk_error
from bus.fileio import atomic_write
from bus.messages import (
    AccountInfo, AccountUpdate, Bar, BarBatch, CancelAll, CancelOrder, CancelReply, EndOfData, Fill, Flatten,
    Instrument, InstrumentsReply, InstrumentsRequest, MdError, OrderAck, OrderInfo, OrderReject, OrdersError,
    OrderUpdate, PositionInfo, Progress, Query, QueryReply, SubmitOrder, Tick, Finished,
)
from bus.sockets import Port, Received, topic_for

DAY_NS = 86_400 * 10**9
OPEN = ("new", "partially-filled")
MARK_PUBLISH_S = 0.25  # account updates for mark changes at most this often
INSTRUMENTS_TIMEOUT_S = 5.0
TOPIC_ACCT = topic_for("acct.update")


class PaperExchange(Actor):
    name = "paper-exchange"
    roles = frozenset({Role.EXCHANGE, Role.BACKTEST_FLOW})
    commands = {
        "pause": "stop taking new orders (kept in the ledger: a restart stays paused)",
        "resume": "take orders again; refused while halted",
        "halt": "kill switch: cancel every open order and reject new ones",
        "unhalt": "lift the kill switch; trading stays paused until resume",
        "flatten": "close every position (symbol=SYM: that one) with market orders",
        "stop-and-close": "pause, then flatten",
        "cancel-all": "cancel every open order but the flatten orders (reason=TEXT)",
    }

    # ------------------------------------------------------------------ init
    def init(self) -> dict[str, Any]:
        x = self.x = self.cfg.exchange
        self.slip = x.slippage_bps / 10_000.0
        self.paused = self.halted = False
        self.flattening: set[int] = set()  # open flatten orders of the exchange's own
        self.orders: dict[int, OrderInfo] = {}  # every order in the ledger
        self.by_cl: dict[str, tuple[int, tuple]] = {}  # cl_id -> (order_id, request fingerprint)
        self.book: dict[str, list[int]] = {}  # symbol -> open order ids, oldest first
        self.open_qty: dict[tuple[str, str], int] = {}  # (symbol, side) -> open quantity
        self.day_of: dict[int, int] = {}  # DAY order -> UTC day it belongs to
        self.last_px: dict[str, float] = {}
        self.last_ts: dict[str, int] = {}
        self.n_open = 0
        self.n_prices = 0  # bars/ticks priced (status: shows trading keeps pace with the feed)
        self.marks_dirty = False
        self.export_dirty = False
        self.last_export = 0.0

        # A backtest runs in a directory of its own (actors/rundir.py), so its
        # ledger is new; a ledger of the other mode is refused, never deleted.
        self.ledger = Ledger(os.path.join(self.run_dir, "ledger.sqlite"))
        initial = self.ledger.start_run(self.run_id, msgspec.json.encode(self.cfg).decode(), x.initial_cash,
                                        mode=self.cfg.service.mode)
        self.acct = Account(initial)

        # Backtest state (see the module docstring).
        self.backtest = self.cfg.service.mode == "backtest"
        # Live on a feed whose time is the wall clock (not a replay of market time), like
        # the order times: a fill then never comes before its order (_fill).
        self.wall_clock = not self.backtest and self.cfg.market_data.feed != "replay"
        self.gate = 0  # strategy progress: every order from bars <= gate is in
        self.done_fseq = 0  # last bar processed
        self.pending: deque[Bar] = deque()
        self.eligible: dict[int, int] = {}  # order id -> first fseq it may fill on
        self.eod: EndOfData | None = None
        self.finished = False
        self.equity_rows: list[tuple[int, float]] = []
        self.pos_rows: list[int] = []

        # Stable identity: market-data's backtest flow control keys Progress by it.
        ref = self.ref = self.open("md.ref", bind=False, identity=self.name)
        rcv = self.request(ref, InstrumentsRequest(), INSTRUMENTS_TIMEOUT_S, expect=(InstrumentsReply, MdError))
        if isinstance(rcv.msg, MdError):
            raise RuntimeError(f"market-data refused the instrument list: {rcv.msg.code}: {rcv.msg.text}")
        self.instruments: dict[str, Instrument] = {i.symbol: i for i in rcv.msg.instruments}

        self._rebuild()

        self.orders_port = self.open("orders", bind=True, handler=self._on_request)
        self.exec = self.open("exec", bind=True)
        self.md = self.open("md", bind=False, handler=self._on_md, subscribe=[b"md."])
        self.every(MARK_PUBLISH_S, self._publish_marks)
        self.every(max(x.export_every_ms, 50) / 1000.0, self._maybe_export)
        self.log.info("rebuilt from ledger", orders=len(self.orders), fills=self.acct.n_fills, open_orders=self.n_open,
                      paused=self.paused, halted=self.halted, equity=round(self.acct.equity, 2))
        return {"instruments": len(self.instruments), **self.status()}

    def _rebuild(self) -> None:
        """Replay the ledger: fills through the accounting, open orders back into the book."""
        led = self.ledger
        self.paused = led.meta("paused") == "1"
        self.halted = led.meta("halted") == "1"
        for r in led.fills():
            self.acct.apply_fill(r["symbol"], r["side"], r["qty"], r["price"], r["fee"], r["ts"], r["multiplier"])
        for sym, row in led.positions().items():
            p = self.acct.positions.get(sym)
            got = p.qty if p else 0
            if got != row["qty"]:
                # Cannot happen when fills and positions commit together; fills are the truth.
                self.log.error("ledger positions table disagrees with the fills; using the fills",
                               symbol=sym, table=row["qty"], fills=got)
        for r in led.orders():
            o = OrderInfo(order_id=r["order_id"], cl_id=r["cl_id"], symbol=r["symbol"], side=r["side"], qty=r["qty"],
                          filled=r["filled"], order_type=r["order_type"], price=r["price"], tif=r["tif"],
                          status=r["status"], ts=r["ts"])
            self.orders[o.order_id] = o
            self.by_cl[o.cl_id] = (o.order_id, (o.symbol, o.side, o.qty, o.order_type, o.price, o.tif))
            if o.status in OPEN:
                self._book_add(o)
                if r["reason"] == "flatten":
                    self.flattening.add(o.order_id)
                if o.tif == "DAY" and r["day"] is not None:
                    self.day_of[o.order_id] = r["day"]
        self.next_oid, self.next_fid = led.next_ids()
        if self.acct.n_fills or self.orders:
            self.log.info("ledger resumed", previous_run_id=led.previous_run_id, fills=self.acct.n_fills,
                          orders=len(self.orders), open_orders=self.n_open, cash=round(self.acct.cash, 2),
                          positions={s: p.qty for s, p in self.acct.positions.items() if p.qty})

    # ------------------------------------------------------------ book helpers
    def _book_add(self, o: OrderInfo) -> None:
        self.book.setdefault(o.symbol, []).append(o.order_id)
        k = (o.symbol, o.side)
        self.open_qty[k] = self.open_qty.get(k, 0) + o.qty - o.filled
        self.n_open += 1

    def _book_remove(self, o: OrderInfo, left: int) -> None:
        self.book[o.symbol].remove(o.order_id)
        k = (o.symbol, o.side)
        self.open_qty[k] -= left
        self.n_open -= 1
        self.day_of.pop(o.order_id, None)
        if o.order_id in self.flattening:
            self.flattening.discard(o.order_id)
            if not self.flattening:
                self.marks_dirty = True  # the account update then says flattening is over

    # -------------------------------------------------------------- requests
    def _reply(self, rcv: Received, msg: Any) -> None:
        self.orders_port.send(msg, to=rcv.ident, delim=rcv.delim)

    def on_bad_message(self, port: Port, err: ProtocolError) -> None:
        self._log_bad(port, err)
        if port is self.orders_port and err.ident is not None:
            self.orders_port.send(OrdersError(code="bad-request", text=str(err)[:4000]), to=err.ident,
                                  delim=err.delim)

    def _on_request(self, port: Port, rcv: Received) -> None:
        self._drain_md()
        m = rcv.msg
        if isinstance(m, SubmitOrder):
            self._reply(rcv, self._submit(m))
            # In "close" mode a market order fills at once; after the ack, so the
            # client sees its order id before the fill.
            o = self._just_accepted
            if o is not None:
                self._just_accepted = None
                if o.order_type == "market" and self.x.fill_on == "close" and o.symbol in self.last_px:
                    self._fill(o, self._slipped(o, self.last_px[o.symbol]), self.last_ts[o.symbol])
        elif isinstance(m, CancelOrder):
            self._reply(rcv, self._cancel_one(m.cl_id))
        elif isinstance(m, CancelAll):
            self._reply(rcv, CancelReply(cancelled=self._cancel_where(m.symbol, "cancel-all")))
        elif isinstance(m, Flatten):
            self._reply(rcv, CancelReply(cancelled=self._flatten(m.symbol)))
        elif isinstance(m, Query):
            self._reply(rcv, self._query(m.what))
        elif isinstance(m, Progress):
            # One-way, no reply: the strategy's bar progress gates backtest bars.
            if m.fseq > self.gate:
                self.gate = m.fseq
                if self.backtest:
                    self._advance()
        else:
            self._reply(rcv, OrdersError(code="bad-request", text=f"{type(m).__name__} is not a request"))

    _just_accepted: OrderInfo | None = None

    def _reject(self, m: SubmitOrder, code: str, text: str) -> OrderReject:
        self.log.debug("order rejected", cl_id=m.cl_id, code=code, text=text)
        return OrderReject(cl_id=m.cl_id, code=code, text=text)

    def _submit(self, m: SubmitOrder) -> OrderAck | OrderReject:
        fp = (m.symbol, m.side, m.qty, m.order_type, m.price, m.tif)
        seen = self.by_cl.get(m.cl_id)
        if seen is not None:
            if seen[1] == fp:
                return OrderAck(cl_id=m.cl_id, order_id=seen[0], duplicate=True)
            return self._reject(m, "duplicate-client-order-id",
                                f"client order id {m.cl_id!r} already used by order {seen[0]} with different terms")
        if self.halted:
            return self._reject(m, "halted", "trading halted (kill switch): no new orders")
        if self.paused:
            return self._reject(m, "paused", "trading paused: no new orders (cancels are accepted)")
        inst = self.instruments.get(m.symbol)
        if inst is None:
            return self._reject(m, "unknown-instrument", f"unknown instrument {m.symbol!r}")
        if m.order_type == "market":
            if m.price is not None:
                return self._reject(m, "bad-request", "a market order takes no price")
        elif m.price is None:
            return self._reject(m, "bad-request", f"a {m.order_type} order needs a price")
        if m.qty % inst.lot_size:
            return self._reject(m, "bad-lot-size", f"qty {m.qty} is not a multiple of the lot size {inst.lot_size}")
        if m.price is not None:
            steps = m.price / inst.tick_size
            if abs(steps - round(steps)) > 1e-6:  # tolerance for binary floats like 0.1
                return self._reject(m, "bad-tick-size", f"price {m.price} is not on the tick size {inst.tick_size}")
        x = self.x
        if self.n_open >= x.max_open_orders:
            return self._reject(m, "risk-limit", f"max open orders {x.max_open_orders} reached")
        pos = self.acct.position(m.symbol)
        if m.side == "buy":
            worst = pos + self.open_qty.get((m.symbol, "buy"), 0) + m.qty
        else:
            worst = pos - self.open_qty.get((m.symbol, "sell"), 0) - m.qty
        if abs(worst) > x.max_position:
            return self._reject(m, "risk-limit",
                                f"position could reach {worst}, beyond max_position {x.max_position}")
        ref = m.price if m.price is not None else self.last_px.get(m.symbol)
        if ref is not None:
            notional = m.qty * ref * inst.multiplier
            if notional > x.max_order_notional:
                return self._reject(m, "risk-limit",
                                    f"order notional {notional:.2f} exceeds max_order_notional {x.max_order_notional}")
        o = self._accept(m.cl_id, m.symbol, m.side, m.qty, m.order_type, m.price, m.tif, "accepted")
        self._just_accepted = o
        return OrderAck(cl_id=m.cl_id, order_id=o.order_id)

    def _accept(self, cl_id: str, symbol: str, side: str, qty: int, order_type: str, price: float | None, tif: str,
                reason: str) -> OrderInfo:
        o = OrderInfo(order_id=self.next_oid, cl_id=cl_id, symbol=symbol, side=side, qty=qty, order_type=order_type,
                      price=price, tif=tif, status="new", ts=time.time_ns())
        day = None
        if tif == "DAY" and symbol in self.last_ts:
            day = self.last_ts[symbol] // DAY_NS
        self.ledger.insert_order(o, day, reason)  # committed before the ack goes out
        self.next_oid += 1
        self.orders[o.order_id] = o
        self.by_cl[cl_id] = (o.order_id, (symbol, side, qty, order_type, price, tif))
        self._book_add(o)
        if reason == "flatten":
            self.flattening.add(o.order_id)
            self.marks_dirty = True  # subscribers learn it is flattening
        if day is not None:
            self.day_of[o.order_id] = day
        if self.backtest:
            self.eligible[o.order_id] = self.gate + 2
        self._publish_order(o, reason)
        return o

    def _cancel_one(self, cl_id: str) -> CancelReply | OrderReject:
        seen = self.by_cl.get(cl_id)
        if seen is None:
            return OrderReject(cl_id=cl_id, code="unknown-order", text=f"no order with client order id {cl_id!r}")
        o = self.orders[seen[0]]
        if o.status not in OPEN:
            return CancelReply(cancelled=[])  # already done: a retried cancel is harmless
        self._close_orders([o], "cancelled", "cancel")
        return CancelReply(cancelled=[o.order_id])

    def _cancel_where(self, symbol: str, reason: str) -> list[int]:
        syms = [symbol] if symbol else list(self.book)
        victims = [self.orders[oid] for s in syms for oid in self.book.get(s, ())]
        self._close_orders(victims, "cancelled", reason)
        return [o.order_id for o in victims]

    def _close_orders(self, orders: list[OrderInfo], status: str, reason: str) -> None:
        """Cancel/expire orders: one ledger transaction, then the updates."""
        if not orders:
            return
        self.ledger.update_orders([(o.order_id, status, o.filled, reason) for o in orders])
        for o in orders:
            left = o.qty - o.filled
            o.status = status
            self._book_remove(o, left)
            self._publish_order(o, reason)

    def _flatten(self, symbol: str) -> list[int]:
        cancelled = self._cancel_where(symbol, "flatten")
        for sym, p in list(self.acct.positions.items()):
            if p.qty == 0 or (symbol and sym != symbol):
                continue
            cl_id = f"flatten-{self.next_oid}"
            while cl_id in self.by_cl:  # a client may have used the name already
                cl_id += "-x"
            o = self._accept(cl_id, sym, "sell" if p.qty > 0 else "buy", abs(p.qty), "market",
                             None, "GTC", "flatten")
            if self.x.fill_on == "close" and sym in self.last_px:
                self._fill(o, self._slipped(o, self.last_px[sym]), self.last_ts[sym])
        return cancelled

    # ------------------------------------------------------------ market data
    def _drain_md(self) -> None:
        """Process market data already queued, so orders see the latest prices first."""
        sock = self.md.sock
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # no poll syscall when idle
            try:
                rcv = self.md.recv(zmq.NOBLOCK)
            except ProtocolError as e:
                self.on_bad_message(self.md, e)
                continue
            except zmq.Again:
                return
            self._on_md(self.md, rcv)

    def _on_md(self, port: Port, rcv: Received) -> None:
        m = rcv.msg
        if self.backtest:
            if isinstance(m, BarBatch):
                self.pending.extend(m.bars)
            elif isinstance(m, Bar):
                self.pending.append(m)
            elif isinstance(m, EndOfData):
                self.eod = m
            else:
                return
            self._advance()
            return
        if isinstance(m, Bar):
            self._on_price(m.symbol, m.ts, m.open, m.high, m.low, m.close)
        elif isinstance(m, Tick):
            self._on_price(m.symbol, m.ts, m.price, m.price, m.price, m.price)
        elif isinstance(m, BarBatch):
            for b in m.bars:
                self._on_price(b.symbol, b.ts, b.open, b.high, b.low, b.close)
        elif isinstance(m, EndOfData):
            self._on_eod(m)

    def _advance(self) -> None:
        """Backtest: process every buffered bar the strategy's progress allows."""
        pending, gate1 = self.pending, self.gate + 1
        done = self.done_fseq
        positions = self.acct.positions
        while pending and pending[0].fseq <= gate1:
            b = pending.popleft()
            self._on_price(b.symbol, b.ts, b.open, b.high, b.low, b.close, b.fseq)
            done = b.fseq
            if len(positions) <= 1:
                pos = sum(p.qty for p in positions.values())
            else:  # several instruments: gross units, for exposure time
                pos = sum(abs(p.qty) for p in positions.values())
            # One equity row per timestamp (several symbols share one): the last
            # bar of a timestamp has every symbol's price of that time.
            if self.equity_rows and self.equity_rows[-1][0] == b.ts:
                self.equity_rows[-1] = (b.ts, self.acct.equity)
                self.pos_rows[-1] = pos
            else:
                self.equity_rows.append((b.ts, self.acct.equity))
                self.pos_rows.append(pos)
        if done != self.done_fseq:
            self.done_fseq = done
            self.ref.send(Progress(fseq=done), flags=zmq.NOBLOCK)
        if self.eod is not None and not pending and not self.finished and done >= self.eod.last_fseq:
            self._finish()

    def _finish(self) -> None:
        """Backtest complete: close out as at end of data, then write the results.

        The results (report.png especially) take seconds on a long run, so they
        are written on a worker thread while this loop keeps heartbeating; the
        Finished message goes out from the loop once the thread is done.
        """
        self.finished = True
        assert self.eod is not None
        self._on_eod(self.eod)
        fills = [SimpleNamespace(fee=r["fee"]) for r in self.ledger.fills()]
        self._results: dict[str, Any] = {}
        self._results_thread = threading.Thread(target=self._write_results, args=(fills,), daemon=True)
        self._results_thread.start()
        self.every(0.05, self._results_done)

    def _write_results(self, fills: list[Any]) -> None:
        text, summary = "no bars", {}
        try:
            if self.equity_rows:
                money = max((self._decimals(sym)[1] for sym in self.instruments), default=2)
                skipped = self.eod.rows_skipped if self.eod is not None else 0
                summary = report.write_results(self.run_dir, self.equity_rows, self.acct.trips, fills,
                                               self.pos_rows, title=f"paperbus backtest {self.run_id}", log=self.log,
                                               money_decimals=money,
                                               # Replay rows dropped for bad values: in the results, not only a log.
                                               extra={"rows_skipped": skipped})
                text = report.format_text_summary(summary)
                if skipped:
                    text += f"\ndata          {skipped} rows skipped (bad values; see the market-data warning)"
        except Exception as e:  # reported by the loop: the run must not hang on it
            self._results["error"] = f"{type(e).__name__}: {e}"
            self._results["disk"] = disk_error(e)
        self._results.update(text=text, summary=summary, fills=len(fills))

    def _results_done(self) -> None:
        if self._results_thread.is_alive() or not self._results or self._results.get("sent"):
            return
        r = self._results
        r["sent"] = True
        if r.get("disk") is not None:
            raise r["disk"]  # a full or read-only disk: EXIT_DISK, not a plain crash
        if "error" in r:
            raise RuntimeError(f"writing backtest results failed: {r['error']}")
        self.log.info("backtest finished", bars=len(self.equity_rows), fills=r["fills"],
                      final_equity=round(self.acct.equity, 2))
        self.lifecycle.send(Finished(text=r["text"][:16000], summary=r["summary"]), flags=zmq.NOBLOCK)

    def _on_price(self, sym: str, ts: int, op: float, hi: float, lo: float, cl: float, fseq: int = 0) -> None:
        ids = self.book.get(sym)
        if ids:
            day = ts // DAY_NS
            expired = []
            for oid in ids:
                if self.orders[oid].tif == "DAY":
                    d = self.day_of.get(oid)
                    if d is None:
                        self.day_of[oid] = day
                        self.ledger.set_order_day(oid, day)
                    elif day > d:
                        expired.append(self.orders[oid])
            # Expire first: a DAY order must not fill on a later day's data.
            self._close_orders(expired, "expired", "day order expired")
            ioc_missed = []
            eligible = self.eligible
            for oid in list(ids):
                if eligible and eligible.get(oid, 0) > fseq:
                    continue  # backtest: decided on this bar or later, may not fill on it
                o = self.orders[oid]
                px = self._match(o, op, hi, lo, cl)
                if px is not None:
                    self._fill(o, px, ts)
                elif o.tif == "IOC":
                    ioc_missed.append(o)
            self._close_orders(ioc_missed, "cancelled", "ioc not filled on the next market data")
        self.n_prices += 1
        self.last_px[sym] = cl
        self.last_ts[sym] = ts
        if self.acct.mark(sym, cl):
            self.marks_dirty = True

    def _match(self, o: OrderInfo, op: float, hi: float, lo: float, cl: float) -> float | None:
        t = o.order_type
        buy = o.side == "buy"
        if t == "market":
            return self._slipped(o, cl if self.x.fill_on == "close" else op)
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

    def _on_eod(self, m: EndOfData) -> None:
        days = [self.orders[oid] for ids in self.book.values() for oid in ids if self.orders[oid].tif == "DAY"]
        iocs = [self.orders[oid] for ids in self.book.values() for oid in ids if self.orders[oid].tif == "IOC"]
        self._close_orders(days, "expired", "day order expired at end of data")
        self._close_orders(iocs, "cancelled", "ioc not filled before end of data")
        self.log.info("end of data", feed=m.feed, count=m.count, expired=len(days), cancelled=len(iocs))
        self._publish_account()
        self._export()

    # ------------------------------------------------------------------ fills
    def _commission(self, qty: int, px: float, mult: float) -> float:
        x = self.x
        return max(x.commission_min, x.commission_pct * qty * px * mult + x.commission_per_unit * qty)

    def _fill(self, o: OrderInfo, px: float, ts: int) -> None:
        if self.wall_clock and ts < o.ts:
            # Live bars carry the wall-clock start of their interval: a next-open fill
            # would be stamped a moment before the order it fills. Never before it.
            ts = o.ts
        p = self.acct.positions.get(o.symbol)
        inst = self.instruments.get(o.symbol)
        mult = p.multiplier if p is not None else (inst.multiplier if inst else 1.0)
        qty = o.qty - o.filled
        fee = self._commission(qty, px, mult)
        res = self.acct.apply_fill(o.symbol, o.side, qty, px, fee, ts, mult)
        p = self.acct.positions[o.symbol]
        fid = self.next_fid
        o.filled = o.qty
        o.status = "filled"
        # If this commit fails it is rolled back whole and nothing is published: the
        # in-memory state is ahead of the ledger, so the exception ends the process
        # (a disk error with EXIT_DISK, no restart) and the next start rebuilds from the ledger.
        self.ledger.record_fill(
            (fid, o.order_id, o.cl_id, o.symbol, o.side, qty, px, fee, ts, mult, res.position, res.realized),
            (o.order_id, "filled", o.filled, "filled"),
            (o.symbol, p.qty, p.avg_price, p.realized, p.fees),
        )
        self.next_fid += 1
        self._book_remove(o, qty)
        self.exec.send(Fill(fill_id=fid, order_id=o.order_id, cl_id=o.cl_id, symbol=o.symbol, side=o.side, qty=qty,
                            price=px, fee=fee, ts=ts, position=res.position, realized=res.realized),
                       topic=b"exec.fill." + o.symbol.encode())
        self._publish_order(o, "filled")
        if self.backtest:
            # Thousands of fills a second: the account goes out on the 250 ms
            # mark timer (and at end of data), not once per fill.
            self.marks_dirty = True
        else:
            self._publish_account(ts)
        self.export_dirty = True
        if self.x.export_every_ms == 0:
            self._export()

    # ------------------------------------------------------------- publishing
    def _publish_order(self, o: OrderInfo, reason: str) -> None:
        self.exec.send(OrderUpdate(order=o, reason=reason), topic=b"exec.order." + o.symbol.encode())

    def _account_info(self) -> AccountInfo:
        a = self.acct
        return AccountInfo(cash=a.cash, equity=a.equity, initial_cash=a.initial_cash, realized=a.realized,
                           unrealized=a.unrealized, fees=a.fees, gross_exposure=a.gross_exposure)

    def _positions(self) -> list[PositionInfo]:
        return [PositionInfo(symbol=p.symbol, qty=p.qty, avg_price=p.avg_price, mark=p.mark, realized=p.realized,
                             unrealized=p.unrealized, fees=p.fees) for p in self.acct.positions.values()]

    def _publish_account(self, ts: int = 0) -> None:
        self.marks_dirty = False
        self.exec.send(AccountUpdate(account=self._account_info(), positions=self._positions(), ts=ts or time.time_ns(),
                                     paused=self.paused, halted=self.halted, flattening=bool(self.flattening)),
                       topic=TOPIC_ACCT)

    def _publish_marks(self) -> None:
        if self.marks_dirty:
            self._publish_account()

    def _query(self, what: str) -> QueryReply:
        r = QueryReply(paused=self.paused, halted=self.halted, flattening=bool(self.flattening))
        if what in ("all", "positions"):
            r.positions = self._positions()
        if what in ("all", "orders"):
            r.orders = [self.orders[oid] for ids in self.book.values() for oid in ids]
        if what in ("all", "account"):
            r.account = self._account_info()
        return r

    # ----------------------------------------------------------------- export
    def _maybe_export(self) -> None:
        if self.export_dirty and time.monotonic() - self.last_export >= self.x.export_every_ms / 1000.0:
            self._export()

    def _export(self) -> None:
        """fills.csv and trades.csv, for people: ISO-8601 UTC times beside the ns
        columns, prices to the tick size's decimals and money to the instrument's
        precision (report.decimals). The ledger keeps the exact values."""
        self.export_dirty = False
        self.last_export = time.monotonic()
        dec = self._decimals
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["fill_id", "order_id", "cl_id", "symbol", "side", "qty", "price", "fee", "ts", "time",
                    "multiplier", "position", "realized"])
        for r in self.ledger.fills():
            pd, md = dec(r["symbol"])
            w.writerow((r["fill_id"], r["order_id"], r["cl_id"], r["symbol"], r["side"], r["qty"],
                        f"{r['price']:.{pd}f}", f"{r['fee']:.{md}f}", r["ts"], report.iso(r["ts"]),
                        r["multiplier"], r["position"], f"{r['realized']:.{md}f}"))
        atomic_write(os.path.join(self.run_dir, "fills.csv"), buf.getvalue().encode())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["symbol", "side", "qty", "entry_ts", "entry_time", "entry_price", "exit_ts", "exit_time",
                    "exit_price", "pnl", "fees", "net_pnl"])
        for t in self.acct.trips:
            pd, md = dec(t.symbol)
            w.writerow((t.symbol, t.side, t.qty, t.entry_ts, report.iso(t.entry_ts), f"{t.entry_price:.{pd}f}",
                        t.exit_ts, report.iso(t.exit_ts), f"{t.exit_price:.{pd}f}", f"{t.pnl:.{md}f}",
                        f"{t.fees:.{md}f}", f"{t.net:.{md}f}"))
        atomic_write(os.path.join(self.run_dir, "trades.csv"), buf.getvalue().encode())

    def _decimals(self, symbol: str) -> tuple[int, int]:
        """(price decimals, money decimals) of an instrument: report.decimals of its tick size."""
        inst = self.instruments.get(symbol)
        return report.decimals(inst.tick_size if inst is not None else 0.01)

    # --------------------------------------------------------------- control
    def _set_flags(self, **flags: bool) -> None:
        """Persist first (a restarted exchange resumes what the operator set), then
        tell every subscriber at once: the state view and the strategy follow it."""
        self.ledger.set_flags(**flags)
        for k, v in flags.items():
            setattr(self, k, v)
        self._publish_account()

    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "pause":
            self._set_flags(paused=True)
        elif cmd == "resume":
            if self.halted:
                raise CommandError("trading is halted (kill switch): resume does not lift a halt; "
                                   "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
            self._set_flags(paused=False)
        elif cmd == "halt":
            self._set_flags(halted=True)
            n = self._cancel_where("", "halt")
            self.log.warning("halted (kill switch)", cancelled=len(n))
            return {"halted": True, "cancelled": n}
        elif cmd == "unhalt":
            if not self.halted:
                raise CommandError("trading is not halted: there is no halt to lift")
            # Lifting the kill switch does not start trading: that takes a resume.
            self._set_flags(halted=False, paused=True)
            self.log.warning("halt lifted (kill switch off); trading stays paused until resume")
            return {"halted": False, "paused": True,
                    "message": "halt lifted; trading stays paused until `ctl resume`"}
        elif cmd in ("flatten", "stop-and-close"):
            sym = args.get("symbol", "")
            if not isinstance(sym, str):
                raise CommandError(f"{cmd}: symbol must be a string")
            if cmd == "stop-and-close":
                self._set_flags(paused=True)
            cancelled = self._flatten(sym)
            self.log.info("command", cmd=cmd, cancelled=len(cancelled), flattening=len(self.flattening))
            self._publish_account()
            return {"cancelled": cancelled, "open_orders": self.n_open, "paused": self.paused,
                    "flattening": bool(self.flattening)}
        elif cmd == "cancel-all":
            # Every open order but the exchange's own flatten orders: what a
            # disabled strategy left behind (its positions are kept).
            why = args.get("reason", "cancel-all")
            if not isinstance(why, str) or not why:
                raise CommandError("cancel-all: reason must be a non-empty string")
            victims = [self.orders[oid] for ids in self.book.values() for oid in ids if oid not in self.flattening]
            self._close_orders(victims, "cancelled", why)
            self.log.info("command", cmd=cmd, cancelled=len(victims), reason=why)
            return {"cancelled": [o.order_id for o in victims],
                    "message": f"cancelled {len(victims)} open order(s)"}
        else:
            raise CommandError(f"paper-exchange does not handle command {cmd!r} "
                               "(pause, resume, halt, unhalt, flatten, stop-and-close, cancel-all)")
        self.log.info("command", cmd=cmd, paused=self.paused, halted=self.halted)
        return {"paused": self.paused, "halted": self.halted}

    def status(self) -> dict[str, Any]:
        return {"orders": len(self.orders), "fills": self.acct.n_fills, "bars": self.n_prices,
                "open_orders": self.n_open,
                "paused": self.paused, "halted": self.halted, "flattening": bool(self.flattening),
                "equity": round(self.acct.equity, 2),
                "previous_run_id": self.ledger.previous_run_id}

    def on_stop(self) -> None:
        try:
            self._export()
        except (OSError, sqlite3.Error) as e:
            self.log.error("final export failed", error=str(e))
        try:
            self.ledger.end_run(self.acct.equity)  # a DiskError here ends the actor with EXIT_DISK (Actor.serve)
        finally:
            self.ledger.close()


if __name__ == "__main__":
    main(PaperExchange)

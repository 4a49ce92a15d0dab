"""The exchange's logic as a plain object (actors/exchange_core.py): no process, no socket;
a real SQLite ledger in a temporary directory. The wiring (sockets, topics, lifecycle
commands, a SIGKILL) is tested on the real actor in tests/test_exchange.py."""

import csv
import os

import msgspec
import pytest

import config as config_mod
from actors.exchange_core import ExchangeCore, Refused
from actors.ledger import Ledger
from bus.messages import (
    AccountUpdate, Bar, CancelReply, EndOfData, Fill, Instrument, OrderAck, OrderReject, OrderUpdate, SubmitOrder, Tick,
)
from tests.harness import Log

pytestmark = pytest.mark.timeout(60)

INSTRUMENTS = [
    Instrument(symbol="AAA", kind="equity", tick_size=0.01),
    Instrument(symbol="LOT", kind="equity", tick_size=0.01, lot_size=100),
    Instrument(symbol="FUT", kind="future", tick_size=0.25, multiplier=50.0),
]
T0 = 1_700_000_000 * 10**9  # a market timestamp (2023-11-14 UTC)
MIN = 60 * 10**9
DAY = 86_400 * 10**9


class Books:
    """One ExchangeCore on a ledger in ``d``, recording what it emits."""

    def __init__(self, d, backtest=False, run_id="r1", now_ns=None, **exchange):
        self.d = str(d)
        self.cfg = msgspec.structs.replace(config_mod.load().exchange, **exchange)
        self.ledger = Ledger(os.path.join(self.d, "ledger.sqlite"))
        self.ledger.start_run(run_id, "{}", self.cfg.initial_cash, mode="backtest" if backtest else "live")
        self.events = []
        self.log = Log()
        self.core = ExchangeCore(self.cfg, INSTRUMENTS, self.ledger, out_dir=self.d, emit=self.events.append,
                                 log=self.log, backtest=backtest, **({"now_ns": now_ns} if now_ns else {}))
        self.n = 0

    def submit(self, symbol="AAA", side="buy", qty=1, order_type="market", price=None, tif="GTC", cl_id=None):
        self.n += 1
        m = SubmitOrder(cl_id=cl_id or f"c{self.n}", symbol=symbol, side=side, qty=qty, order_type=order_type,
                        price=price, tif=tif)
        r = self.core.submit(m)
        self.core.settle()
        return m, r

    def bar(self, symbol, ts, o, h, lo, c, fseq=0):
        self.core.on_bar(Bar(symbol=symbol, ts=ts, open=o, high=h, low=lo, close=c, fseq=fseq))

    def fills(self):
        return [e for e in self.events if isinstance(e, Fill)]

    def updates(self):
        return [e for e in self.events if isinstance(e, OrderUpdate)]

    def accounts(self):
        return [e for e in self.events if isinstance(e, AccountUpdate)]

    def pos(self, sym):
        return next((p.qty for p in self.core.query().positions if p.symbol == sym), 0)


@pytest.fixture
def books(tmp_path):
    made = []

    def make(**kw):
        made.append(Books(tmp_path, **kw))
        return made[-1]
    yield make
    for b in made:
        b.ledger.close()


def test_every_reject_reason_and_idempotent_retry(books):
    b = books(max_position=1000, max_order_notional=1_000_000.0, max_open_orders=3)
    c = b.core

    def rejected(code, **kw):
        _m, r = b.submit(**kw)
        assert isinstance(r, OrderReject) and r.code == code, r
        assert r.text
        return r

    rejected("unknown-instrument", symbol="ZZZ")
    assert "150" in rejected("bad-lot-size", symbol="LOT", qty=150).text
    rejected("bad-tick-size", symbol="FUT", order_type="limit", price=100.1)
    rejected("bad-request", symbol="AAA", order_type="limit")  # limit without a price
    rejected("bad-request", symbol="AAA", price=10.0)  # market with a price
    rejected("risk-limit", symbol="AAA", qty=1001)  # max_position
    rejected("risk-limit", symbol="FUT", qty=300, order_type="limit", price=100.0)  # 300*100*50 > 1e6
    oks = []
    for i in range(3):
        m, r = b.submit("AAA", "buy", 100, "limit", 50.0 + i)
        assert isinstance(r, OrderAck) and not r.duplicate
        oks.append((m, r))
    rejected("risk-limit", symbol="AAA", qty=1, order_type="limit", price=40.0)  # max_open_orders
    # worst-case position: 300 resting buys + 701 > 1000
    assert c.cancel(oks[2][0].cl_id) == CancelReply(cancelled=[oks[2][1].order_id])
    rejected("risk-limit", symbol="AAA", qty=801)

    # idempotent retry: same cl_id and terms -> the original ack, no second order; a cancelled
    # order's id is found in the ledger (memory holds open orders only)
    m0, a0 = oks[0]
    r = c.submit(m0)
    assert isinstance(r, OrderAck) and r.duplicate and r.order_id == a0.order_id
    r = c.submit(msgspec.structs.replace(m0, qty=5))
    assert isinstance(r, OrderReject) and r.code == "duplicate-client-order-id"
    r = c.submit(oks[2][0])
    assert isinstance(r, OrderAck) and r.duplicate and r.order_id == oks[2][1].order_id
    assert oks[2][1].order_id not in c.open
    assert c.cancel(oks[2][0].cl_id) == CancelReply(cancelled=[])  # a retried cancel is harmless
    assert len(c.query().orders) == 2

    # paused: new orders rejected, cancels accepted
    assert c.command("pause", {})["paused"] is True
    rejected("paused", symbol="AAA")
    assert c.cancel(oks[1][0].cl_id) == CancelReply(cancelled=[oks[1][1].order_id])
    assert c.query().paused
    c.command("resume", {})
    _m, r = b.submit("AAA", "sell", 1, "limit", 60.0)
    assert isinstance(r, OrderAck)

    # halt: every open order cancelled, new orders rejected "halted", retries still answered
    rep = c.command("halt", {})
    assert len(rep["cancelled"]) == 2
    q = c.query()
    assert q.halted and q.orders == []
    rejected("halted", symbol="AAA")
    assert c.submit(m0).duplicate
    r = c.cancel("never-sent")
    assert isinstance(r, OrderReject) and r.code == "unknown-order"
    with pytest.raises(Refused, match="does not handle command 'bogus'"):
        c.command("bogus", {})
    assert sum(u.order.status == "cancelled" for u in b.updates()) == 4
    assert not b.fills() and c.status()["orders"] == 4


def test_market_limit_stop_fills_commission_slippage_and_export(books, tmp_path):
    b = books(commission_pct=0.001, commission_per_unit=0.01, commission_min=1.0, slippage_bps=10.0,
              export_every_ms=0)
    # market buy 10 AAA: fills at the NEXT bar's open (100), slipped 10 bps -> 100.10
    _m, a = b.submit("AAA", "buy", 10)
    assert not b.fills()
    b.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)
    f = b.fills()[-1]
    assert (f.order_id, f.qty, f.price, f.ts, f.position) == (a.order_id, 10, 100.10, T0, 10)
    assert f.fee == pytest.approx(max(1.0, 0.001 * 10 * 100.10 + 0.01 * 10))  # 1.1011
    # resting orders: buy limit 98 (crossed by low 97.5 -> 98), sell stop 95 (not touched),
    # buy stop on FUT 4000 (high 4001 -> 4000, slipped to 4004.00)
    _m, bl = b.submit("AAA", "buy", 5, "limit", 98.0)
    _m, ss = b.submit("AAA", "sell", 5, "stop", 95.0)
    _m, bs = b.submit("FUT", "buy", 2, "stop", 4000.0)
    b.bar("AAA", T0 + MIN, 99.0, 99.5, 97.5, 98.5)
    b.bar("FUT", T0 + MIN, 3999.0, 4001.0, 3998.0, 4000.5)
    by = {x.order_id: x for x in b.fills()}
    assert by[bl.order_id].price == 98.0 and by[bl.order_id].position == 15
    assert by[bs.order_id].price == 4004.0 and by[bs.order_id].position == 2
    assert by[bs.order_id].fee == pytest.approx(0.001 * 2 * 4004.0 * 50 + 0.02)
    assert ss.order_id not in by
    # sell limit 103 gapped through: open 104 -> 104
    _m, sl = b.submit("AAA", "sell", 15, "limit", 103.0)
    b.bar("AAA", T0 + 2 * MIN, 104.0, 105.0, 103.5, 104.5)
    f = b.fills()[-1]
    assert f.order_id == sl.order_id and f.price == 104.0 and f.position == 0
    assert f.realized == pytest.approx(15 * (104.0 - (10 * 100.10 + 5 * 98.0) / 15))
    # sell stop 95 gapped through: open 94 -> 94, slipped down to 93.90 (position goes short 5)
    b.bar("AAA", T0 + 3 * MIN, 94.0, 94.5, 93.0, 94.2)
    f = b.fills()[-1]
    assert f.order_id == ss.order_id and f.price == 93.9 and f.position == -5
    # a tick fills a market order at the tick price
    _m, tk = b.submit("AAA", "buy", 5)
    b.core.on_tick(Tick(symbol="AAA", ts=T0 + 4 * MIN, price=94.5))
    f = b.fills()[-1]
    assert f.order_id == tk.order_id and f.price == pytest.approx(94.6) and f.position == 0

    q = b.core.query()
    acct = q.account
    fees = sum(x.fee for x in b.fills())
    assert acct.fees == pytest.approx(fees)
    assert acct.equity == pytest.approx(acct.cash + sum(p.qty * p.mark * (50.0 if p.symbol == "FUT" else 1.0)
                                                        for p in q.positions))
    assert acct.equity == pytest.approx(acct.initial_cash + acct.realized + acct.unrealized - acct.fees)
    # live: every fill is followed by an account update carrying it
    kinds = [type(e).__name__ for e in b.events]
    assert all(kinds[i + 2] == "AccountUpdate" for i, k in enumerate(kinds) if k == "Fill")
    assert b.accounts()[-1].account.fees == pytest.approx(fees)
    # exports: written on every fill here (export_every_ms = 0)
    with open(os.path.join(tmp_path, "fills.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["fill_id"]) for r in rows] == [x.fill_id for x in b.fills()]
    with open(os.path.join(tmp_path, "trades.csv")) as fh:
        trades = list(csv.DictReader(fh))
    assert [(t["symbol"], t["side"], int(t["qty"])) for t in trades] == [("AAA", "long", 15), ("AAA", "short", 5)]
    assert sum(float(t["pnl"]) for t in trades) == pytest.approx(sum(x.realized for x in b.fills()))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_fill_on_close_ioc_day_and_flatten(books):
    b = books(fill_on="close")
    c = b.core
    _m, a = b.submit("AAA", "buy", 1)  # no close seen yet: fills at the next bar's close
    b.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)
    assert b.fills()[-1].price == 100.5
    _m, a = b.submit("AAA", "buy", 4)  # fills at once at the last close, after its ack
    f = b.fills()[-1]
    assert f.order_id == a.order_id and f.price == 100.5 and f.position == 5
    assert [type(e).__name__ for e in b.events[-4:-1]] == ["OrderUpdate", "Fill", "OrderUpdate"]
    # IOC that does not cross is cancelled on the next bar; DAY expires on the next UTC day
    _m, ioc = b.submit("AAA", "buy", 1, "limit", 90.0, "IOC")
    _m, day = b.submit("AAA", "buy", 1, "limit", 90.0, "DAY")
    _m, gtc = b.submit("AAA", "buy", 1, "limit", 90.0, "GTC")
    b.bar("AAA", T0 + MIN, 100.0, 101.0, 99.0, 100.0)
    assert any(u.order.order_id == ioc.order_id and u.order.status == "cancelled" for u in b.updates())
    assert {o.order_id for o in c.query().orders} == {day.order_id, gtc.order_id}
    n = len(b.events)
    b.bar("AAA", T0 + DAY, 89.0, 89.0, 88.0, 88.5)  # next day, gaps through 90
    after = b.events[n:]
    # the expiry is published before the fills of the same bar, and the DAY order never fills
    assert isinstance(after[0], OrderUpdate) and after[0].order.order_id == day.order_id
    assert after[0].order.status == "expired"
    assert any(isinstance(e, Fill) and e.order_id == gtc.order_id for e in after)
    assert not any(x.order_id == day.order_id for x in b.fills())
    # DAY orders expire at end of data as well
    _m, day2 = b.submit("AAA", "sell", 1, "limit", 500.0, "DAY")
    assert c.end_of_data(EndOfData(feed="test", count=5)) == (1, 0)
    assert any(u.order.order_id == day2.order_id and u.order.status == "expired" for u in b.updates())
    # flatten: a resting order is cancelled, the position closed at market (at once in close mode)
    _m, rest = b.submit("AAA", "buy", 1, "limit", 50.0)
    assert b.pos("AAA") == 6
    assert c.flatten() == CancelReply(cancelled=[rest.order_id])
    assert b.pos("AAA") == 0 and c.query().orders == []
    assert b.fills()[-1].cl_id.startswith("flatten-")


def test_trading_state_persists_and_only_unhalt_lifts_a_halt(books, tmp_path):
    b = books()
    c = b.core
    b.bar("AAA", T0, 100.0, 101.0, 99.0, 100.0)
    b.submit("AAA", "buy", 5)
    b.bar("AAA", T0 + MIN, 100.0, 101.0, 99.0, 100.0)
    _m, rest = b.submit("AAA", "buy", 1, "limit", 50.0)  # rests

    def flags():
        return [(x.paused, x.halted, x.flattening) for x in b.accounts()]

    # stop-and-close: paused at once (published), its flatten order shows as flattening until it fills
    rep = c.command("stop-and-close", {})
    assert rep["paused"] is True and rep["cancelled"] == [rest.order_id]
    assert (True, False, True) in flags()
    q = c.query()
    assert (q.paused, q.halted, q.flattening) == (True, False, True)
    _m, r = b.submit("AAA", "buy", 1, "limit", 50.0)
    assert isinstance(r, OrderReject) and r.code == "paused"
    # the exchange's own flatten order survives a cancel-all (what a disabled strategy gets)
    assert c.command("cancel-all", {"reason": "strategy disabled"})["cancelled"] == [] and c.query().flattening
    with pytest.raises(Refused, match="reason must be a non-empty string"):
        c.command("cancel-all", {"reason": 7})
    b.bar("AAA", T0 + 2 * MIN, 100.0, 101.0, 99.0, 100.0)
    assert flags()[-1] == (True, False, False) and b.pos("AAA") == 0

    assert c.command("halt", {})["halted"] is True
    assert flags()[-1] == (True, True, False)
    with pytest.raises(Refused) as e:
        c.command("resume", {})
    assert str(e.value) == ("trading is halted (kill switch): resume does not lift a halt; "
                            "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
    # persisted: a new core on the same ledger (a restarted exchange) is still halted and paused
    b.ledger.close()
    again = Books(tmp_path, run_id="r2")
    c = again.core
    assert (c.paused, c.halted) == (True, True)
    assert c.command("unhalt", {}) == {"halted": False, "paused": True,
                                       "message": "halt lifted; trading stays paused until `ctl resume`"}
    assert any(lvl == "warning" and ev.startswith("halt lifted") for lvl, ev, _ in again.log.lines)
    with pytest.raises(Refused, match="trading is not halted: there is no halt to lift"):
        c.command("unhalt", {})
    _m, r = again.submit("AAA", "buy", 1, cl_id="n1")
    assert isinstance(r, OrderReject) and r.code == "paused"
    c.command("resume", {})
    assert [(x.paused, x.halted) for x in again.accounts()][-1] == (False, False)
    _m, r = again.submit("AAA", "buy", 1, cl_id="n2")
    assert isinstance(r, OrderAck)
    again.ledger.close()


def test_rebuild_from_the_ledger_keeps_books_and_open_orders(books, tmp_path):
    """What a killed exchange finds again on its next start: positions, cash, open orders,
    client order ids; the ledger, not memory, is the truth."""
    b = books()
    b.submit("AAA", "buy", 7)
    _m, keep = b.submit("AAA", "sell", 2, "limit", 500.0)
    _m, day = b.submit("FUT", "buy", 1, "limit", 100.0, "DAY")
    b.bar("AAA", T0, 100.0, 101.0, 99.0, 100.0)
    b.bar("FUT", T0, 4000.0, 4000.0, 4000.0, 4000.0)
    before = b.core.query()
    b.ledger.close()  # no ordered stop: as if killed
    again = Books(tmp_path, run_id="r2")
    c = again.core
    q = c.query()
    assert q.positions == before.positions and q.orders == before.orders
    assert c.acct.cash == b.core.acct.cash and c.ledger.previous_run_id == "r1"
    assert c.day_of == {day.order_id: T0 // DAY}  # a DAY order still expires on its own day
    assert c.submit(SubmitOrder(cl_id="c1", symbol="AAA", side="buy", qty=7, order_type="market")).duplicate
    again.bar("AAA", T0 + MIN, 501.0, 502.0, 500.0, 501.0)
    assert again.fills()[-1].order_id == keep.order_id and again.pos("AAA") == 5
    again.bar("FUT", T0 + DAY, 90.0, 90.0, 90.0, 90.0)
    assert day.order_id not in c.open and not any(f.order_id == day.order_id for f in again.fills())
    assert c.status()["orders"] == 3 and c.status()["open_orders"] == 0
    again.ledger.close()


def test_backtest_order_never_fills_on_the_bar_that_decided_it(books):
    """decision_bar: an order decided on bar f may fill from bar f + 1 on, even if the
    exchange has not processed bar f when it arrives; fills are coalesced into the
    caller's account timer."""
    b = books(backtest=True)
    c = b.core
    c.decision_bar = 1  # decided on bar 1, before the exchange saw it
    _m, a = b.submit("AAA", "buy", 3, "limit", 200.0)
    b.bar("AAA", T0, 100.0, 101.0, 99.0, 100.0, fseq=1)
    assert not b.fills()  # crosses, but bar 1 is the bar that decided it
    c.decision_bar = 2
    _m, late = b.submit("AAA", "buy", 1)
    b.bar("AAA", T0 + MIN, 102.0, 103.0, 101.0, 102.0, fseq=2)
    assert [f.order_id for f in b.fills()] == [a.order_id]  # the bar-2 order waits for bar 3
    b.bar("AAA", T0 + 2 * MIN, 104.0, 105.0, 103.0, 104.0, fseq=3)
    assert [(f.order_id, f.price) for f in b.fills()] == [(a.order_id, 102.0), (late.order_id, 104.0)]
    assert not b.accounts() and c.marks_dirty  # no account update per fill in a backtest
    c.publish_marks()
    assert b.accounts()[-1].positions[0].qty == 4 and not c.marks_dirty
    assert c.eligible == {}  # closed orders leave nothing behind
    # a retry of a filled order, found by the ledger's unique index inside a group
    # transaction, is answered as a retry and costs the transaction nothing
    r = c.submit(SubmitOrder(cl_id="c1", symbol="AAA", side="buy", qty=3, order_type="limit", price=200.0))
    assert isinstance(r, OrderAck) and r.duplicate and r.order_id == a.order_id
    b.ledger.flush()
    import sqlite3
    db = sqlite3.connect(os.path.join(b.d, "ledger.sqlite"))
    assert db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 2  # committed, seen from another connection
    db.close()


def test_a_batch_of_bars_is_the_same_as_bar_by_bar(tmp_path):
    """on_bars (the actor kernel's: one mark per symbol and batch where no order is open)
    gives the same fills, updates, marks and equity rows, float for float, as on_bar."""
    import itertools
    import random

    rng = random.Random(7)
    syms = ["AAA", "FUT"]
    bars, px = [], {"AAA": 100.0, "FUT": 4000.0}
    for i in range(3000):
        for sym in syms if i % 5 else syms[:1]:  # FUT skips some timestamps
            tick = 0.01 if sym == "AAA" else 0.25
            c = round(round(px[sym] * (1 + rng.gauss(0, 0.002)) / tick) * tick, 2)
            o = round(round(px[sym] / tick) * tick, 2)
            bars.append(Bar(symbol=sym, ts=T0 + i * MIN, open=o, high=max(o, c) + tick, low=min(o, c) - tick, close=c,
                            fseq=len(bars) + 1))
            px[sym] = c
    runs = []
    for name, batched in (("one", False), ("batch", True)):
        d = tmp_path / name
        d.mkdir()
        clock = itertools.count(1)
        b = Books(d, backtest=True, now_ns=lambda: next(clock), commission_pct=0.001)
        r = random.Random(3)
        i = 0
        while i < len(bars):
            n = r.randint(1, 40)
            chunk = bars[i:i + n]
            if batched:
                b.core.on_bars(chunk)
            else:
                for bar in chunk:
                    b.core.on_bar(bar)
            i += n
            b.core.decision_bar = chunk[-1].fseq
            sym = r.choice(syms)
            kind = r.choice(["market", "limit", "limit", "stop"])
            side = r.choice(["buy", "sell"])
            price = None
            if kind != "market":
                tick = 0.01 if sym == "AAA" else 0.25
                away = r.uniform(0.995, 1.005)
                price = round(round(b.core.last_px[sym] * away / tick) * tick, 2)
            b.submit(sym, side, r.choice([1, 2, 5]), kind, price, r.choice(["GTC", "DAY", "IOC"]))
        runs.append((b.events, [tuple(x.tolist()) for blk in b.core.series.blocks() for x in blk],
                     b.core.n_prices, dict(b.core.last_px), b.core.acct.equity, b.core.marks_dirty))
        b.core.series.close()
        b.ledger.close()
    one, batch = runs
    assert sum(isinstance(e, Fill) for e in one[0]) > 50  # it traded, at several symbols and prices
    assert one == batch

"""The paper exchange as a real process: the test plays market-data and the strategy.

market-data side: a ROUTER on "md.ref" answering the instrument request, a PUB on
"md" publishing bars. Strategy side: a DEALER on "orders", a SUB on "exec".
"""

import csv
import json
import os
import signal
import sqlite3
import time

import msgspec
import pytest
import zmq

import config as config_mod
from bus.codec import Stamper
from bus.messages import (
    AccountUpdate, Bar, CancelAll, CancelOrder, CancelReply, Command, CommandReply, EndOfData, Fill, Flatten,
    Instrument, InstrumentsReply, InstrumentsRequest, OrderAck, OrderReject, OrdersError, OrderUpdate, Query,
    QueryReply, Ready, Stopped, SubmitOrder, Tick,
)
from bus.sockets import open_port, topic_for
from tests.harness import FakeSupervisor, actor_cmd, read_log, wait_for

pytestmark = pytest.mark.timeout(60)

NAME = "paper-exchange"
INSTRUMENTS = [
    Instrument(symbol="AAA", kind="equity", tick_size=0.01),
    Instrument(symbol="LOT", kind="equity", tick_size=0.01, lot_size=100),
    Instrument(symbol="FUT", kind="future", tick_size=0.25, multiplier=50.0),
    Instrument(symbol="SYNC", kind="equity", tick_size=0.01),
]
T0 = 1_700_000_000 * 10**9  # a market timestamp (2023-11-14 UTC)
MIN = 60 * 10**9


def make_cfg(**exchange):
    cfg = config_mod.load()
    # Generous orphan guard: the test pumps heartbeats only while it waits.
    sup = msgspec.structs.replace(cfg.supervisor, heartbeat_ms=500, heartbeat_misses=40)
    ex = msgspec.structs.replace(cfg.exchange, **exchange)
    # Market data on its own clock (T0 is 2023), as a replay is: fills keep the bar's time.
    md = msgspec.structs.replace(cfg.market_data, feed="replay")
    return msgspec.structs.replace(cfg, supervisor=sup, exchange=ex, market_data=md)


class Env:
    """Fake supervisor + fake market-data + fake strategy around one exchange process."""

    def __init__(self, procs, run_dir, cfg):
        self.procs = procs
        self.cfg = cfg
        self.sup = FakeSupervisor(run_dir, cfg)
        self.cfg_path = self.sup.write_config()
        ctx, ep = self.sup.ctx, self.sup.endpoints
        self.md_stamp = Stamper("market-data", "test-run")
        self.ref = open_port(ctx, ep, "md.ref", bind=True, stamper=self.md_stamp)
        self.pub = open_port(ctx, ep, "md", bind=True, stamper=self.md_stamp)
        self.st_stamp = Stamper("strategy", "test-run")
        self.dealer = None
        self.sub = None
        self.proc = None
        self.fills: list[Fill] = []
        self.updates: list[OrderUpdate] = []
        self.accounts: list[AccountUpdate] = []
        self.n = 0
        self.cmd_id = 0

    # -------------------------------------------------------------- process
    def start(self):
        self.proc = self.procs.spawn(actor_cmd("actors.exchange", self.sup.run_dir, self.cfg_path, name=NAME))
        # Answer the one instrument request the exchange makes in init (after our Init).
        wait_for(lambda: self.sup.pump(0.01) is not None and self.ref.sock.poll(0), 15,
                 "the exchange to ask for instruments")
        r = self.ref.recv()
        assert isinstance(r.msg, InstrumentsRequest)
        self.ref.send(InstrumentsReply(instruments=INSTRUMENTS), to=r.ident, delim=r.delim)
        self.sup.events.clear()
        ready = self.sup.wait_msg(NAME, Ready, 15)
        self.sup.run(NAME)
        for p in (self.dealer, self.sub):
            if p is not None:
                p.close()
        self.dealer = open_port(self.sup.ctx, self.sup.endpoints, "orders", bind=False, stamper=self.st_stamp)
        self.sub = open_port(self.sup.ctx, self.sup.endpoints, "exec", bind=False, stamper=self.st_stamp,
                             subscribe=[b""])
        self.sync()
        return ready

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self):
        self.sup.events.clear()
        self.sup.stop(NAME)
        self.sup.wait_msg(NAME, Stopped, 10)
        assert self.proc.wait(10) == 0

    def command(self, cmd, **args):
        self.cmd_id += 1
        self.sup.events.clear()
        self.sup.send(NAME, Command(id=self.cmd_id, cmd=cmd, args=args))
        rep = self.sup.wait_msg(NAME, CommandReply, 10)
        assert rep.id == self.cmd_id
        return rep

    def close(self):
        for p in (self.dealer, self.sub, self.ref, self.pub):
            if p is not None:
                p.close()
        self.sup.close()

    # -------------------------------------------------------------- strategy
    def request(self, msg, timeout=10.0):
        self.dealer.send(msg)
        return self.reply(timeout)

    def reply(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sup.pump(0)  # keep heartbeats flowing
            if self.dealer.sock.poll(20):
                return self.dealer.recv().msg
        raise AssertionError("no reply from the exchange")

    def submit(self, symbol="AAA", side="buy", qty=1, order_type="market", price=None, tif="GTC", cl_id=None):
        self.n += 1
        m = SubmitOrder(cl_id=cl_id or f"c{self.n}", symbol=symbol, side=side, qty=qty, order_type=order_type,
                        price=price, tif=tif)
        return m, self.request(m)

    def query(self) -> QueryReply:
        r = self.request(Query())
        assert isinstance(r, QueryReply)
        return r

    def drain_exec(self, timeout=0.0):
        """Collect published messages; wait up to ``timeout`` for the first one."""
        got = 0
        t = int(timeout * 1000)
        while self.sub.sock.poll(t):
            r = self.sub.recv()
            m = r.msg
            if isinstance(m, Fill):
                assert r.topic == topic_for("exec.fill", m.symbol)
                self.fills.append(m)
            elif isinstance(m, OrderUpdate):
                assert r.topic == topic_for("exec.order", m.order.symbol)
                self.updates.append(m)
            elif isinstance(m, AccountUpdate):
                assert r.topic == b"acct.update"
                self.accounts.append(m)
            got += 1
            t = 0
        return got

    def wait_exec(self, pred, timeout=10.0, what="exec message"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sup.pump(0)
            self.drain_exec(0.02)
            v = pred()
            if v:
                return v
        raise AssertionError(f"timed out waiting for {what}")

    # ---------------------------------------------------------- market data
    def bar(self, symbol, ts, o, h, l, c):
        self.pub.send(Bar(symbol=symbol, ts=ts, open=o, high=h, low=l, close=c), topic=topic_for("md.bar", symbol))

    def sync(self):
        """Defeat the PUB/SUB slow joiner in both directions: submit an IOC limit that cannot fill
        and publish a SYNC bar until its cancellation is seen on exec. After that, every bar we
        publish reaches the exchange, in order, and every exec message reaches us."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m, ack = self.submit("SYNC", "buy", 1, "limit", 1.0, "IOC")
            assert isinstance(ack, OrderAck), ack
            for _ in range(10):
                self.bar("SYNC", T0, 100.0, 100.0, 100.0, 100.0)
                if self.drain_exec(0.02) and any(u.order.cl_id == m.cl_id and u.order.status == "cancelled"
                                                 for u in self.updates):
                    self.updates.clear()
                    self.accounts.clear()
                    return
        raise AssertionError("market data / exec streams never connected")


@pytest.fixture
def env(procs, run_dir):
    envs = []

    def make(**exchange):
        e = Env(procs, run_dir, make_cfg(**exchange))
        envs.append(e)
        return e

    yield make
    for e in envs:
        try:
            if e.proc is not None and e.proc.poll() is None:
                e.stop()  # a clean stop: final export, run row closed, exit 0
            log = [json.loads(x) for x in read_log(run_dir, NAME).splitlines()]
            assert log and not [x for x in log if x["level"] in ("error", "critical")]
        finally:
            e.close()


def pos(q: QueryReply, sym):
    return next((p.qty for p in q.positions if p.symbol == sym), 0)


# ======================================================================== tests
def test_every_reject_reason_and_idempotent_retry(env):
    e = env(max_position=1000, max_order_notional=1_000_000.0, max_open_orders=3)
    e.start()

    def rejected(code, **kw):
        _m, r = e.submit(**kw)
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
        m, r = e.submit("AAA", "buy", 100, "limit", 50.0 + i)
        assert isinstance(r, OrderAck) and not r.duplicate
        oks.append((m, r))
    rejected("risk-limit", symbol="AAA", qty=1, order_type="limit", price=40.0)  # max_open_orders
    # worst-case position: 300 resting buys + 701 > 1000
    e.request(CancelOrder(cl_id=oks[2][0].cl_id))
    rejected("risk-limit", symbol="AAA", qty=801)

    # idempotent retry: same cl_id and terms -> the original ack, no second order
    m0, a0 = oks[0]
    r = e.request(m0)
    assert isinstance(r, OrderAck) and r.duplicate and r.order_id == a0.order_id
    r = e.request(msgspec.structs.replace(m0, qty=5))
    assert isinstance(r, OrderReject) and r.code == "duplicate-client-order-id"
    assert len(e.query().orders) == 2

    # paused: new orders rejected, cancels accepted
    assert e.command("pause").data["paused"] is True
    rejected("paused", symbol="AAA")
    r = e.request(CancelOrder(cl_id=oks[1][0].cl_id))
    assert isinstance(r, CancelReply) and r.cancelled == [oks[1][1].order_id]
    assert e.query().paused
    assert e.command("resume").ok
    _m, r = e.submit("AAA", "sell", 1, "limit", 60.0)
    assert isinstance(r, OrderAck)

    # halt: every open order cancelled, new orders rejected "halted", retries still answered
    rep = e.command("halt")
    assert rep.ok and len(rep.data["cancelled"]) == 2
    q = e.query()
    assert q.halted and q.orders == []
    rejected("halted", symbol="AAA")
    assert e.request(m0).duplicate
    r = e.request(CancelOrder(cl_id="never-sent"))
    assert isinstance(r, OrderReject) and r.code == "unknown-order"
    assert not e.command("bogus").ok
    e.wait_exec(lambda: sum(u.order.status == "cancelled" for u in e.updates) >= 3, what="cancel updates")
    assert not e.fills


def test_bad_requests_get_an_error_and_change_nothing(env):
    e = env()
    e.start()
    _m, a = e.submit("AAA", "buy", 10, "limit", 50.0)
    before = e.query()
    bad_payloads = [
        b"\x00garbage\xff",
        e.st_stamp.encode("orders", SubmitOrder(cl_id="n1", symbol="AAA", side="buy", qty=1, order_type="limit",
                                                price=float("nan"))),
        e.st_stamp.encode("orders", SubmitOrder(cl_id="n2", symbol="AAA", side="buy", qty=1, order_type="limit",
                                                price=float("inf"))),
        e.st_stamp.encode("orders", SubmitOrder(cl_id="n3", symbol="AAA", side="buy", qty=0, order_type="market")),
        e.st_stamp.encode("orders", SubmitOrder(cl_id="n4", symbol="AAA", side="buy", qty=-5, order_type="market")),
        e.st_stamp.encode("orders", SubmitOrder(cl_id="n5", symbol="AAA", side="buy", qty="1",  # wrong type
                                                order_type="market")),
        e.st_stamp.encode("md", Bar(symbol="AAA", ts=T0, open=1.0, high=1.0, low=1.0, close=1.0)),  # wrong channel
    ]
    for raw in bad_payloads:
        e.dealer.send_raw(raw)
        r = e.reply()
        assert isinstance(r, OrdersError) and r.code == "bad-request" and r.text, r
    # a REQ client (empty delimiter frame) gets its error too
    req = open_port(e.sup.ctx, e.sup.endpoints, "orders", bind=False, stamper=e.st_stamp, sock_type=zmq.REQ)
    req.send_raw(b"not msgpack at all")
    assert req.sock.poll(10_000)
    assert isinstance(req.recv().msg, OrdersError)
    req.close()
    after = e.query()
    assert after == before
    r = e.request(Query())
    assert [o.order_id for o in r.orders] == [a.order_id]
    r = e.request(CancelAll(symbol="FUT"))
    assert isinstance(r, CancelReply) and r.cancelled == []
    r = e.request(CancelAll())
    assert isinstance(r, CancelReply) and r.cancelled == [a.order_id]
    assert e.query().orders == []


def test_market_limit_stop_fills_commission_slippage_and_export(env, run_dir):
    e = env(commission_pct=0.001, commission_per_unit=0.01, commission_min=1.0, slippage_bps=10.0,
            export_every_ms=0)
    e.start()
    # market buy 10 AAA: fills at the NEXT bar's open (100), slipped 10 bps -> 100.10
    _m, a = e.submit("AAA", "buy", 10)
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)
    f = e.wait_exec(lambda: e.fills and e.fills[-1], what="market fill")
    assert (f.order_id, f.qty, f.price, f.ts, f.position) == (a.order_id, 10, 100.10, T0, 10)
    assert f.fee == pytest.approx(max(1.0, 0.001 * 10 * 100.10 + 0.01 * 10))  # 1.1011
    # resting orders: buy limit 98 (crossed by low 97.5 -> 98), sell limit 103 (gap up to open 104 -> 104),
    # sell stop 95 (not touched), buy stop on FUT 4000 (high 4001 -> 4000, slipped to 4004.00)
    _m, bl = e.submit("AAA", "buy", 5, "limit", 98.0)
    _m, ss = e.submit("AAA", "sell", 5, "stop", 95.0)
    _m, bs = e.submit("FUT", "buy", 2, "stop", 4000.0)
    e.bar("AAA", T0 + MIN, 99.0, 99.5, 97.5, 98.5)
    e.bar("FUT", T0 + MIN, 3999.0, 4001.0, 3998.0, 4000.5)
    e.wait_exec(lambda: len(e.fills) >= 3, what="limit and stop fills")
    by = {x.order_id: x for x in e.fills}
    assert by[bl.order_id].price == 98.0 and by[bl.order_id].position == 15
    assert by[bs.order_id].price == 4004.0 and by[bs.order_id].position == 2
    assert by[bs.order_id].fee == pytest.approx(0.001 * 2 * 4004.0 * 50 + 0.02)
    assert ss.order_id not in by
    _m, sl = e.submit("AAA", "sell", 15, "limit", 103.0)
    e.bar("AAA", T0 + 2 * MIN, 104.0, 105.0, 103.5, 104.5)
    f = e.wait_exec(lambda: len(e.fills) >= 4 and e.fills[-1], what="gap fill")
    assert f.order_id == sl.order_id and f.price == 104.0 and f.position == 0
    # realized on the close: 15 * (104 - avg(10 @ 100.10, 5 @ 98)) = 15 * (104 - 99.4)
    assert f.realized == pytest.approx(15 * (104.0 - (10 * 100.10 + 5 * 98.0) / 15))
    # sell stop 95 gapped through: open 94 -> 94, slipped down to 93.90 (position goes short 5)
    e.bar("AAA", T0 + 3 * MIN, 94.0, 94.5, 93.0, 94.2)
    f = e.wait_exec(lambda: len(e.fills) >= 5 and e.fills[-1], what="stop gap fill")
    assert f.order_id == ss.order_id and f.price == 93.9 and f.position == -5
    # a tick fills a market order at the tick price
    _m, tk = e.submit("AAA", "buy", 5)
    e.pub.send(Tick(symbol="AAA", ts=T0 + 4 * MIN, price=94.5), topic=topic_for("md.tick", "AAA"))
    f = e.wait_exec(lambda: len(e.fills) >= 6 and e.fills[-1], what="tick fill")
    assert f.order_id == tk.order_id and f.price == pytest.approx(94.6) and f.position == 0

    q = e.query()
    acct = q.account
    fees = sum(x.fee for x in e.fills)
    assert acct.fees == pytest.approx(fees)
    assert acct.equity == pytest.approx(acct.cash + sum(p.qty * p.mark * (50.0 if p.symbol == "FUT" else 1.0)
                                                        for p in q.positions))
    assert acct.equity == pytest.approx(acct.initial_cash + acct.realized + acct.unrealized - acct.fees)
    # every fill is followed by an account update carrying it
    e.wait_exec(lambda: e.accounts and e.accounts[-1].account.fees == pytest.approx(fees), what="account update")
    # exports: written on every fill here (export_every_ms = 0) and on stop
    e.stop()
    with open(os.path.join(run_dir, "fills.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["fill_id"]) for r in rows] == [x.fill_id for x in e.fills]
    with open(os.path.join(run_dir, "trades.csv")) as fh:
        trades = list(csv.DictReader(fh))
    assert [(t["symbol"], t["side"], int(t["qty"])) for t in trades] == [("AAA", "long", 15), ("AAA", "short", 5)]
    assert sum(float(t["pnl"]) for t in trades) == pytest.approx(
        sum(x.realized for x in e.fills))
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]


def test_fill_on_close_ioc_day_and_flatten(env):
    e = env(fill_on="close")
    e.start()
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)
    # sync on a limit that fills, so we know the bar above was processed before the market order
    _m, lim = e.submit("AAA", "buy", 1, "limit", 200.0)
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)
    e.wait_exec(lambda: e.fills, what="sync fill")
    _m, a = e.submit("AAA", "buy", 4)  # fills at once at the last close
    f = e.wait_exec(lambda: len(e.fills) >= 2 and e.fills[-1], what="close fill")
    assert f.order_id == a.order_id and f.price == 100.5 and f.position == 5
    # IOC that does not cross is cancelled on the next bar; DAY expires on the next UTC day
    _m, ioc = e.submit("AAA", "buy", 1, "limit", 90.0, "IOC")
    _m, day = e.submit("AAA", "buy", 1, "limit", 90.0, "DAY")
    _m, gtc = e.submit("AAA", "buy", 1, "limit", 90.0, "GTC")
    e.bar("AAA", T0 + MIN, 100.0, 101.0, 99.0, 100.0)
    e.wait_exec(lambda: any(u.order.order_id == ioc.order_id and u.order.status == "cancelled" for u in e.updates),
                what="ioc cancel")
    assert {o.order_id for o in e.query().orders} == {day.order_id, gtc.order_id}
    e.bar("AAA", T0 + 86_400 * 10**9, 89.0, 89.0, 88.0, 88.5)  # next day, gaps through 90
    e.wait_exec(lambda: any(x.order_id == gtc.order_id for x in e.fills), what="gtc fill")
    # the expiry is published before the fills of the same bar
    assert any(u.order.order_id == day.order_id and u.order.status == "expired" for u in e.updates)
    assert not any(x.order_id == day.order_id for x in e.fills)
    # DAY orders expire at end of data as well
    _m, day2 = e.submit("AAA", "sell", 1, "limit", 500.0, "DAY")
    e.pub.send(EndOfData(feed="test", count=5), topic=b"md.eod")
    e.wait_exec(lambda: any(u.order.order_id == day2.order_id and u.order.status == "expired" for u in e.updates),
                what="eod expiry")
    # flatten: a resting order is cancelled, the position closed at market (at once in close mode)
    _m, rest = e.submit("AAA", "buy", 1, "limit", 50.0)
    assert e.query().positions and pos(e.query(), "AAA") == 6
    r = e.request(Flatten())
    assert isinstance(r, CancelReply) and r.cancelled == [rest.order_id]
    e.wait_exec(lambda: pos_after(e) == 0, what="flatten fill")
    assert pos(e.query(), "AAA") == 0 and e.query().orders == []


def pos_after(e):
    return e.fills[-1].position if e.fills else None


def test_crash_recovery_and_open_orders_survive_restart(env, run_dir):
    e = env(export_every_ms=200)
    e.start()
    # resting orders that must survive the crash
    _m, keep = e.submit("AAA", "buy", 3, "limit", 10.0)
    _m, gone = e.submit("AAA", "sell", 2, "limit", 500.0)
    # a stream of market orders; one bar fills all of them, one ledger transaction each
    sent = []
    for i in range(300):
        m, a = e.submit("FUT" if i % 3 == 0 else "AAA", "buy" if i % 2 else "sell", 1 + i % 7)
        assert isinstance(a, OrderAck)
        sent.append(m)
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.0)
    e.bar("FUT", T0, 4000.0, 4000.0, 4000.0, 4000.0)
    e.wait_exec(lambda: len(e.fills) >= 10, what="the first fills")
    e.kill()  # SIGKILL while the exchange is in the middle of the stream
    while e.drain_exec(0.2):  # whatever was published before the kill
        pass
    published = list(e.fills)
    assert published

    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    ledger_fills = {r[0]: r for r in db.execute("SELECT fill_id, symbol, side, qty, price FROM fills")}
    db.close()
    for f in published:  # every published fill is in the ledger, unchanged
        assert ledger_fills[f.fill_id][1:] == (f.symbol, f.side, f.qty, f.price)

    e.fills.clear()
    e.start()
    q = e.query()
    for sym in ("AAA", "FUT"):
        expected = sum((q_ if s == "buy" else -q_) for _id, s_, s, q_, _p in ledger_fills.values() if s_ == sym)
        assert pos(q, sym) == expected
    open_ids = {o.order_id for o in q.orders}
    assert {keep.order_id, gone.order_id} <= open_ids
    filled_orders = len(ledger_fills)
    assert len(open_ids) == 2 + 300 - filled_orders  # the rest of the stream is still pending
    # a retried submit from before the crash is recognised, never filled twice
    r = e.request(sent[0])
    assert isinstance(r, OrderAck) and r.duplicate
    # open orders can still be cancelled and still fill
    r = e.request(CancelOrder(cl_id=_cl(q, gone.order_id)))
    assert isinstance(r, CancelReply) and r.cancelled == [gone.order_id]
    e.bar("AAA", T0 + MIN, 9.0, 11.0, 9.0, 10.0)  # crosses the buy limit at 10 (gap -> open 9)
    e.bar("FUT", T0 + MIN, 4000.0, 4000.0, 4000.0, 4000.0)
    e.wait_exec(lambda: any(f.order_id == keep.order_id for f in e.fills), what="fill of the surviving order")
    e.wait_exec(lambda: len(e.query().orders) == 0, what="the whole stream filled")
    q = e.query()
    net = {"AAA": 3, "FUT": 0}
    for m in sent:
        net[m.symbol] += m.qty if m.side == "buy" else -m.qty
    assert pos(q, "AAA") == net["AAA"] and pos(q, "FUT") == net["FUT"]
    assert q.account.equity == pytest.approx(q.account.initial_cash + q.account.realized + q.account.unrealized
                                             - q.account.fees)
    e.stop()
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    assert db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 301
    assert db.execute("SELECT COUNT(DISTINCT order_id) FROM fills").fetchone()[0] == 301  # no order filled twice
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    runs = db.execute('SELECT run_id, "end" FROM runs ORDER BY id').fetchall()
    assert len(runs) == 2 and runs[0][1] is None and runs[1][1] is not None  # the killed run never ended
    db.close()


def _cl(q, order_id):
    return next(o.cl_id for o in q.orders if o.order_id == order_id)


def test_trading_state_is_published_persisted_and_only_unhalt_lifts_a_halt(env):
    """The exchange owns paused/halted/flattening: each change goes out at once on an
    AccountUpdate (and in every QueryReply), and a halt is lifted only by an explicit
    unhalt, which leaves trading paused."""
    e = env()
    e.start()
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.0)
    _m, a = e.submit("AAA", "buy", 5)
    e.bar("AAA", T0 + MIN, 100.0, 101.0, 99.0, 100.0)
    e.wait_exec(lambda: e.fills, what="a position")
    _m, rest = e.submit("AAA", "buy", 1, "limit", 50.0)  # rests

    def flags():
        return [(x.paused, x.halted, x.flattening) for x in e.accounts]

    # stop-and-close: paused at once (published), its flatten order shows as flattening until it fills
    rep = e.command("stop-and-close")
    assert rep.ok and rep.data["paused"] is True and rep.data["cancelled"] == [rest.order_id]
    e.wait_exec(lambda: (True, False, True) in flags(), what="paused and flattening published")
    q = e.query()
    assert (q.paused, q.halted, q.flattening) == (True, False, True)
    # the exchange's own flatten order survives a cancel-all (what a disabled strategy gets)
    _m, r = e.submit("AAA", "buy", 1, "limit", 50.0)
    assert isinstance(r, OrderReject) and r.code == "paused"
    rep = e.command("cancel-all", reason="strategy disabled")
    assert rep.ok and rep.data["cancelled"] == [] and e.query().flattening
    assert not e.command("cancel-all", reason=7).ok  # bad input: an error, nothing changed
    e.bar("AAA", T0 + 2 * MIN, 100.0, 101.0, 99.0, 100.0)
    e.wait_exec(lambda: flags()[-1] == (True, False, False), what="flattening over")
    assert pos(e.query(), "AAA") == 0

    # halt (persisted in the ledger: tests/test_system.py restarts through it); resume refused while halted
    assert e.command("halt").ok
    e.wait_exec(lambda: flags()[-1] == (True, True, False), what="halted published")
    rep = e.command("resume")
    assert not rep.ok and rep.error == ("trading is halted (kill switch): resume does not lift a halt; "
                                        "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
    q = e.query()
    assert (q.paused, q.halted) == (True, True)
    _m, r = e.submit("AAA", "buy", 1)
    assert isinstance(r, OrderReject) and r.code == "halted"
    # unhalt lifts the kill switch only: still paused until resume
    rep = e.command("unhalt")
    assert rep.ok and rep.data == {"halted": False, "paused": True,
                                   "message": "halt lifted; trading stays paused until `ctl resume`"}
    e.wait_exec(lambda: flags() and flags()[-1] == (True, False, False), what="unhalt published")
    assert any(x["event"].startswith("halt lifted") and x["level"] == "warning"
               for x in map(json.loads, read_log(e.sup.run_dir, NAME).splitlines()))
    rep = e.command("unhalt")
    assert not rep.ok and rep.error == "trading is not halted: there is no halt to lift"
    _m, r = e.submit("AAA", "buy", 1)
    assert isinstance(r, OrderReject) and r.code == "paused"
    assert e.command("resume").ok
    e.wait_exec(lambda: flags()[-1] == (False, False, False), what="resume published")
    _m, r = e.submit("AAA", "buy", 1)
    assert isinstance(r, OrderAck)

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
    FeedStatus, QueryReply, Quote, Ready, Stopped, SubmitOrder, Tick,
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
    Instrument(symbol="BTC/USDT", kind="crypto", tick_size=0.01, lot_size=0.001, currency="USDT"),
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
# The rules themselves (risk, matching, flags...) are tested on the core alone in
# tests/test_exchange_core.py; these prove the actor's wiring around it.

def test_requests_and_commands_reach_the_core_and_answers_come_back(env):
    e = env(max_position=1000)
    e.start()
    _m, r = e.submit(symbol="ZZZ")
    assert isinstance(r, OrderReject) and r.code == "unknown-instrument"
    m0, a0 = e.submit("AAA", "buy", 100, "limit", 50.0)
    assert isinstance(a0, OrderAck) and not a0.duplicate
    r = e.request(m0)
    assert isinstance(r, OrderAck) and r.duplicate and r.order_id == a0.order_id
    # a command over the lifecycle channel; a refusal comes back as an error reply with the core's words
    assert e.command("pause").data["paused"] is True
    _m, r = e.submit("AAA")
    assert isinstance(r, OrderReject) and r.code == "paused"
    rep = e.command("halt")
    assert rep.ok and rep.data["cancelled"] == [a0.order_id]
    rep = e.command("resume")
    assert not rep.ok and rep.error == ("trading is halted (kill switch): resume does not lift a halt; "
                                        "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
    assert not e.command("bogus").ok
    q = e.query()
    assert (q.paused, q.halted, q.orders) == (True, True, [])
    # the flags went out on exec as soon as they changed
    e.wait_exec(lambda: [(x.paused, x.halted) for x in e.accounts][-2:] == [(True, False), (True, True)],
                what="flags published")
    r = e.request(CancelOrder(cl_id="never-sent"))
    assert isinstance(r, OrderReject) and r.code == "unknown-order"
    assert e.command("unhalt").ok and e.command("resume").ok
    r = e.request(Flatten())
    assert isinstance(r, CancelReply) and r.cancelled == []


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


def test_fills_updates_and_accounts_are_published_on_their_topics_and_exported(env, run_dir):
    e = env(commission_pct=0.001, export_every_ms=0)
    e.start()
    _m, a = e.submit("AAA", "buy", 10)
    e.bar("AAA", T0, 100.0, 101.0, 99.0, 100.5)  # the market order fills at this bar's open
    f = e.wait_exec(lambda: e.fills and e.fills[-1], what="market fill")  # drain_exec checks each topic
    assert (f.order_id, f.qty, f.price, f.ts, f.position) == (a.order_id, 10, 100.0, T0, 10)
    e.wait_exec(lambda: e.accounts and e.accounts[-1].account.fees == pytest.approx(f.fee), what="account update")
    assert [u.order.status for u in e.updates if u.order.order_id == a.order_id] == ["new", "filled"]
    # a tick on md.tick fills too; end of data on md.eod expires a DAY order
    _m, t = e.submit("AAA", "sell", 10)
    e.pub.send(Tick(symbol="AAA", ts=T0 + MIN, price=101.0), topic=topic_for("md.tick", "AAA"))
    e.wait_exec(lambda: len(e.fills) >= 2, what="tick fill")
    _m, day = e.submit("AAA", "sell", 1, "limit", 500.0, "DAY")
    e.pub.send(EndOfData(feed="test", count=2), topic=b"md.eod")
    e.wait_exec(lambda: any(u.order.order_id == day.order_id and u.order.status == "expired" for u in e.updates),
                what="eod expiry")
    e.stop()  # an ordered stop exports (here also on every fill) and closes the run
    with open(os.path.join(run_dir, "fills.csv")) as fh:
        assert [int(r["fill_id"]) for r in csv.DictReader(fh)] == [x.fill_id for x in e.fills]
    with open(os.path.join(run_dir, "trades.csv")) as fh:
        assert [(t["side"], int(t["qty"])) for t in csv.DictReader(fh)] == [("long", 10)]
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    assert db.execute('SELECT "end" IS NOT NULL FROM runs').fetchall() == [(1,)]
    db.close()


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


def test_quotes_and_feed_status_on_md_reach_the_fill_model(env):
    """md.quote.<SYM> fills a market buy at the ask, a fractional quantity; md.status stale
    stops fills (the order is still accepted) until the feed is ok and a fresh quote comes."""
    e = env()
    e.start()
    q = lambda bid, ask, ts: e.pub.send(Quote(symbol="BTC/USDT", ts=ts, bid=bid, ask=ask),  # noqa: E731
                                        topic=topic_for("md.quote", "BTC/USDT"))
    q(30_000.0, 30_001.0, T0)
    _m, ack = e.submit("BTC/USDT", "buy", 0.015)
    assert isinstance(ack, OrderAck), ack
    q(30_010.0, 30_012.5, T0 + MIN)
    f = e.wait_exec(lambda: e.fills, what="the fill on the quote")[0]
    assert (f.qty, f.price, f.position) == (0.015, 30_012.5, 0.015)
    e.pub.send(FeedStatus(feed="ccxt:test", state="stale", detail="no data"), topic=b"md.status")
    # The status and the next order reach the exchange in this order only if the
    # status went out first: wait until the exchange logged it.
    wait_for(lambda: e.sup.pump(0) is not None and "feed state" in read_log(e.sup.run_dir, NAME), 10,
             "the exchange to see the stale feed")
    _m, ack = e.submit("BTC/USDT", "sell", 0.005)
    assert isinstance(ack, OrderAck), ack  # accepted while stale
    q(30_020.0, 30_021.0, T0 + 2 * MIN)
    e.pub.send(FeedStatus(feed="ccxt:test", state="ok"), topic=b"md.status")
    q(30_030.0, 30_031.0, T0 + 3 * MIN)
    f2 = e.wait_exec(lambda: e.fills[1:], what="the fill after recovery")[0]
    assert (f2.side, f2.price, f2.position) == ("sell", 30_030.0, 0.01)  # the fresh bid, not the stale one
    pos = next(p for p in e.query().positions if p.symbol == "BTC/USDT")
    assert pos.qty == 0.01 and pos.mark == 30_030.5
    e.stop()

"""Strategy plugins (pure unit tests) and the strategy actor against a fake exchange and market-data
played by the test with real sockets."""

import subprocess
import time

import pytest
import zmq

import config as config_mod
from actors.strategies.base import Context, Strategy
from actors.strategies.sma_cross import SmaCross
from actors.strategies.zscore import ZScoreReversion
from actors.strategy_host import PluginError, load_plugin
from bus.codec import ProtocolError, Stamper
from bus.messages import (
    Bar, Command, CommandReply, Fill, Heartbeat, HistoryReply, HistoryRequest, InitFailed, Instrument,
    InstrumentsReply, InstrumentsRequest, OrderAck, OrderInfo, OrderUpdate, PositionInfo, Query, QueryReply, Ready,
    Stopped, SubmitOrder,
)
from bus.sockets import open_port, topic_for
from tests.harness import FakeSupervisor, actor_cmd

pytestmark = pytest.mark.timeout(40)

GOOG = Instrument(symbol="GOOG", kind="equity", tick_size=0.01)
# Hand-checked SmaCross(fast=2, slow=3) on these closes (bar numbers from 1), with
# backtrader's rule (nzd = last non-zero SMA2 - SMA3, seeded on bar 3 even if zero):
#  bar 3: SMA2 10.0  SMA3 10.00  (seed nzd 0)        bar 4: 9.5 vs 9.67  (nzd 0: no cross)
#  bar 5: 8.5 vs 9.00   bar 6: 8.5 vs 8.67           bar 7: 10.0 vs 9.33 -> UP-cross  (target +qty)
#  bar 8: 11.5 vs 10.67 bar 9: 11.0 vs 11.00 (tie: nzd stays +0.83)
#  bar 10: 9.0 vs 10.0 -> DOWN-cross through the tie (target -qty)
#  bar 11: 7.5 vs 8.33  bar 12: 9.5 vs 9.00 -> UP-cross (target +qty)
#  bar 13: 9.0 vs 8.33  bar 14: 4.5 vs 7.00 -> DOWN-cross (target -qty, or 0 when long_only)
CLOSES = [10, 10, 10, 9, 8, 9, 11, 12, 10, 8, 7, 12, 6, 3, 20]
BAR_NS = 60 * 10**9


def bar(i, close, fseq=None):
    c = float(close)
    return Bar(symbol="GOOG", ts=i * BAR_NS, open=c, high=c, low=c, close=c, volume=100,
               fseq=i + 1 if fseq is None else fseq)


def fill(cl_id, side, qty, position):
    return Fill(fill_id=1, order_id=1, cl_id=cl_id, symbol="GOOG", side=side, qty=qty, price=10.0,
                position=position)


# ----------------------------------------------------------------- unit tests
def run_plugin(strategy, closes, on_bar=None):
    sent = []
    ctx = Context([GOOG], send=sent.append, cl_prefix="t")
    strategy.bind(ctx)
    for i, c in enumerate(closes):
        strategy.on_bar(bar(i, c))
        if on_bar:
            on_bar(i + 1, ctx, sent)
    return ctx, sent


def test_sma_cross_hand_checked_signals_and_in_flight_accounting():
    log = []

    def after(n, ctx, sent):
        log.append((n, [(m.side, m.qty) for m in sent]))
        if n == 12:  # the bar-7 buy fills only now: bar 12's cross found it in flight and sent nothing
            ctx.apply_fill(fill(sent[0].cl_id, "buy", 5, 5))

    ctx, sent = run_plugin(SmaCross(fast=2, slow=3, qty=5), CLOSES[:14], after)
    changes = [(n, [x[-1]]) for (n, x), prev in zip(log, [(0, [])] + log) if x != prev[1]]
    # bar 7: +5; bar 10: -5 with the buy in flight -> sell 10; bar 12: +5 with +5-10 in flight -> buy 10;
    # bar 14: -5 with the bar-7 buy filled (+5) and -10+10 in flight -> sell 10
    assert changes == [(7, [("buy", 5)]), (10, [("sell", 10)]), (12, [("buy", 10)]), (14, [("sell", 10)])]
    assert all(isinstance(m, SubmitOrder) and m.order_type == "market" for m in sent)
    assert len({m.cl_id for m in sent}) == 4 and ctx.inflight("GOOG") == -10

    _, sent = run_plugin(SmaCross(fast=2, slow=3, qty=5, long_only=True), CLOSES[:14])
    # long at 7, flat at 10, long at 12, flat at 14 (nothing fills in this run)
    assert [(m.side, m.qty) for m in sent] == [("buy", 5), ("sell", 5), ("buy", 5), ("sell", 5)]


def test_sma_cross_signals_equal_backtrader_rule_on_ties():
    """The plugin's crosses are the reference crossovers() (proven equal to backtrader's
    CrossOver in test_bt_reference) on the crafted tie series and on GOOG."""
    from scripts import bt_reference as ref
    from tests.test_bt_reference import EDGE_CLOSES

    for closes, fast, slow in ((EDGE_CLOSES, 1, 2), ([b.close for b in ref.load_bars()], 10, 20)):
        expected = ref.crossovers(ref.sma(closes, fast), ref.sma(closes, slow))
        got = []

        class Probe(SmaCross):
            def target_position(self, symbol, qty):
                got[-1] = 1 if qty > 0 else -1

        p = Probe(fast=fast, slow=slow, qty=1)
        p.bind(Context([GOOG], send=lambda m: None, cl_prefix="t"))
        for i, c in enumerate(closes):
            got.append(0)
            p.on_bar(bar(i, c))
        assert got == expected and any(got)


def test_target_position_counts_fills_and_updates_in_either_order():
    sent = []
    ctx = Context([GOOG], send=sent.append, cl_prefix="t")
    a = ctx.target_position("GOOG", 10)
    assert ctx.target_position("GOOG", 10) is None and len(sent) == 1
    # The order update ("filled") arrives before its fill: still in flight until the fill is applied.
    ctx.apply_update(OrderUpdate(order=OrderInfo(order_id=1, cl_id=a, symbol="GOOG", side="buy", qty=10,
                                                 filled=10, status="filled")))
    assert ctx.target_position("GOOG", 10) is None
    ctx.apply_fill(fill(a, "buy", 10, 10))
    assert ctx.orders == {} and ctx.position("GOOG") == 10 and ctx.target_position("GOOG", 10) is None
    b = ctx.target_position("GOOG", 4)
    assert (sent[-1].side, sent[-1].qty) == ("sell", 6)
    # Partly filled then cancelled: only the filled part counts.
    ctx.apply_fill(fill(b, "sell", 2, 8))
    ctx.apply_update(OrderUpdate(order=OrderInfo(order_id=2, cl_id=b, symbol="GOOG", side="sell", qty=6,
                                                 filled=2, status="cancelled")))
    assert ctx.orders == {}
    ctx.target_position("GOOG", 4)
    assert (sent[-1].side, sent[-1].qty) == ("sell", 4)
    with pytest.raises(ValueError, match="unknown instrument"):
        ctx.submit("MSFT", "buy", 1, "market")


def test_zscore_reversion_example():
    def after(n, ctx, sent):
        if n == 3:
            ctx.apply_fill(fill(sent[0].cl_id, "sell", 10, -10))

    # 10 10 13: z = 1.41 > 1.2 -> sell 10; then 11: window 10 13 11, z = -0.27, |z| < 0.5 -> back to 0.
    _, sent = run_plugin(ZScoreReversion(window=3, entry_z=1.2, exit_z=0.5, qty=10), [10, 10, 13, 11], after)
    assert [(m.side, m.qty) for m in sent] == [("sell", 10), ("buy", 10)]


class NotAStrategy:
    pass


@pytest.mark.parametrize("spec,params,needle", [
    ("actors.strategies.nope:X", {}, "cannot import module 'actors.strategies.nope'"),
    ("actors.strategies.sma_cross:Nope", {}, "has no class 'Nope'"),
    ("actors.strategies.sma_cross", {}, "expected 'package.module:Class'"),
    ("tests.test_strategy:NotAStrategy", {}, "not a subclass"),
    ("actors.strategies.sma_cross:SmaCross", {"fast": 2, "slow": 3}, "missing 1 required"),
    ("actors.strategies.sma_cross:SmaCross", {"fast": 2, "slow": 3, "qty": 1, "speed": 9}, "unexpected keyword"),
    ("actors.strategies.sma_cross:SmaCross", {"fast": 5, "slow": 3, "qty": 1}, "fast (5) must be shorter"),
    ("actors.strategies.zscore:ZScoreReversion", {"window": 3, "entry_z": 1, "exit_z": 2, "qty": 1}, "exit_z"),
])
def test_plugin_loading_errors(spec, params, needle):
    with pytest.raises(PluginError) as ei:
        load_plugin(spec, params)
    msg = str(ei.value)
    assert msg.startswith(f"strategy plugin {spec!r}") and needle in msg, msg


def test_plugin_loads():
    s = load_plugin("actors.strategies.sma_cross:SmaCross", {"fast": 2, "slow": 3, "qty": 1})
    assert isinstance(s, Strategy) and s.warmup_bars == 4


# ---------------------------------------------------------- actor + fake venue
class Venue:
    """The test plays market-data (md XPUB + md.ref ROUTER) and the exchange (orders ROUTER + exec XPUB).

    XPUB instead of PUB: the test sees the strategy's subscriptions arrive, so it
    never publishes into the void (no sleeps for the slow joiner).
    """

    def __init__(self, procs, run_dir, plugin_params, query=None, history=()):
        cfg = config_mod.load(None, ['strategy.plugin="actors.strategies.sma_cross:SmaCross"'])
        cfg.strategy.params = plugin_params
        self.sup = FakeSupervisor(run_dir, cfg)
        st = Stamper("venue", "test-run")
        ctx, ep = self.sup.ctx, self.sup.endpoints
        self.md = open_port(ctx, ep, "md", bind=True, stamper=st, sock_type=zmq.XPUB)
        self.ref = open_port(ctx, ep, "md.ref", bind=True, stamper=st)
        self.orders = open_port(ctx, ep, "orders", bind=True, stamper=st)
        self.exec = open_port(ctx, ep, "exec", bind=True, stamper=st, sock_type=zmq.XPUB)
        self.query = query or QueryReply()
        self.history = list(history)
        self.rx = []  # every message the strategy sent on "orders", in order
        self.subs = set()
        self.procs = procs
        self.proc = None
        self.next_cmd = 1

    def start(self):
        self.proc = self.procs.spawn(actor_cmd("actors.strategy", self.sup.run_dir, self.sup.write_config()),
                                     stderr=subprocess.PIPE)

    def serve(self, timeout):
        """Answer requests and record subscriptions for ``timeout`` seconds (a polling loop, not a sleep)."""
        poller = zmq.Poller()
        for p in (self.md, self.ref, self.orders, self.exec):
            poller.register(p.sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            self.sup.pump(0.001)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for sock, _ in poller.poll(int(min(left, 0.02) * 1000) + 1):
                if sock in (self.md.sock, self.exec.sock):
                    frame = sock.recv()
                    if frame[:1] == b"\x01":
                        self.subs.add(frame[1:].decode())
                elif sock is self.ref.sock:
                    r = self.ref.recv()
                    if isinstance(r.msg, InstrumentsRequest):
                        rep = InstrumentsReply(instruments=[GOOG])
                    else:
                        assert isinstance(r.msg, HistoryRequest)
                        rep = HistoryReply(symbol=r.msg.symbol, bars=self.history[-r.msg.n:])
                    self.ref.send(rep, to=r.ident)
                else:
                    try:
                        r = self.orders.recv()
                    except ProtocolError as e:
                        raise AssertionError(f"strategy sent an undecodable order message: {e}")
                    self.rx.append(r.msg)
                    if isinstance(r.msg, Query):
                        self.orders.send(self.query, to=r.ident)
                    elif isinstance(r.msg, SubmitOrder):
                        self.orders.send(OrderAck(cl_id=r.msg.cl_id, order_id=len(self.rx)), to=r.ident)

    def until(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; orders rx={self.rx}")
            self.serve(0.02)

    def ready(self):
        self.start()
        self.until(lambda: any(isinstance(m, (Ready, InitFailed)) for _, m in self.sup.events), 15, "READY")
        ev = [m for _, m in self.sup.events if isinstance(m, (Ready, InitFailed))][0]
        assert isinstance(ev, Ready), ev
        self.until(lambda: {"md.bar.", "md.eod", "exec.fill."} <= self.subs, 5, "subscriptions")
        self.sup.run("strategy")
        return ev

    def publish(self, b):
        self.md.send(b, topic=topic_for("md.bar", b.symbol))

    def command(self, cmd):
        cid = self.next_cmd
        self.next_cmd += 1
        self.sup.send("strategy", Command(id=cid, cmd=cmd))
        self.until(lambda: any(isinstance(m, CommandReply) and m.id == cid for _, m in self.sup.events), 5, cmd)
        return [m for _, m in self.sup.events if isinstance(m, CommandReply) and m.id == cid][0]

    def status(self, pred, what):
        def ok():
            return any(isinstance(m, Heartbeat) and m.info and pred(m.info) for _, m in self.sup.events)
        self.until(ok, 10, what)
        return [m.info for _, m in self.sup.events if isinstance(m, Heartbeat) and m.info and pred(m.info)][-1]

    def submits(self):
        return [m for m in self.rx if isinstance(m, SubmitOrder)]

    def stop(self):
        self.sup.stop("strategy")
        self.until(lambda: any(isinstance(m, Stopped) for _, m in self.sup.events), 10, "STOPPED")
        assert self.proc.wait(10) == 0

    def close(self):
        # Every socket closed before the context terminates, or term() would block forever.
        for p in (self.md, self.ref, self.orders, self.exec):
            p.close()
        self.sup.close()


@pytest.fixture
def venue(procs, run_dir):
    made = []

    def make(*a, **kw):
        made.append(Venue(procs, run_dir, *a, **kw))
        return made[-1]
    yield make
    for v in made:
        v.close()


SMA = {"fast": 2, "slow": 3, "qty": 5}


def test_restarted_strategy_recovers_position_before_trading(venue):
    # The exchange already holds -3 and an open sell of 2 from the previous incarnation.
    prev = OrderInfo(order_id=9, cl_id="old-1", symbol="GOOG", side="sell", qty=2, status="new")
    q = QueryReply(positions=[PositionInfo(symbol="GOOG", qty=-3, avg_price=10.0)], orders=[prev])
    history = [bar(i, c) for i, c in enumerate(CLOSES[:8])]  # the host asks for 4: bars 5..8
    v = venue(SMA, query=q, history=history)
    info = v.ready().info
    assert info["positions"] == 1 and info["open_orders"] == 1 and info["history_bars"] == 4
    v.until(lambda: "md.quote." in v.subs, 5, "the quote subscription")  # best bid/offer reach on_quote
    assert isinstance(v.rx[0], Query) and len(v.rx) == 1
    st = v.status(lambda i: True, "status")
    assert st["state"] == "trading" and st["positions"] == {"GOOG": -3}  # warmed from history
    # A live bar the history already had is not fed twice; then bars 9..10: the bar-10 down-cross
    # wants -5 = -3 held + -2 in flight, so nothing is sent.
    v.publish(history[-1])
    for i in range(8, 10):
        v.publish(bar(i, CLOSES[i]))
    v.status(lambda i: i["bars"] == 6, "6 bars")
    assert v.submits() == []
    # The old order fills; the bar-12 up-cross then buys from -5 to +5: exactly 10.
    v.exec.send(fill("old-1", "sell", 2, -5), topic=topic_for("exec.fill", "GOOG"))
    v.status(lambda i: i["positions"] == {"GOOG": -5} and i["open_orders"] == 0, "the fill applied")
    v.publish(bar(10, CLOSES[10]))
    v.publish(bar(11, CLOSES[11]))
    v.until(lambda: v.submits(), 5, "the up-cross order")
    sub = v.submits()
    assert [(m.side, m.qty) for m in sub] == [("buy", 10)] and sub[0].cl_id != "old-1"
    v.stop()


def test_bad_plugin_is_an_init_failure_naming_it(procs, run_dir):
    cfg = config_mod.load(None, ['strategy.plugin="actors.strategies.sma_cross:SmaCross"'])
    cfg.strategy.params = {"fast": 2}
    sup = FakeSupervisor(run_dir, cfg)
    try:
        p = procs.spawn(actor_cmd("actors.strategy", sup.run_dir, sup.write_config()), stderr=subprocess.PIPE)
        failed = sup.wait_msg("strategy", InitFailed, 15)
        assert "actors.strategies.sma_cross:SmaCross" in failed.reason and "bad strategy.params" in failed.reason
        assert p.wait(10) == 2  # a bad plugin is bad user input (UserError)
    finally:
        sup.close()


def test_pingpong_alternates_long_and_flat():
    from actors.strategies.pingpong import PingPong

    def fill_each(n, ctx, sent):
        m = sent[-1]
        pos = ctx.position("GOOG") + (m.qty if m.side == "buy" else -m.qty)
        ctx.apply_fill(fill(m.cl_id, m.side, m.qty, pos))

    _, sent = run_plugin(PingPong(qty=2), [10, 11, 12, 13], fill_each)
    assert [(m.side, m.qty) for m in sent] == [("buy", 2), ("sell", 2), ("buy", 2), ("sell", 2)]

"""Trading hours and option expiry in the exchange core and the strategy host
(actors/market_rules.py wiring actors/sessions.py and actors/options.py into them): a real
SQLite ledger in a temporary directory, market time from bar timestamps as in a backtest."""

from __future__ import annotations

import datetime as dt
import os

import msgspec
import pytest

import config as config_mod
from actors import market_rules
from actors.exchange_core import ExchangeCore
from actors.ledger import Ledger
from actors.sessions import SessionCalendar
from actors.strategies.base import Strategy
from actors.strategy_host import StrategyHost
from bus.messages import Bar, EndOfData, Fill, Instrument, OrderAck, OrderReject, OrderUpdate, SubmitOrder
from tests.harness import Log

pytestmark = pytest.mark.timeout(60)
UTC = dt.timezone.utc
MIN = 60 * 10**9

UND = Instrument(symbol="SPY", kind="equity", tick_size=0.01)
CALL = Instrument(symbol="SPY-260313-C-100", kind="option", tick_size=0.01, multiplier=100.0, underlying="SPY",
                  strike=100.0, expiry="2026-03-13", right="C")
PUT = Instrument(symbol="SPY-260313-P-100", kind="option", tick_size=0.01, multiplier=100.0, underlying="SPY",
                 strike=100.0, expiry="2026-03-13", right="P")
PHYS = Instrument(symbol="SPY-260313-C-95", kind="option", tick_size=0.01, multiplier=100.0, underlying="SPY",
                  strike=95.0, expiry="2026-03-13", right="C", settlement="physical")
LATER = Instrument(symbol="SPY-260320-C-100", kind="option", tick_size=0.01, multiplier=100.0, underlying="SPY",
                   strike=100.0, expiry="2026-03-20", right="C")
INSTRUMENTS = [UND, CALL, PUT, PHYS, LATER]


def ns(y, mo, d, h, mi=0):
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()) * 10**9


def cfg_with(**session):
    sets = ['session.timezone="America/New_York"', 'session.open="09:30"', 'session.close="16:00"',
            'session.square_off="15:50"', 'options.expiry_time="16:00"']
    sets += [f"session.{k}={str(v).lower() if isinstance(v, bool) else repr(v)}".replace("'", '"')
             for k, v in session.items()]
    return config_mod.load(None, sets)


class Books:
    def __init__(self, d, cfg, backtest=True):
        self.cfg = cfg
        self.ledger = Ledger(os.path.join(str(d), "ledger.sqlite"))
        self.ledger.start_run("r1", "{}", cfg.exchange.initial_cash, mode="backtest" if backtest else "live")
        self.events = []
        self.core = ExchangeCore(msgspec.structs.replace(cfg.exchange, fill_on="close"), INSTRUMENTS, self.ledger,
                                 out_dir=str(d), emit=self.events.append, log=Log(), backtest=False)
        market_rules.attach(self.core, cfg, INSTRUMENTS)
        self.n = 0
        self.fseq = 0

    def bar(self, sym, ts, px):
        self.fseq += 1
        self.core.on_bar(Bar(symbol=sym, ts=ts, open=px, high=px, low=px, close=px, fseq=self.fseq))

    def submit(self, sym, side, qty):
        self.n += 1
        r = self.core.submit(SubmitOrder(cl_id=f"c{self.n}", symbol=sym, side=side, qty=qty, order_type="market"))
        self.core.settle()
        return r

    def pos(self, sym):
        return self.core.acct.position(sym)

    def fills(self):
        return [e for e in self.events if isinstance(e, Fill)]


@pytest.fixture
def books(tmp_path):
    made = []

    def make(cfg=None, **kw):
        made.append(Books(tmp_path / str(len(made)), cfg or cfg_with(**kw)))
        return made[-1]
    for i in range(3):
        (tmp_path / str(i)).mkdir()
    yield make
    for b in made:
        b.ledger.close()


def test_an_order_outside_hours_is_rejected_market_closed(books):
    b = books()
    b.bar("SPY", ns(2026, 3, 6, 13, 0), 100.0)  # 08:00 New York: closed
    r = b.submit("SPY", "buy", 10)
    assert isinstance(r, OrderReject) and r.code == "market-closed"
    assert "next: open at 2026-03-06T14:30:00Z" in r.text
    b.bar("SPY", ns(2026, 3, 6, 14, 30), 100.0)  # the open
    assert isinstance(b.submit("SPY", "buy", 10), OrderAck) and b.pos("SPY") == 10


def test_no_session_config_is_24_7(tmp_path):
    cfg = config_mod.load(None)
    assert cfg.session is None
    b = Books(tmp_path, cfg)
    b.bar("SPY", ns(2026, 12, 25, 3, 0), 100.0)  # a holiday at night: no session rules, no rejects
    assert isinstance(b.submit("SPY", "buy", 1), OrderAck)
    b.ledger.close()


@pytest.mark.parametrize("day,utc_hour", [((2026, 3, 6), 20), ((2026, 3, 9), 19)])  # EST, then EDT
def test_square_off_at_the_configured_minute_across_dst(books, day, utc_hour):
    b = books()
    b.bar("SPY", ns(*day, utc_hour - 5, 30), 100.0)  # 10:30 local
    assert isinstance(b.submit("SPY", "buy", 10), OrderAck) and b.pos("SPY") == 10
    b.bar("SPY", ns(*day, utc_hour, 49), 101.0)  # 15:49 local: still open
    assert b.pos("SPY") == 10
    b.bar("SPY", ns(*day, utc_hour, 50), 102.0)  # 15:50 local: square-off flattens
    assert b.pos("SPY") == 0
    sq = [e for e in b.events if isinstance(e, OrderUpdate) and e.reason == "square-off"]
    assert sq and sq[0].order.cl_id.startswith("square-off-")
    assert b.fills()[-1].ts == ns(*day, utc_hour, 50)
    # during square-off: opening orders refused, reducing ones taken
    r = b.submit("SPY", "buy", 5)
    assert isinstance(r, OrderReject) and r.code == "market-closed" and "square-off" in r.text


def test_square_off_takes_reducing_orders(books):
    b = books(flatten_at_square_off=False)
    b.bar("SPY", ns(2026, 3, 6, 15), 100.0)
    b.submit("SPY", "buy", 10)
    b.bar("SPY", ns(2026, 3, 6, 20, 55), 100.0)
    assert b.pos("SPY") == 10  # not flattened: flatten_at_square_off = false
    assert isinstance(b.submit("SPY", "sell", 4), OrderAck) and b.pos("SPY") == 6
    r = b.submit("SPY", "sell", 7)  # would go short: opening
    assert isinstance(r, OrderReject) and r.code == "market-closed"


def test_a_holiday_has_no_session_at_the_exchange(books):
    b = books(calendar="XNYS")
    b.bar("SPY", ns(2026, 12, 25, 16), 100.0)  # 11:00 New York on Christmas Day
    r = b.submit("SPY", "buy", 1)
    assert isinstance(r, OrderReject) and r.code == "market-closed" and "2026-12-28T14:30:00Z" in r.text


def _open_options(b):
    b.bar("SPY", ns(2026, 3, 13, 14, 30), 100.0)
    for inst, px in ((CALL, 2.0), (PUT, 1.5), (PHYS, 5.5), (LATER, 3.0)):
        b.bar(inst.symbol, ns(2026, 3, 13, 14, 30), px)
    assert isinstance(b.submit(CALL.symbol, "buy", 2), OrderAck)
    assert isinstance(b.submit(PUT.symbol, "sell", 3), OrderAck)
    assert isinstance(b.submit(PHYS.symbol, "buy", 1), OrderAck)
    assert isinstance(b.submit(LATER.symbol, "buy", 1), OrderAck)


def test_expiry_settles_in_and_out_of_the_money(books):
    b = books(square_off="", flatten_at_square_off=False)
    _open_options(b)
    cash0 = b.core.acct.cash
    b.bar("SPY", ns(2026, 3, 13, 19, 59), 104.0)  # 15:59 EDT: the last price before expiry
    b.bar("SPY", ns(2026, 3, 16, 13, 30), 99.0)  # Monday: market time passed 16:00 Friday
    for inst in (CALL, PUT, PHYS):
        assert b.pos(inst.symbol) == 0
    assert b.pos(LATER.symbol) == 1  # a later expiry stays
    exp = ns(2026, 3, 13, 20)  # 16:00 New York (EDT)
    settled = {f.symbol: f for f in b.fills() if f.cl_id.startswith("expiry-")}
    assert settled[CALL.symbol].price == 4.0 and settled[CALL.symbol].ts == exp  # in the money: 104 - 100
    assert settled[PUT.symbol].price == 0.0  # out of the money: worthless
    assert all(f.fee == 0.0 for f in settled.values())
    # physical, in the money: closed at 0 and 100 SPY bought at the strike
    assert settled[PHYS.symbol].price == 0.0
    assert settled["SPY"].side == "buy" and settled["SPY"].qty == 100 and settled["SPY"].price == 95.0
    assert b.pos("SPY") == 100
    # cash: +2 x 4 x 100 for the calls, 0 for the puts, -100 x 95 for the delivery
    assert b.core.acct.cash == pytest.approx(cash0 + 800.0 - 9500.0)
    reasons = {e.order.cl_id: e.reason for e in b.events if isinstance(e, OrderUpdate) and e.order.status == "new"}
    assert sum(1 for cl, why in reasons.items() if cl.startswith("expiry-") and why == "expiry") == 4
    # the ledger keeps it in its usual tables: the orders and their fills
    rows = b.ledger.db.execute("SELECT o.cl_id, f.price FROM orders o JOIN fills f USING (order_id) "
                               "WHERE o.cl_id LIKE 'expiry-%' ORDER BY f.fill_id").fetchall()
    assert [r[1] for r in rows] == [4.0, 0.0, 95.0, 0.0]  # by expiry, then symbol: C-100, C-95 (+ delivery), P-100


def test_expiry_cancels_open_orders_of_the_option(books):
    b = books(square_off="")
    b.bar("SPY", ns(2026, 3, 13, 14, 30), 100.0)
    r = b.core.submit(SubmitOrder(cl_id="lim", symbol=CALL.symbol, side="buy", qty=1, order_type="limit", price=0.5))
    assert isinstance(r, OrderAck)
    b.bar("SPY", ns(2026, 3, 16, 14, 30), 100.0)
    ups = [e for e in b.events if isinstance(e, OrderUpdate) and e.order.cl_id == "lim"]
    assert ups[-1].order.status == "cancelled" and ups[-1].reason == "expiry"


def test_in_session_filter_renumbers_and_ends():
    cal = SessionCalendar("America/New_York", open="09:30", close="16:00", pre_open="09:00")
    bars = [Bar(symbol="SPY", ts=ns(2026, 3, 6, h, m), open=1, high=1, low=1, close=1, fseq=i + 1)
            for i, (h, m) in enumerate([(13, 0), (14, 0), (14, 30), (21, 0), (21, 30), (14, 30)])]
    gate = market_rules.InSession(cal)
    out = [b for batch in gate.batches([bars[:3], bars[3:5], bars[5:]]) for b in batch]
    assert [b.ts for b in out] == [bars[1].ts, bars[2].ts, bars[5].ts] and [b.fseq for b in out] == [1, 2, 3]
    assert gate.dropped == 3
    eod = gate.end(EndOfData(feed="x", count=6, last_fseq=6))
    assert (eod.count, eod.last_fseq) == (3, 3)


class Recorder(Strategy):
    def __init__(self):
        self.seen = []

    def on_session_open(self, day):
        self.seen.append(("open", day, self.session_state()))

    def on_session_close(self, day):
        self.seen.append(("close", day))

    def on_bar(self, bar):
        if bar.symbol == "SPY":
            self.seen.append(("bar", self.atm("SPY", "C").symbol, self.submit("SPY", "buy", 1, "market") is not None))


def test_host_session_events_chain_helpers_and_no_orders_out_of_session():
    cfg = cfg_with(pre_open="09:00")
    sent = []
    host = StrategyHost(cfg.strategy, INSTRUMENTS, send=sent.append, cl_prefix="t", log=Log(), plugin=Recorder())
    host.attach_market(market_rules.StrategyMarket(cfg, INSTRUMENTS))
    p = host.plugin
    host.on_bar(Bar(symbol="SPY", ts=ns(2026, 3, 13, 13, 10), open=101, high=101, low=101, close=101))  # pre-open
    host.on_bar(Bar(symbol="SPY", ts=ns(2026, 3, 13, 13, 30), open=101, high=101, low=101, close=101))  # open
    host.on_bar(Bar(symbol="SPY", ts=ns(2026, 3, 16, 13, 30), open=98, high=98, low=98, close=98))  # Monday
    d13, d16 = dt.date(2026, 3, 13), dt.date(2026, 3, 16)
    assert p.seen == [("bar", CALL.symbol, False),  # pre-open: the order is held back
                      ("open", d13, "open"), ("bar", CALL.symbol, True),
                      ("close", d13), ("open", d16, "open"),
                      ("bar", LATER.symbol, True)]  # the 13th's options expired and left the chain
    assert len(sent) == 2
    assert [o.expiry for o in p.chain("SPY")] == ["2026-03-20"]
    g = p.greeks(LATER.symbol)
    assert 0 < g.delta < 1 and g.vega > 0
    assert p.option_by_delta("SPY", "C", 0.5).symbol == LATER.symbol


def test_view_carries_greeks_portfolio_delta_and_session():
    from actors.state_view import StateView
    from bus.messages import AccountInfo, AccountUpdate, InstrumentsReply, PositionInfo
    from actors import options as op
    v = StateView("r")
    assert v.value("session")["configured"] is False and v.value("greeks")["known"] is False
    cfg = cfg_with(pre_open="09:00")
    v.attach_market(market_rules.ViewMarket(cfg, wall_clock=False))
    v.apply(InstrumentsReply(instruments=INSTRUMENTS, option_mappings=4))
    t = ns(2026, 3, 9, 15)  # 11:00 New York
    v.apply(AccountUpdate(account=AccountInfo(cash=1e6, equity=1e6, initial_cash=1e6), ts=t,
                          positions=[PositionInfo(symbol="SPY", qty=-50, avg_price=100.0),
                                     PositionInfo(symbol=LATER.symbol, qty=2, avg_price=2.0)]))
    v.apply(Bar(symbol="SPY", ts=t, open=101, high=101, low=101, close=101))
    g = v.value("greeks")
    p = g["positions"][LATER.symbol]
    expiry = int(dt.datetime(2026, 3, 20, 20, tzinfo=UTC).timestamp()) * 10**9
    want = op.greeks(101.0, 100.0, op.years(t, expiry), 0.0, 0.3, "C")
    assert p["iv_source"] == "model" and p["delta"] == pytest.approx(200 * want.delta, abs=1e-5)
    assert g["portfolio"]["delta"]["SPY"] == pytest.approx(-50 + 200 * want.delta, abs=1e-5)
    assert g["portfolio"]["vega"] == pytest.approx(200 * want.vega, abs=1e-5)
    # the option's own price, when the feed has one, gives its implied volatility
    v.apply(Bar(symbol=LATER.symbol, ts=t, open=2.5, high=2.5, low=2.5, close=2.5))
    p = v.value("greeks")["positions"][LATER.symbol]
    assert p["iv_source"] == "price" and p["option"]["price"] == pytest.approx(2.5, abs=1e-6)
    s = v.value("session")
    assert (s["state"], s["next_state"], s["next_ns"]) == ("open", "square-off", ns(2026, 3, 9, 19, 50))


def test_monitor_shows_the_session_and_the_greeks():
    from rich.console import Console

    from scripts import monitor
    state = {"run_id": "r", "trading": {"state": "trading", "known": True},
             "session": {"configured": True, "state": "square-off", "next_ns": ns(2026, 3, 9, 20),
                         "next_state": "closed", "timezone": "America/New_York", "calendar": "XNYS"},
             "greeks": {"known": True, "positions": {"X": {}},
                        "portfolio": {"delta": {"SPY": -12.5}, "gamma": {"SPY": 1.0}, "vega": 30.0, "theta": -5.0}}}
    c = Console(width=120, record=True)
    c.print(monitor.render(state, 1, False, None))
    text = c.export_text()
    assert "session square-off  next closed at" in text and "America/New_York, XNYS" in text
    assert "greeks delta SPY -12.50  vega 30.00  theta -5.00/yr  (1 option positions)" in text
    c = Console(width=120, record=True)
    c.print(monitor.render({"run_id": "r"}, 1, False, None))  # no [session], no options: no lines
    assert "session" not in c.export_text() and "greeks" not in c.export_text()


def test_synthetic_option_quotes_fill_at_the_ask_and_the_bid_not_the_mid(books):
    """The synthetic feed's (Quote, Bar) pairs into the exchange core as market-data sends
    them: a market buy fills at the model ask, a sell at the bid; the mid bar fills nothing."""
    b = books()
    quoter = market_rules.OptionQuoter(b.cfg, INSTRUMENTS)
    t = ns(2026, 3, 10, 15, 0)
    b.bar("SPY", t, 100.0)

    def publish(ts):
        pairs = {q.symbol: (q, bar) for q, bar in quoter.quotes({"SPY": 100.0}, ts)}
        for q, bar in pairs.values():
            b.core.on_quote(q)
            b.fseq += 1
            b.core.on_bar(msgspec.structs.replace(bar, fseq=b.fseq))
        return pairs[CALL.symbol]

    publish(t)
    assert isinstance(b.submit(CALL.symbol, "buy", 2), OrderAck)
    q, bar = publish(t + MIN)
    assert q.bid < bar.close < q.ask
    bought = b.fills()[-1]
    assert (bought.symbol, bought.side, bought.price) == (CALL.symbol, "buy", q.ask)
    assert isinstance(b.submit(CALL.symbol, "sell", 2), OrderAck)
    q, _ = publish(t + 2 * MIN)
    assert b.fills()[-1].price == q.bid and b.pos(CALL.symbol) == 0

"""Quotes and feed status in the fill model, and buying power (issue 14): with quotes, market
orders fill at the ask/bid, limits when the other side reaches them, stops on the opposite
side; nothing fills on a crossed book or a stale feed; a cash account never buys beyond its
cash nor sells short, a margin account checks initial margin and liquidates below
maintenance (recorded in the ledger)."""

import json
import os

import msgspec
import pytest

import config as config_mod
from actors.exchange_core import ExchangeCore
from actors.ledger import Ledger
from bus.messages import (
    AccountUpdate, Bar, FeedStatus, Fill, Instrument, OrderAck, OrderReject, OrderUpdate, Quote, SubmitOrder,
)
from scripts import testkit
from tests.harness import Log
from tests.test_kernels import gen_sets

pytestmark = pytest.mark.timeout(120)

INSTRUMENTS = [
    Instrument(symbol="BTC/USDT", kind="crypto", tick_size=0.01, lot_size=0.001, currency="USDT"),
    Instrument(symbol="AAA", kind="equity", tick_size=0.01),
    Instrument(symbol="ES", kind="future", tick_size=0.25, multiplier=50.0),
]
T0 = 1_700_000_000 * 10**9


class Books:
    def __init__(self, d, **exchange):
        self.cfg = msgspec.structs.replace(config_mod.load().exchange, **exchange)
        self.ledger = Ledger(os.path.join(str(d), "ledger.sqlite"))
        self.ledger.start_run("r1", "{}", self.cfg.initial_cash, mode="live")
        self.events = []
        self.core = ExchangeCore(self.cfg, INSTRUMENTS, self.ledger, out_dir=str(d), emit=self.events.append,
                                 log=Log())
        self.n = 0
        self.ts = T0

    def submit(self, sym="BTC/USDT", side="buy", qty=0.01, order_type="market", price=None, tif="GTC"):
        self.n += 1
        r = self.core.submit(SubmitOrder(cl_id=f"c{self.n}", symbol=sym, side=side, qty=qty, order_type=order_type,
                                         price=price, tif=tif))
        self.core.settle()
        return r

    def quote(self, bid, ask, sym="BTC/USDT"):
        self.ts += 10**9
        self.core.on_quote(Quote(symbol=sym, ts=self.ts, bid=bid, ask=ask))

    def bar(self, sym, o, h, lo, c):
        self.ts += 10**9
        self.core.on_bar(Bar(symbol=sym, ts=self.ts, open=o, high=h, low=lo, close=c))

    def fills(self):
        return [e for e in self.events if isinstance(e, Fill)]

    def close(self):
        self.core.close()


@pytest.fixture
def books(tmp_path):
    made = []

    def make(**kw):
        d = tmp_path / str(len(made))
        d.mkdir()
        made.append(Books(d, **kw))
        return made[-1]
    yield make
    for b in made:
        b.ledger.close()


# ----------------------------------------------------------------------- quotes
def test_market_orders_fill_at_the_ask_and_the_bid_plus_slippage_and_mark_at_mid(books):
    b = books(slippage_bps=10.0)
    b.quote(100.0, 100.5)
    b.submit(side="buy", qty=0.01)
    b.submit(side="sell", qty=0.005)
    assert b.fills() == []  # next_open: the next quote fills them
    b.quote(101.0, 101.5)
    buy, sell = b.fills()
    assert buy.price == pytest.approx(101.61)  # 101.5 * 1.001 = 101.6015, up to the tick
    assert sell.price == pytest.approx(100.89)  # 101.0 * 0.999 = 100.899, down to the tick
    pos = b.core.query().positions[0]
    assert pos.qty == 0.005 and pos.mark == 101.25


def test_limits_fill_when_the_other_side_reaches_them_and_stops_trigger_on_the_opposite_side(books):
    b = books()
    b.quote(99.0, 101.0)
    b.submit(side="buy", order_type="limit", price=100.0)  # fills when ask <= 100
    b.submit(side="sell", order_type="limit", price=102.0)  # fills when bid >= 102
    b.submit(side="buy", order_type="stop", price=103.0)  # triggers when bid >= 103, at the ask
    b.quote(99.5, 100.5)
    assert b.fills() == []
    b.quote(99.0, 99.5)
    assert [(f.side, f.price) for f in b.fills()] == [("buy", 99.5)]  # at the ask, better than the limit
    b.quote(102.5, 102.9)  # bid 102.5 >= 102; stop 103 not yet (the ask is below it too)
    assert [(f.side, f.price) for f in b.fills()][1:] == [("sell", 102.5)]
    b.quote(102.9, 103.5)  # the ask passed 103 but the bid has not: a wide spread does not set it off
    assert len(b.fills()) == 2
    b.quote(103.0, 103.25)
    assert [(f.side, f.price) for f in b.fills()][2:] == [("buy", 103.25)]


def test_a_crossed_book_fills_nothing_and_bars_do_not_fill_a_quoted_symbol(books):
    b = books()
    b.quote(100.0, 100.5)
    b.submit(side="buy")
    b.quote(100.6, 100.5)  # crossed
    b.quote(100.5, 100.5)  # locked
    b.bar("BTC/USDT", 100.0, 100.0, 100.0, 100.0)  # a trade print: not where we could buy
    assert b.fills() == []
    b.quote(100.2, 100.4)
    assert [f.price for f in b.fills()] == [100.4]


def test_a_stale_feed_fills_nothing_accepts_orders_and_resumes_on_fresh_data(books):
    b = books(fill_on="close")
    b.quote(100.0, 100.5)
    b.core.on_feed_status(FeedStatus(feed="ccxt:binance", state="stale", detail="no data for 10 s"))
    r = b.submit(side="buy")
    assert isinstance(r, OrderAck)  # accepted, not filled at the old quote
    b.quote(101.0, 101.5)  # data while stale (a late message): no fill either
    assert b.fills() == []
    b.core.on_feed_status(FeedStatus(feed="ccxt:binance", state="ok"))
    b.submit(side="buy")  # fill_on close: the last quote is from before recovery: waits
    assert b.fills() == []
    b.quote(102.0, 102.5)
    assert [f.price for f in b.fills()] == [102.5, 102.5]
    # per-symbol staleness: only the named symbol stops
    b.core.on_feed_status(FeedStatus(feed="ccxt:binance", state="reconnecting", symbols=["AAA"]))
    b.submit(side="sell", qty=0.02)
    assert len(b.fills()) == 3


# ----------------------------------------------------------------- cash account
def test_cash_account_rejects_buys_beyond_cash_and_any_short_sale(books):
    b = books(account="cash", initial_cash=10_000.0, commission_pct=0.01)
    b.bar("AAA", 100.0, 100.0, 100.0, 100.0)
    r = b.submit(sym="AAA", qty=100)  # 10,000 + 100 fee > 10,000
    assert isinstance(r, OrderReject) and r.code == "insufficient-funds"
    assert "10100.00" in r.text and "10000.00" in r.text
    assert isinstance(b.submit(sym="AAA", qty=50), OrderAck)  # holds 5,050
    r = b.submit(sym="AAA", qty=50)  # 5,050 > 10,000 - 5,050
    assert r.code == "insufficient-funds" and "5050.00 held by open buy orders" in r.text
    r = b.submit(sym="AAA", side="sell", qty=1)
    assert r.code == "insufficient-funds" and "cannot sell short" in r.text
    b.bar("AAA", 100.0, 100.0, 100.0, 100.0)
    assert b.core.acct.position("AAA") == 50
    assert isinstance(b.submit(sym="AAA", side="sell", qty=50), OrderAck)
    assert b.submit(sym="AAA", side="sell", qty=1).code == "insufficient-funds"  # 50 already on a sell
    acct = b.core.query().account
    assert acct.account_type == "cash" and acct.buying_power == pytest.approx(acct.cash)


def test_cash_account_cancels_a_buy_the_price_gapped_beyond_the_cash(books):
    b = books(account="cash", initial_cash=10_000.0)
    b.bar("AAA", 100.0, 100.0, 100.0, 100.0)
    assert isinstance(b.submit(sym="AAA", qty=99), OrderAck)
    b.bar("AAA", 150.0, 150.0, 150.0, 150.0)  # next open 150: 14,850 > 10,000
    assert b.fills() == [] and b.core.acct.cash == 10_000.0
    upd = [e for e in b.events if isinstance(e, OrderUpdate)][-1]
    assert upd.reason == "insufficient funds at fill" and upd.order.status == "cancelled"


# --------------------------------------------------------------- margin account
def test_margin_account_checks_initial_margin(books):
    b = books(account="margin", initial_cash=100_000.0, leverage=4.0, maintenance_margin=0.1)
    b.bar("ES", 4000.0, 4000.0, 4000.0, 4000.0)
    # one contract: 200,000 notional, 50,000 initial margin at 1/4
    assert isinstance(b.submit(sym="ES", qty=2), OrderAck)  # 100,000: all of it
    r = b.submit(sym="ES", qty=1)
    assert r.code == "insufficient-funds" and "available margin 0.00" in r.text
    # An open buy counts as filled (worst case): a sell of 2 would then open a short
    assert b.submit(sym="ES", side="sell", qty=3).code == "insufficient-funds"
    b.bar("ES", 4000.0, 4000.0, 4000.0, 4000.0)
    assert b.core.acct.position("ES") == 2
    assert isinstance(b.submit(sym="ES", side="sell", qty=2), OrderAck)  # closing needs no margin
    acct = b.core.query().account
    assert acct.account_type == "margin"


def test_margin_account_liquidates_below_maintenance_and_the_ledger_says_why(books):
    b = books(account="margin", initial_cash=100_000.0, leverage=2.0, maintenance_margin=0.25)
    b.bar("ES", 4000.0, 4000.0, 4000.0, 4000.0)
    assert isinstance(b.submit(sym="ES", qty=1), OrderAck)  # 100,000 of margin for 200,000
    b.bar("ES", 4000.0, 4000.0, 4000.0, 4000.0)
    assert b.core.acct.position("ES") == 1
    assert isinstance(b.submit(sym="ES", side="sell", qty=1, order_type="limit", price=5000.0), OrderAck)
    # equity 100,000 + 50 * (P - 4000) < 0.25 * 50 * P  <=>  P < 2666.67
    b.bar("ES", 3000.0, 3000.0, 3000.0, 3000.0)
    assert not b.core.liquidating and not b.ledger.events()
    b.bar("ES", 2600.0, 2600.0, 2600.0, 2600.0)
    assert b.core.liquidating
    ev = b.ledger.events("liquidation")
    assert len(ev) == 1 and "below the maintenance margin" in ev[0]["detail"]
    b.bar("ES", 2500.0, 2500.0, 2500.0, 2500.0)  # the liquidation order fills at the next open
    last = b.fills()[-1]
    assert last.cl_id.startswith("liquidation-") and last.position == 0 and last.price == 2500.0
    reasons = [e.reason for e in b.events if isinstance(e, OrderUpdate) and e.order.cl_id == last.cl_id]
    assert reasons == ["liquidation", "filled"]
    cancelled = [e for e in b.events if isinstance(e, OrderUpdate) and e.reason == "liquidation"
                 and e.order.status == "cancelled"]
    assert [e.order.price for e in cancelled] == [5000.0]  # the open orders went first
    assert b.ledger.order_by_cl(last.cl_id)["reason"] == "filled"
    assert not b.core.liquidating and isinstance([e for e in b.events if isinstance(e, AccountUpdate)][-1],
                                                  AccountUpdate)


# ------------------------------------------------------------------- backtest
@pytest.mark.timeout(180)
def test_a_cash_backtest_whose_fees_eat_the_cash_stops_trading_instead_of_going_negative(procs, run_dir,
                                                                                        data_dir):
    """5% commission per fill on a long-only SMA cross: the fees eat the cash within a few
    hundred fills. A cash account stops trading (buys are refused) and equity never goes
    below 0; under the old rules the equity went deep below zero."""
    sets = gen_sets(data_dir, 20_000) + ["exchange.account=cash", "exchange.commission_pct=0.05",
                                         "exchange.initial_cash=100000.0",
                                         'strategy.plugin="tests.test_quotes_funds:LongOnlyCross"',
                                         "strategy.params={fast=5, slow=10, qty=100}"]
    code, out, err = testkit.run_backtest(run_dir, sets, spawn=procs.spawn, timeout=170)
    assert code == 0, err[-3000:]
    d = os.path.realpath(os.path.join(run_dir, "latest"))
    with open(os.path.join(d, "equity.csv")) as f:
        next(f)
        eq = [float(line.split(",")[2]) for line in f]
    assert min(eq) >= 0.0
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert 0.0 <= summary["final_equity"] < 20_000.0  # the fees did eat the cash: the case it claims to be
    assert summary["fills"] < 2000  # it stopped: the crosses go on, the fills do not


from actors.strategies.base import Strategy  # noqa: E402


class LongOnlyCross(Strategy):
    """Long when the fast SMA is above the slow, flat otherwise (a cash account's strategy)."""

    def __init__(self, fast: int = 5, slow: int = 10, qty: int = 100):
        self.fast, self.slow, self.qty = fast, slow, qty
        self.warmup_bars = slow
        self.closes: list[float] = []

    def on_bar(self, bar):
        c = self.closes
        c.append(bar.close)
        if len(c) > self.slow:
            del c[0]
        if len(c) < self.slow:
            return
        up = sum(c[-self.fast:]) / self.fast > sum(c) / self.slow
        self.target_position(bar.symbol, self.qty if up else 0)


# ------------------------------------------------------------ in-process kernel
class _Log:
    """What the kernel's log must do: record and bind."""

    def __init__(self):
        self.lines = []

    def bind(self, **_kw):
        return self

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


class _QuoteFeed:
    """A replay feed of trades and quotes (what a recorded venue feed hands the kernel)."""

    kind = "ticks"

    def __init__(self, msgs):
        self.msgs = msgs
        self.total = len(msgs)

    def messages(self):
        return iter(self.msgs)

    def end(self):
        from bus.messages import EndOfData
        return EndOfData(feed="test", count=self.total, last_fseq=self.total)


class QuoteBuyer(Strategy):
    """Buys 0.005 on its first quote; the in-process kernel must hand quotes to on_quote."""

    def __init__(self):
        self.quotes = 0

    def on_quote(self, quote):
        self.quotes += 1
        if self.quotes == 1:
            self.submit(quote.symbol, "buy", 0.005, "market")


def test_the_inprocess_kernel_passes_quotes_to_the_exchange_and_the_strategy(tmp_path):
    from actors.kernel import Backtest
    from bus.messages import Tick
    cfg = config_mod.load("config/backtest.toml", ['strategy.plugin="tests.test_quotes_funds:QuoteBuyer"',
                                                   "strategy.params={}"])
    bt = Backtest(cfg, str(tmp_path), "r1", _Log())
    bt.instruments = INSTRUMENTS
    sym = "BTC/USDT"
    bt.feed = _QuoteFeed([
        Quote(symbol=sym, ts=T0 + 1, bid=100.0, ask=100.5, fseq=1),
        Tick(symbol=sym, ts=T0 + 2, price=90.0, fseq=2),  # a trade print: no fill on a quoted symbol
        Quote(symbol=sym, ts=T0 + 3, bid=101.0, ask=101.5, fseq=3),
    ])
    bt.init("paper-exchange", bt._init_exchange)
    bt.init("strategy", bt._init_strategy)
    bt.run()
    assert bt.host.plugin.quotes == 2
    fills = bt.ledger.fills()
    assert [(r["qty"], r["price"]) for r in fills] == [(0.005, 101.5)]
    with open(tmp_path / "equity.csv") as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    assert [r[4] for r in rows] == ["0", "0", "0.005"]  # a fractional position prints as itself
    # equity: the fee (0.2% of 0.5075) and the half spread (marked at the mid 101.25) below the cash
    assert bt.ex.acct.equity == pytest.approx(1_000_000 - 0.002 * 0.005 * 101.5 + 0.005 * (101.25 - 101.5))
    bt.ex.close()


def test_feed_status_per_symbol_recovery_keeps_the_others_stale(books):
    b = books(fill_on="close")
    b.core.on_feed_status(FeedStatus(feed="f", state="stale"))  # every symbol
    b.core.on_feed_status(FeedStatus(feed="f", state="ok", symbols=["AAA"]))
    assert not b.core._stale("AAA") and b.core._stale("BTC/USDT")
    b.core.on_feed_status(FeedStatus(feed="other", state="ok"))  # another feed's news changes nothing here
    assert b.core._stale("BTC/USDT")
    b.core.on_feed_status(FeedStatus(feed="f", state="ok"))
    assert not b.core._stale("BTC/USDT")


def test_what_open_orders_hold_is_held_again_after_a_restart(tmp_path):
    b = Books(tmp_path, account="cash", initial_cash=10_000.0)
    b.bar("AAA", 100.0, 100.0, 100.0, 100.0)
    assert isinstance(b.submit(sym="AAA", qty=60, order_type="limit", price=90.0), OrderAck)  # holds 5,400
    b.close()
    again = Books(tmp_path, account="cash", initial_cash=10_000.0)
    again.n = 1  # its client order ids go on from c2
    r = again.submit(sym="AAA", qty=50, order_type="limit", price=95.0)  # 4,750 > 10,000 - 5,400
    assert isinstance(r, OrderReject) and "5400.00 held by open buy orders" in r.text
    assert again.core.query().account.buying_power == pytest.approx(4_600.0)
    again.close()

"""The strategy host as a plain object (actors/strategy_host.py): warm-up, pause, the
exchange's flags, the plugin's hooks; no process, no socket. The wiring (subscriptions,
the Query first, history requests) is tested on the real actor in tests/test_strategy.py."""

import pytest

import config as config_mod
from actors.base import UserError
from actors.strategy_host import Refused, StrategyHost
from bus.messages import (
    AccountInfo, AccountUpdate, Bar, EndOfData, Fill, Flatten, Instrument, OrderInfo, OrderReject, OrderUpdate,
    PositionInfo, QueryReply, Quote, SubmitOrder,
)
from actors.strategies.base import Strategy
from tests.harness import Log

pytestmark = pytest.mark.timeout(30)

GOOG = Instrument(symbol="GOOG", kind="equity", tick_size=0.01)
MSFT = Instrument(symbol="MSFT", kind="equity", tick_size=0.01)
# SmaCross(2, 3) on these closes crosses up at bar 7, down at 10, up at 12, down at 14
# (hand-checked in tests/test_strategy.py).
CLOSES = [10, 10, 10, 9, 8, 9, 11, 12, 10, 8, 7, 12, 6, 3, 20]


def bar(i, close, symbol="GOOG"):
    c = float(close)
    return Bar(symbol=symbol, ts=i * 60 * 10**9, open=c, high=c, low=c, close=c, fseq=i + 1)


def host(plugin="actors.strategies.sma_cross:SmaCross", params=None, symbols=(), instruments=(GOOG,), **kw):
    cfg = config_mod.load(None, [f'strategy.plugin="{plugin}"']).strategy
    cfg.params = {"fast": 2, "slow": 3, "qty": 5} if params is None else params
    cfg.symbols = list(symbols)
    sent = []
    h = StrategyHost(cfg, list(instruments), send=sent.append, cl_prefix="t", log=Log(), **kw)
    h.seed(QueryReply())
    h.start()
    return h, sent


def submits(sent):
    return [(m.side, m.qty) for m in sent if isinstance(m, SubmitOrder)]


def test_history_warms_without_trading_pause_keeps_indicators_warm():
    h, sent = host()
    h.warm_up([bar(i, c) for i, c in enumerate(CLOSES[:7])])  # bar 7's up-cross is history: no order
    assert sent == [] and h.context.suppressed == 1 and h.state() == "trading"
    assert h.command("pause") == "paused"
    for i in range(7, 14):  # crosses at bars 10, 12 and 14: all while paused
        h.on_bar(bar(i, CLOSES[i]))
    assert sent == [] and h.context.suppressed == 4 and h.status()["bars"] == 14
    assert h.command("resume") == "trading"
    h.on_bar(bar(14, CLOSES[14]))  # one bar after resume is enough: the SMAs stayed warm
    assert submits(sent) == [("buy", 5)] and sent[0].cl_id == "t-1"
    assert h.command("stop-and-close") == "paused" and isinstance(sent[-1], Flatten)
    with pytest.raises(Refused, match="strategy does not handle command 'halt'"):
        h.command("halt")
    assert [e for lvl, e, _ in h.log.lines if e == "order sent"] == ["order sent"]


def test_the_exchange_flags_gate_orders_and_a_restart_starts_from_them():
    h, sent = host(params={"qty": 1}, plugin="actors.strategies.pingpong:PingPong")
    h.seed(QueryReply(paused=True))  # a restarted strategy under a paused exchange
    assert h.state() == "paused"
    h.on_bar(bar(0, 10))
    assert sent == []
    upd = AccountUpdate(account=AccountInfo(cash=0.0, equity=0.0, initial_cash=0.0), paused=False, halted=False)
    h.on_account(upd)
    h.on_bar(bar(1, 10))  # PingPong wants flat on odd bars: nothing to do
    h.on_bar(bar(2, 10))
    assert submits(sent) == [("buy", 1)]
    h.on_account(AccountUpdate(account=upd.account, paused=True, halted=True))
    assert h.state() == "halted"
    h.on_bar(bar(3, 10))  # would sell the buy in flight: not while halted
    assert submits(sent) == [("buy", 1)] and h.context.suppressed == 2


def test_fills_updates_and_rejects_reach_the_plugin_in_its_own_terms():
    seen = []
    h, sent = host(params={"qty": 2}, plugin="actors.strategies.pingpong:PingPong")
    h.plugin.on_fill = seen.append
    h.plugin.on_order_rejected = seen.append
    h.on_bar(bar(0, 10))
    assert submits(sent) == [("buy", 2)]
    cl = sent[0].cl_id
    h.on_fill(Fill(fill_id=1, order_id=1, cl_id=cl, symbol="GOOG", side="buy", qty=2, price=10.0, position=2))
    h.on_order_update(OrderUpdate(order=OrderInfo(order_id=1, cl_id=cl, symbol="GOOG", side="buy", qty=2, filled=2,
                                                  status="filled")))
    assert h.context.orders == {} and h.context.position("GOOG") == 2
    h.on_fill(Fill(fill_id=2, order_id=9, cl_id="someone-else", symbol="GOOG", side="sell", qty=1, price=10.0,
                   position=1))
    assert [type(x).__name__ for x in seen] == ["Fill"]  # another client's fill moves the position only
    h.on_bar(bar(1, 10))  # flat from the position the exchange reported: sell 1
    assert submits(sent) == [("buy", 2), ("sell", 1)]
    rej = OrderReject(cl_id=sent[-1].cl_id, code="risk-limit", text="no")
    h.on_reject(rej)
    assert seen[-1] is rej and h.status()["rejects"] == 1 and h.context.orders == {}
    h.end_of_data(EndOfData(feed="f", count=3))
    assert h.status()["eod"] == 1


def test_symbols_filter_and_unknown_symbols_are_the_users_error():
    h, sent = host(params={"qty": 1}, plugin="actors.strategies.pingpong:PingPong", symbols=["MSFT"],
                   instruments=(GOOG, MSFT))
    h.on_bar(bar(0, 10, "GOOG"))
    h.on_bar(bar(1, 10, "MSFT"))
    assert [m.symbol for m in sent] == ["MSFT"]
    with pytest.raises(UserError, match=r"strategy.symbols \['NOPE'\] not in the instrument master \(1 instruments\)"):
        host(symbols=["NOPE"])


def test_a_history_bar_seen_again_live_is_fed_once():
    h, _ = host(params={"qty": 1}, plugin="actors.strategies.pingpong:PingPong")
    h.seed(QueryReply(positions=[PositionInfo(symbol="GOOG", qty=-3)]))
    h.warm_up([bar(i, 10) for i in range(3)])
    h.on_bar(bar(2, 10))  # published before the history reply came: already fed
    h.on_bar(bar(3, 10))
    assert h.status()["bars"] == 4 and h.held() == {"GOOG": -3}


class QuoteTaker(Strategy):
    """Buys one step whenever the ask is below ``limit`` (a quote-driven plugin)."""

    def __init__(self, limit: float = 100.0):
        self.limit = limit
        self.seen = []

    def on_quote(self, quote):
        self.seen.append((quote.symbol, quote.bid, quote.ask))
        if quote.ask < self.limit:
            self.submit(quote.symbol, "buy", self.instruments[quote.symbol].lot_size, "market")


def test_quotes_reach_the_plugins_on_quote_for_its_symbols_only():
    btc = Instrument(symbol="BTC/USDT", kind="crypto", tick_size=0.01, lot_size=0.001)
    h, sent = host(plugin="tests.test_strategy_host:QuoteTaker", params={"limit": 100.0}, symbols=["BTC/USDT"],
                   instruments=(GOOG, btc))
    h.on_quote(Quote(symbol="GOOG", ts=1, bid=98.0, ask=99.0))  # not traded: never reaches the plugin
    h.on_quote(Quote(symbol="BTC/USDT", ts=2, bid=101.0, ask=102.0))
    h.on_quote(Quote(symbol="BTC/USDT", ts=3, bid=98.5, ask=99.5))
    assert h.plugin.seen == [("BTC/USDT", 101.0, 102.0), ("BTC/USDT", 98.5, 99.5)]
    assert [(m.symbol, m.side, m.qty) for m in sent] == [("BTC/USDT", "buy", 0.001)]

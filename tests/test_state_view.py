"""StateView: the figures the monitor shows, checked against hand-computed numbers."""

import json
import math

import pytest

from actors.state_view import KEYS, YEAR_NS, StateView
from bus import messages as m

pytestmark = pytest.mark.timeout(10)

DAY = 86_400 * 10**9


def acct(cash, initial, realized=0.0, fees=0.0, positions=()):
    return m.AccountUpdate(account=m.AccountInfo(cash=cash, equity=0.0, initial_cash=initial, realized=realized,
                                                 fees=fees), positions=list(positions))


def pos(sym, qty, avg, mark=0.0):
    return m.PositionInfo(symbol=sym, qty=qty, avg_price=avg, mark=mark)


def bar(sym, ts, close):
    return m.Bar(symbol=sym, ts=ts, open=close, high=close, low=close, close=close)


def fill(i, realized=0.0, fee=0.0, side="buy", qty=1, price=10.0, position=1):
    return m.Fill(fill_id=i, order_id=i, cl_id=f"c{i}", symbol="GOOG", side=side, qty=qty, price=price, fee=fee,
                  ts=i, position=position, realized=realized)


def order(oid, status, filled=0):
    return m.OrderUpdate(order=m.OrderInfo(order_id=oid, cl_id=f"c{oid}", symbol="GOOG", side="buy", qty=10,
                                           filled=filled, order_type="limit", price=9.5, status=status))


def test_marks_positions_with_latest_prices_and_multiplier():
    v = StateView("run-1")
    inst = [m.Instrument(symbol="GOOG", kind="equity", tick_size=0.01),
            m.Instrument(symbol="ES", kind="future", tick_size=0.25, multiplier=50.0)]
    assert v.apply(m.InstrumentsReply(instruments=inst, option_mappings=2)) == {"instruments"}
    assert v.value("instruments") == {"count": 2, "option_mappings": 2, "kinds": {"equity": 1, "future": 1},
                                      "known": True}
    # bought 10 GOOG @ 100 (cash -1000), sold 2 ES @ 4000 x 50 (cash +400000)
    v.apply(acct(1_399_000.0, 1_000_000.0, positions=[pos("GOOG", 10, 100.0, 100.0), pos("ES", -2, 4000.0, 4000.0)]))
    a = v.value("account")
    assert a["equity"] == 1_000_000.0 and a["unrealized"] == 0.0 and a["known"]
    assert v.apply(bar("GOOG", DAY, 105.0)) >= {"market", "positions", "account", "performance"}
    assert v.apply(m.Tick(symbol="ES", ts=DAY, price=3990.0)) >= {"positions", "account"}
    p = v.value("positions")
    assert p["GOOG"]["last"] == 105.0 and p["GOOG"]["mtm"] == 50.0 and p["GOOG"]["market_value"] == 1050.0
    assert p["ES"]["mtm"] == 1000.0 and p["ES"]["market_value"] == -399_000.0 and p["ES"]["multiplier"] == 50.0
    a = v.value("account")
    # equity = 1399000 + 10*105 - 2*3990*50 = 1001050; Total MTM = 50 + 1000
    assert a["equity"] == 1_001_050.0 and a["unrealized"] == 1050.0 and a["gross_exposure"] == 400_050.0
    assert v.value("performance")["total_return"] == pytest.approx(0.00105)
    # a symbol we do not hold moves only the market key
    assert v.apply(bar("MSFT", DAY, 300.0)) == {"market"}
    assert v.value("market")["last"] == {"ES": 3990.0, "GOOG": 105.0, "MSFT": 300.0}
    assert v.value("market")["updates"] == 3


def test_without_market_data_the_exchange_mark_is_used():
    v = StateView()
    v.apply(acct(0.0, 1000.0, positions=[pos("GOOG", 10, 100.0, 90.0), pos("X", 5, 10.0)]))
    p = v.value("positions")
    assert p["GOOG"]["last"] == 90.0 and p["GOOG"]["mtm"] == -100.0
    assert p["X"]["last"] == 10.0 and p["X"]["mtm"] == 0.0  # no mark at all: the average price
    assert v.value("account")["equity"] == 950.0


def test_drawdown_sharpe_and_total_return_from_equity_samples():
    v = StateView()
    v.apply(acct(1000.0, 2000.0, positions=[pos("GOOG", 100, 10.0)]))  # equity = 1000 + 100 * price
    for day, price in enumerate([10.0, 11.0, 9.5, 10.5], start=1):
        v.apply(bar("GOOG", day * DAY, price))
    v.apply(m.EndOfData(feed="replay", count=4))
    perf = v.value("performance")
    # equity per day: 2000, 2100, 1950, 2050; peak 2100 then 1950
    assert perf["max_drawdown"] == pytest.approx(150 / 2100)
    assert perf["drawdown"] == pytest.approx(50 / 2100)
    assert perf["total_return"] == pytest.approx(0.025)
    assert perf["samples"] == 4
    r = [2100 / 2000 - 1, 1950 / 2100 - 1, 2050 / 1950 - 1]
    mean = sum(r) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    assert perf["sharpe"] == pytest.approx(mean / sd * math.sqrt(YEAR_NS / DAY), abs=1e-4)
    assert v.value("market")["eod"] is True


def test_sharpe_needs_two_returns():
    v = StateView()
    v.apply(acct(1000.0, 2000.0, positions=[pos("GOOG", 100, 10.0)]))
    v.apply(bar("GOOG", DAY, 10.0))
    v.apply(bar("GOOG", 2 * DAY, 11.0))
    v.apply(m.EndOfData(feed="f", count=2))
    assert v.value("performance")["sharpe"] is None and v.value("performance")["samples"] == 2


def test_win_rate_and_trade_count_come_from_closing_fills():
    v = StateView(last_trades=3)
    v.apply(acct(1000.0, 1000.0))
    assert v.value("performance")["win_rate"] is None  # no trades yet: unknown, not 0 %
    for f in [fill(1), fill(2, realized=50.0, fee=1.0, side="sell", position=0), fill(3),
              fill(4, realized=-20.0, side="sell", position=0), fill(5)]:
        assert v.apply(f, ts_ns=1000 + f.fill_id) == {"trades", "performance"}
    perf = v.value("performance")
    assert (perf["trades"], perf["wins"], perf["losses"], perf["fills"]) == (2, 1, 1, 5)
    assert perf["win_rate"] == 0.5 and perf["realized_from_fills"] == 30.0 and perf["complete"]
    trades = v.value("trades")
    assert [t["fill_id"] for t in trades] == [3, 4, 5]  # the last N, oldest first
    assert trades[1] == {"fill_id": 4, "order_id": 4, "cl_id": "c4", "symbol": "GOOG", "side": "sell", "qty": 1,
                         "price": 10.0, "fee": 0.0, "realized": -20.0, "position": 0, "ts": 4, "at_ns": 1004}


def test_history_before_the_view_started_is_flagged_not_zeroed():
    v = StateView()
    v.apply(acct(1500.0, 1000.0, realized=500.0, fees=3.0))
    perf = v.value("performance")
    assert perf["complete"] is False and perf["win_rate"] is None and perf["total_return"] == 0.5


def test_open_orders_follow_order_updates():
    v = StateView()
    assert v.apply(order(7, "new")) == {"orders"}
    assert v.apply(order(7, "new")) == set()  # same again: no change
    assert v.apply(order(7, "partially-filled", filled=4)) == {"orders"}
    assert v.value("orders")["7"]["filled"] == 4 and v.value("orders")["7"]["status"] == "partially-filled"
    assert v.apply(order(7, "filled", filled=10)) == {"orders"}
    assert v.value("orders") == {}
    assert v.apply(order(8, "cancelled")) == set()  # never open here: nothing to remove


def test_query_reply_sets_account_positions_and_open_orders():
    v = StateView()
    reply = m.QueryReply(positions=[pos("GOOG", -5, 20.0, 21.0)], account=m.AccountInfo(
        cash=1100.0, equity=995.0, initial_cash=1000.0),
        orders=[order(1, "new").order, order(2, "filled").order])
    assert v.apply(reply) >= {"account", "positions", "orders"}
    assert list(v.value("orders")) == ["1"]
    assert v.value("account")["equity"] == 995.0  # 1100 - 5 * 21
    assert v.value("positions")["GOOG"]["mtm"] == -5.0


def test_actor_events_and_republished_states():
    v = StateView()
    # the strategy's state is part of the trading summary too
    assert v.apply(m.ActorEvent(actor="strategy", state="starting", pid=5), ts_ns=100) == {"actors", "trading"}
    assert v.apply(m.ActorEvent(actor="strategy", state="running", pid=5, detail="go"), ts_ns=200) == {
        "actors", "trading"}
    # the supervisor republishes every second with no detail: not a change
    assert v.apply(m.ActorEvent(actor="strategy", state="running", pid=5), ts_ns=300) == set()
    assert v.value("actors") == {"strategy": {"state": "running", "pid": 5, "restarts": 0, "detail": "go",
                                              "since_ns": 200}}
    assert v.apply(m.ActorEvent(actor="strategy", state="running", pid=9, restarts=1), ts_ns=400) == {"actors"}
    assert v.value("actors")["strategy"]["since_ns"] == 400
    assert v.apply(m.ActorEvent(actor="market-data", state="running", pid=7), ts_ns=500) == {"actors"}


def test_snapshot_is_plain_json_and_unknown_input_changes_nothing():
    v = StateView("r")
    assert v.apply(m.Heartbeat()) == set()
    assert v.set_counters({"snapshots": 1}) == {"counters"} and v.set_counters({"snapshots": 1}) == set()
    snap = v.snapshot()
    assert tuple(snap) == KEYS and json.loads(json.dumps(snap)) == snap
    with pytest.raises(KeyError, match="unknown view key"):
        v.value("nope")


def test_sharpe_samples_at_most_once_a_minute_of_market_time():
    """Live bars of 0.1 s: sampled every bar, a few seconds of noise annualised into a
    Sharpe of thousands. At most one sample a minute: none shown until it means something."""
    v = StateView()
    v.apply(acct(1000.0, 2000.0, positions=[pos("SYN1", 100, 10.0)]))
    tenth = 10**8
    for i in range(1, 300):  # 30 s of 0.1 s bars, jittering
        v.apply(bar("SYN1", i * tenth, 10.0 + (0.01 if i % 2 else -0.01)))
    perf = v.value("performance")
    assert perf["samples"] == 1 and perf["sharpe"] is None
    for i in range(1, 4):  # then a bar a minute apart, three times: three returns
        v.apply(bar("SYN1", i * 60 * 10**9 + 30 * 10**9, 10.0 + i * 0.1))
    v.apply(m.EndOfData(feed="f", count=0))
    perf = v.value("performance")
    assert perf["samples"] == 4 and perf["sharpe"] is not None and abs(perf["sharpe"]) < 1e6


def test_feed_status_is_the_feed_key():
    from actors.state_view import StateView
    from bus.messages import FeedStatus
    v = StateView()
    assert v.value("feed")["known"] is False and v.value("feed")["state"] == "unknown"
    st = FeedStatus(feed="ccxt:binance", state="stale", since=5, last_data=4, detail="no data", symbols=["BTC/USDT"])
    assert v.apply(st) == {"feed"}
    assert v.value("feed") == {"known": True, "feed": "ccxt:binance", "state": "stale", "since_ns": 5,
                               "last_data_ns": 4, "detail": "no data", "symbols": ["BTC/USDT"]}
    assert v.apply(st) == set()  # the repeated status changes nothing: no delta
    assert "feed" in v.snapshot()

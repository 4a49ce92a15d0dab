"""The feed adapter API's logic without sockets: candle closing, bar gaps and duplicates,
feed health, value checks, the symbol master's cache, the ccxt market mapping, the
config keys, plugin loading, and recordings (write, then replay)."""

import json
import os

import pytest

import config as config_mod
from actors.base import UserError
from actors.feed_api import (
    BarSequencer, CandleCloser, FeedAdapter, FeedHealth, FeedOut, InstrumentCache, UnknownSymbols, VenueError,
    load_adapter, load_master,
)
from actors.adapters.ccxt_feed import market_to_instrument
from actors.recorder import Recorder, RecordingReplay, is_recording
from bus.messages import Bar, Instrument, Quote, Tick
from tests.harness import Log

pytestmark = pytest.mark.timeout(60)
S = 1_000_000_000


def test_candle_closer_closes_on_the_next_start_and_ignores_late_updates():
    c = CandleCloser()
    assert c.update("X", (0, 1, 1, 1, 1, 1)) is None
    assert c.update("X", (0, 1, 2, 1, 2, 3)) is None  # the same candle, updated
    assert c.update("X", (S, 2, 2, 2, 2, 1)) == (0, 1, 2, 1, 2, 3)  # the next one closes it, as last seen
    assert c.update("X", (0, 9, 9, 9, 9, 9)) is None  # late update of a closed candle
    assert c.forming["X"][0] == S
    c.reset()
    assert c.update("X", (2 * S, 3, 3, 3, 3, 1)) is None  # after a reset the first update closes nothing


def test_bar_sequencer_drops_duplicates_and_reports_gaps():
    q = BarSequencer(S)
    assert q.gap("X", 5 * S) is None and q.accept("X", 5 * S)
    assert q.gap("X", 6 * S) is None and q.accept("X", 6 * S)
    assert not q.accept("X", 6 * S) and not q.accept("X", 4 * S)
    assert q.duplicates == 2
    assert q.gap("X", 9 * S) == 7 * S  # 7 and 8 are missing
    assert q.gap("Y", 9 * S) is None  # another symbol has its own sequence


def test_feed_out_gap_is_left_for_the_backfill_and_bad_values_are_counted():
    sent = []
    out = FeedOut({"X"}, sent.append, S, Log())
    for ts in (0, S, 2 * S):
        out.candle("X", ts, 1.0, 2.0, 0.5, 1.5, 0.25)
    assert [b.ts for b in sent] == [0, S]
    out.candle("X", 5 * S, 1.0, 1.0, 1.0, 1.0, 0.0)  # closes 2s
    out.candle("X", 6 * S, 1.0, 1.0, 1.0, 1.0, 0.0)  # closes 5s: 3 and 4 are missing
    assert [b.ts for b in sent] == [0, S, 2 * S] and out.gaps == [("X", 3 * S, 5 * S)]
    out.trade("X", 7, float("nan"), 1.0)
    out.trade("X", 7, 1.0, -1.0)
    out.quote("X", 7, "abc", 2.0)
    out.quote("Y", 7, 1.0, 2.0)  # unknown symbol
    out.candle("X", None, 1, 1, 1, 1, 1)
    assert out.bad_count == 5
    out.trade("X", 7, 1.5, 0.003)
    out.quote("X", 8, 1.0, 1.1, 0.5, None)
    assert sent[-2:] == [Tick(symbol="X", ts=7, price=1.5, size=0.003),
                         Quote(symbol="X", ts=8, bid=1.0, ask=1.1, bid_size=0.5, ask_size=0.0)]


def test_after_a_reconnect_candles_from_before_it_come_only_by_rest():
    """ccxt keeps its candle cache across a reconnect: the partial candle of before the
    drop comes back with the new connection. It must not be closed and published (it
    lacks its last trades), nor may the candle forming at the reconnect (it may get no
    update on the new connection): both are left to REST, as a gap."""
    sent = []
    out = FeedOut({"X"}, sent.append, S, Log())
    out.candle("X", 0, 1.0, 1.0, 1.0, 1.0, 1.0)
    out.candle("X", S, 1.0, 1.0, 1.0, 1.0, 0.5)  # closes 0; 1s forming, partial
    # dropped at 1.7s; the new connection starts at 3.4s (3s forming)
    out.reconnecting(int(3.4 * S))
    out.candle("X", S, 1.0, 1.0, 1.0, 1.0, 0.5)  # the stale cached copy of 1s
    out.candle("X", 3 * S, 2.0, 2.0, 2.0, 2.0, 0.1)  # 3s, begun before the new connection
    out.candle("X", 4 * S, 2.0, 2.0, 2.0, 2.0, 0.1)  # the first the stream gives whole
    out.candle("X", 5 * S, 2.0, 2.0, 2.0, 2.0, 0.1)  # closes 4s: 1s to 3s are left to REST
    assert [b.ts for b in sent] == [0] and out.gaps == [("X", S, 4 * S)]


def test_feed_health_stale_reconnecting_and_recovery():
    h = FeedHealth("f", ["A", "B"], 2 * S, 0)
    assert h.state == "ok" and not h.check(S)
    h.data("A", 2 * S)
    assert h.check(int(2.5 * S)) and h.state == "stale" and h.stale_symbols == ["B"]
    assert h.check(5 * S) and h.stale_symbols == [] and "no data for over 2 s" in h.detail  # all silent
    assert h.data("B", 6 * S) and h.state == "stale" and h.stale_symbols == ["A"]
    assert h.data("A", 6 * S) and h.state == "ok" and h.since == 6 * S
    assert h.reconnecting("ConnectionError: gone", 7 * S) and h.state == "reconnecting"
    assert not h.check(20 * S)  # reconnecting holds until data flows
    h.data("A", 21 * S)
    assert h.state == "stale" and h.stale_symbols == ["B"]
    st = h.status()
    assert (st.state, st.last_data, st.symbols) == ("stale", 21 * S, ["B"])


class FakeAdapter(FeedAdapter):
    name = "fake:venue"

    def __init__(self, result):
        super().__init__(None, {})
        self.result = result

    def fetch_instruments(self, symbols):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


BTC = Instrument(symbol="BTC/USDT", kind="crypto", tick_size=0.01, lot_size=0.00001, currency="USDT",
                 min_qty=0.00001, min_notional=5.0, base="BTC", venue_symbol="BTCUSDT")


def test_master_cache_used_only_when_the_download_fails_and_young_enough(run_dir):
    log = Log()
    insts, warns = load_master(FakeAdapter([BTC]), ["BTC/USDT"], run_dir, 60.0, log)
    assert insts == [BTC] and warns == []
    with open(os.path.join(run_dir, "instruments.json")) as f:
        doc = json.load(f)
    assert doc["venue"] == "fake:venue" and doc["fetched_ns"] > 0
    insts, warns = load_master(FakeAdapter(ConnectionError("venue down")), ["BTC/USDT"], run_dir, 60.0, log)
    assert insts == [BTC] and "venue down" in warns[0] and "using the cached master" in warns[0]
    with pytest.raises(VenueError, match=r"venue down.*instruments_max_age_s = 0"):
        load_master(FakeAdapter(ConnectionError("venue down")), ["BTC/USDT"], run_dir, 0.0, log)
    with pytest.raises(VenueError, match="lacks ETH/USDT"):
        load_master(FakeAdapter(ConnectionError("venue down")), ["BTC/USDT", "ETH/USDT"], run_dir, 60.0, log)
    with pytest.raises(UnknownSymbols, match="DOGE/USDT not listed by fake:venue"):
        load_master(FakeAdapter([BTC]), ["BTC/USDT", "DOGE/USDT"], run_dir, 60.0, log)
    os.unlink(os.path.join(run_dir, "instruments.json"))
    with pytest.raises(VenueError, match="no cached master"):
        load_master(FakeAdapter(ConnectionError("venue down")), ["BTC/USDT"], run_dir, 60.0, log)
    # The cache is readable by the instrument loader (a replay names it as its master).
    from actors import instruments
    load_master(FakeAdapter([BTC]), ["BTC/USDT"], run_dir, 60.0, log)
    assert instruments.load(InstrumentCache(run_dir, "x").path)[0] == [BTC]


def test_ccxt_markets_become_instruments():
    spot = {"symbol": "BTC/USDT", "type": "spot", "id": "BTCUSDT", "base": "BTC", "quote": "USDT",
            "precision": {"price": 0.01, "amount": 0.00001},
            "limits": {"amount": {"min": 0.00001}, "cost": {"min": 5.0}}, "contractSize": None}
    assert market_to_instrument(spot, 4) == BTC  # 4 = ccxt.TICK_SIZE
    swap = {"symbol": "BTC/USDT:USDT", "type": "swap", "id": "BTCUSDT", "base": "BTC", "quote": "USDT",
            "settle": "USDT", "precision": {"price": 1, "amount": 3}, "limits": {}, "contractSize": 0.001}
    i = market_to_instrument(swap, 2)  # 2 = DECIMAL_PLACES: digits, not steps
    assert (i.kind, i.tick_size, i.lot_size, i.multiplier, i.currency) == ("perpetual", 0.1, 0.001, 0.001, "USDT")
    fut = {**swap, "symbol": "BTC/USD:BTC-261225", "type": "future", "settle": "BTC", "expiryDatetime":
           "2026-12-25T08:00:00.000Z"}
    i = market_to_instrument(fut, 2)
    assert (i.kind, i.currency, i.expiry) == ("future", "BTC", "2026-12-25")
    with pytest.raises(ValueError, match="market type 'option'"):
        market_to_instrument({**spot, "type": "option"}, 4)


def _md(**kw):
    return config_mod.load(None, [f"market_data.{k}={v}" for k, v in kw.items()]).market_data


def test_feed_config_keys_are_checked():
    for bad, needle in [('feed="nonsense"', "key market_data.feed: 'nonsense'"),
                        ('feed="ccxt"', "key market_data.venue: required"),
                        ('urls={rest="http://x", wss="ws://y"}', "unknown key market_data.urls.wss"),
                        ('record=true', "key market_data.record"),
                        ('stale_after_s=0', "market_data.stale_after_s"),
                        ('colour=1', "unknown key market_data.colour"),
                        ('reconnect_silent_s=5', "key market_data.reconnect_silent_s: must be > stale_after_s")]:
        with pytest.raises(config_mod.ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
            config_mod.load(None, [f"market_data.{bad}"])
    assert config_mod.load(None, ['market_data.feed="mypkg.feeds:MyFeed"']).market_data.feed == "mypkg.feeds:MyFeed"
    with pytest.raises(config_mod.ConfigError, match="key market_data.instruments: the ccxt feed takes"):
        config_mod.load(None, ['market_data.feed="ccxt"', 'market_data.venue="binance"',
                               'market_data.instruments="data/sample/instruments.csv"'])


def test_plugin_paths_are_user_errors_naming_the_key():
    for feed, needle in [("nosuch_mod_xyz:Feed", "cannot import module 'nosuch_mod_xyz'"),
                         ("actors.feed_api:Nope", "has no class 'Nope'"),
                         ("actors.feed_api:FeedHealth", "not a subclass of actors.feed_api.FeedAdapter")]:
        with pytest.raises(UserError, match=f"market_data.feed = '{feed}': .*{needle}"):
            load_adapter(_md(feed=f'"{feed}"'))
    with pytest.raises(UserError, match="not a ccxt exchange id"):
        load_adapter(_md(feed='"ccxt"', venue='"nosuchvenue"'))
    a = load_adapter(_md(feed='"ccxt"', venue='"binance"', timeframe='"1s"'))
    assert a.name == "ccxt:binance" and a.bar_interval_ns == S


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_recording_round_trip_keeps_order_and_fractional_sizes(run_dir, fmt):
    msgs = []
    for k in range(250):
        msgs.append(Quote(symbol="BTC/USDT", ts=k * S, bid=100.0 + k, ask=100.5 + k, bid_size=0.25, ask_size=1.5))
        msgs.append(Tick(symbol="BTC/USDT", ts=k * S + 1, price=100.25 + k, size=0.00123))
        if k % 10 == 9:
            msgs.append(Bar(symbol="BTC/USDT", ts=(k - 9) * S, open=1.0, high=2.0, low=0.5, close=1.5, volume=0.75))
    rec = Recorder(run_dir, fmt, 100)  # many row groups / flushes
    for i, m in enumerate(msgs):
        rec.write(m, 10 ** 18 + i)
    rec.close()
    assert rec.rows == len(msgs) and is_recording(rec.path)
    again = Recorder(run_dir, fmt, 100)  # a restarted market-data: a file of its own
    again.close()
    assert again.path.endswith(f"recording-2.{fmt}") and RecordingReplay(_md(kind='"all"'), {"BTC/USDT": BTC},
                                                                          rec.path).total == len(msgs)
    insts = {"BTC/USDT": BTC}
    got = list(RecordingReplay(_md(kind='"all"'), insts, rec.path).messages())
    assert got == msgs
    bars = RecordingReplay(_md(kind='"bars"'), insts, rec.path)
    assert bars.total == 25 and [r for c in bars.chunks(7) for r in c][0] == ("BTC/USDT", 0, 1.0, 2.0, 0.5, 1.5, 0.75)
    assert RecordingReplay(_md(kind='"ticks"'), insts, rec.path).total == 250


def test_recording_bad_rows_are_skipped_and_counted(run_dir):
    p = os.path.join(run_dir, "recording.csv")
    with open(p, "w") as f:
        f.write("recv_ns,type,symbol,ts,open,high,low,close,volume,price,size,bid,ask,bid_size,ask_size\n"
                "1,tick,BTC/USDT,5,,,,,,100.5,0.5,,,,\n"
                "2,tick,BTC/USDT,6,,,,,,abc,0.5,,,,\n"
                "3,tick,DOGE/USDT,7,,,,,,1,1,,,,\n"
                "4,trade,BTC/USDT,8,,,,,,1,1,,,,\n")
    r = RecordingReplay(_md(kind='"all"'), {"BTC/USDT": BTC}, p)
    assert r.total == 1 and r.skipped == 3 and "row 3: column 'price': 'abc'" in r.warnings[0]
    with pytest.raises(UserError, match="row 3: column 'price'"):
        RecordingReplay(_md(kind='"all"', on_bad_row='"error"'), {"BTC/USDT": BTC}, p)


def test_backfill_publishes_the_closed_candles_in_order_and_keeps_the_forming_one():
    import asyncio
    import time

    from actors.feed_api import FeedThread

    now = time.time_ns() // S * S
    rows = [(now - k * S, 1.0, 2.0, 0.5, 1.5, 0.25) for k in (6, 5, 4, 3, 0)]  # 0: still forming

    class Backfilling(FakeAdapter):
        bar_interval_ns = S

        async def backfill(self, symbol, since_ns):
            return [r for r in rows if r[0] >= since_ns]

    class Port:
        sent = []

        def send(self, m):
            self.sent.append(m)

    md = _md()
    t = FeedThread(Backfilling([BTC]), Port(), ["BTC/USDT"], md, Log())
    t.out.seq.accept("BTC/USDT", now - 6 * S)  # the last bar published before the outage
    assert asyncio.run(t._backfill("BTC/USDT", now - 5 * S)) == 3
    assert [b.ts for b in Port.sent] == [now - 5 * S, now - 4 * S, now - 3 * S]
    assert t.out.closer.forming["BTC/USDT"][0] == now  # the stream's updates go on from it
    assert asyncio.run(t._backfill("BTC/USDT", now - 6 * S)) == 0  # again: nothing twice
    t.out.closer.forming["BTC/USDT"] = (now, 1.0, 3.0, 0.5, 2.5, 0.75)  # the stream's fresher update
    asyncio.run(t._backfill("BTC/USDT", now - 6 * S))
    assert t.out.closer.forming["BTC/USDT"][4] == 2.5  # not replaced by the older REST answer
    # A last candle that ended long ago is closed even with nothing after it.
    rows[:] = [(now - 9 * S, 1.0, 1.0, 1.0, 1.0, 0.0)]
    t.out.seq.last.clear()
    assert asyncio.run(t._backfill("BTC/USDT", 0)) == 1 and Port.sent[-1].ts == now - 9 * S

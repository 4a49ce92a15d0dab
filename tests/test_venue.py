"""Live market data from a venue: the real supervisor and actors, the ccxt adapter, and a
local fake of Binance spot (scripts/fake_venue.py) on 127.0.0.1 speaking its wire format.

Each test scripts the venue (a slow symbol master, a dropped WebSocket, silence, HTTP
429, malformed messages, a symbol it does not list, being down) and checks what
market-data does: READY after the master, no duplicate and no missing closed bar
across a reconnect (backfilled over REST), stale then ok on md.status and in the
state view, back-off and recovery, counting what it cannot read.
"""

import csv
import json
import os
import subprocess
import pytest
import zmq

from bus.codec import Stamper
from bus.messages import FeedStatus
from bus.sockets import Endpoints, open_port
from scripts import testkit
from scripts.fake_venue import VenueProc

pytestmark = pytest.mark.timeout(90)

FAST = ["market_data.stale_after_s=1.0", "market_data.reconnect_silent_s=10.0", "market_data.reconnect_initial_s=0.2",
        "market_data.reconnect_max_s=1.0",
        "market_data.rate_limit_backoff_s=1.0", "market_data.request_timeout_s=5.0",
        'market_data.record=true', 'market_data.record_format="csv"', "market_data.record_rows=100"]


@pytest.fixture
def venue(procs, data_dir):
    v = VenueProc(procs.spawn, data_dir)
    yield v
    v.stop()


def start(procs, run_dir, venue, extra=(), **kw):
    return testkit.start_supervisor(run_dir, testkit.DEFAULT_CONFIG, [*venue.sets(), *FAST, *extra],
                                    spawn=procs.spawn, stderr=subprocess.PIPE, **kw)


def md_status(run_dir):
    return testkit.field(run_dir, "actors", "market-data", "status", default={}) or {}


def wait_md(run_dir, pred, timeout, what):
    return testkit.wait_for(lambda: pred(md_status(run_dir)), timeout, what)


def recorded(run_dir, typ="bar"):
    """The recording so far, rows of one type (the recorder flushes every record_rows rows and at stop)."""
    with open(os.path.join(run_dir, "recording.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("type") == typ]


def view(run_dir, *keys):
    """A value of the state view as the state-publisher wrote it to status.json (None if not there yet)."""
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            d = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def log_text(run_dir, process):
    with open(os.path.join(run_dir, "logs", f"{process}.jsonl"), encoding="utf-8") as f:
        return f.read()


def test_slow_symbol_master_ready_waits_and_nothing_downstream_starts_before(procs, run_dir, venue):
    venue.ctl(exchange_info_delay_s=2.0)
    p = start(procs, run_dir, venue)
    try:
        ev = testkit.log_events(run_dir)
        ready = next(e for e in ev if e.get("event") == "actor ready" and e.get("actor") == "market-data")
        assert ready["init_s"] >= 2.0  # init (the master download) held READY back
        started = [e for e in ev if e.get("event") == "actor started"]
        exch = next(e for e in started if e["actor"] == "paper-exchange")
        assert exch["timestamp"] >= ready["timestamp"], "the exchange started before market-data was READY"
        assert venue.state()["counts"]["exchange_info"] == 1
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 20, 20, "live data flowing")
        st = md_status(run_dir)
        assert st["feed"] == "ccxt:binance" and st["feed_state"] == "ok" and st["instruments"] == 2
    finally:
        assert testkit.shutdown(p, run_dir) == 0


def _closed_bars(run_dir):
    out = {}
    for r in recorded(run_dir):
        out.setdefault(r["symbol"], []).append((int(r["ts"]), *(float(r[k]) for k in
                                                                 ("open", "high", "low", "close", "volume"))))
    return out


def test_disconnect_reconnect_no_duplicate_no_missing_bar(procs, run_dir, venue):
    p = start(procs, run_dir, venue)
    try:
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 50, 20, "data before the drop")
        testkit.wait_for(lambda: len(_recorded_now(run_dir)) >= 6, 20, "closed bars before the drop")
        venue.ctl(refuse_ws_s=2.5, drop_ws=True)  # down for >2 intervals: the bars in between must be backfilled
        wait_md(run_dir, lambda s: s.get("reconnects", 0) >= 1, 10, "a reconnect")
        wait_md(run_dir, lambda s: s.get("backfilled", 0) >= 2 and s.get("feed_state") == "ok", 30,
                "bars backfilled and the feed ok")
        n0 = md_status(run_dir)["fseq"]
        wait_md(run_dir, lambda s: s["fseq"] > n0 + 120, 20, "data after the reconnect")
    finally:
        assert testkit.shutdown(p, run_dir) == 0
    truth = {s.replace("USDT", "/USDT"): [(k[0] * 1_000_000, *map(float, k[1:])) for k in ks]
             for s, ks in venue.state()["closed"].items()}
    bars = _closed_bars(run_dir)
    assert set(bars) == {"BTC/USDT", "ETH/USDT"}
    iv = 1_000_000_000
    for sym, got in bars.items():
        ts = [b[0] for b in got]
        assert len(ts) == len(set(ts)), f"{sym}: duplicate bars"
        assert all(b - a == iv for a, b in zip(ts, ts[1:])), f"{sym}: missing bars: {ts}"
        assert ts[-1] - ts[0] >= 7 * iv  # before, during and after the outage
        want = {t[0]: t for t in truth[sym]}
        for b in got[1:]:  # the first may be a candle joined mid-way; every other is the venue's whole candle
            assert b == pytest.approx(want[b[0]]), f"{sym} bar {b[0]} differs from the venue's"
    assert "bars backfilled after reconnect" in log_text(run_dir, "market-data")


def _recorded_now(run_dir):
    # The recorder flushes every 100 rows: the file grows while the run goes on (it can be
    # empty, or end in a partial row: rows without a type are not counted).
    try:
        return recorded(run_dir)
    except FileNotFoundError:
        return []


def test_stale_feed_and_recovery_on_md_status_and_in_the_state_view(procs, run_dir, venue):
    p = start(procs, run_dir, venue)
    ctx = zmq.Context()
    sub = open_port(ctx, Endpoints.from_run_dir(run_dir), "md", bind=False, stamper=Stamper("t", ""),
                    subscribe=["md.status"])
    try:
        seen = []

        def next_status(timeout):
            if sub.sock.poll(int(timeout * 1000)):
                m = sub.recv().msg
                assert isinstance(m, FeedStatus)
                seen.append(m)
                return m
            return None

        # A late subscriber learns the state within a second (it is repeated).
        assert testkit.wait_for(lambda: next_status(0.5), 5, "a feed-status")
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 20, 20, "data flowing")
        testkit.wait_for(lambda: (m := next_status(0.5)) is not None and m.state == "ok" and m.last_data, 5, "ok")
        venue.ctl(silent_s=3.0)
        testkit.wait_for(lambda: (m := next_status(0.5)) is not None and m.state == "stale", 10, "stale")
        stale = seen[-1]
        assert stale.feed == "ccxt:binance" and "no data" in stale.detail and stale.last_data > 0
        testkit.wait_for(lambda: view(run_dir, "feed", "state") == "stale", 5, "the view shows stale")
        assert view(run_dir, "feed", "known") is True
        testkit.wait_for(lambda: (m := next_status(0.5)) is not None and m.state == "ok", 15, "ok again")
        assert seen[-1].since > stale.since
        testkit.wait_for(lambda: view(run_dir, "feed", "state") == "ok", 5, "the view shows ok")
        assert md_status(run_dir).get("reconnects", 0) == 0  # a short silence is not a disconnect
        ev = [e for e in testkit.log_events(run_dir, "market-data") if e.get("event") == "feed status"]
        assert [e["state"] for e in ev][-2:] == ["stale", "ok"]
    finally:
        sub.close()
        ctx.term()
        assert testkit.shutdown(p, run_dir) == 0


def test_http_429_backs_off_and_recovers(procs, run_dir, venue):
    p = start(procs, run_dir, venue)
    try:
        # Closed bars first (40 messages a second, a bar a second per symbol): the reconnect then
        # backfills over REST, and the 429s make it fail, back off, and try again.
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 150, 30, "data flowing")
        venue.ctl(http_429=3, drop_ws=True)
        wait_md(run_dir, lambda s: s.get("reconnects", 0) >= 2, 40, "reconnects through the 429s")
        n0 = md_status(run_dir)["fseq"]
        wait_md(run_dir, lambda s: s["fseq"] > n0 + 30 and s["feed_state"] == "ok", 30, "data again")
    finally:
        assert testkit.shutdown(p, run_dir) == 0
    assert venue.state()["counts"]["429"] == 3
    ev = [e for e in testkit.log_events(run_dir, "market-data") if e.get("event") == "feed disconnected; reconnecting"]
    limited = [e for e in ev if "DDoSProtection" in e["error"] or "RateLimit" in e["error"]]
    assert limited, ev
    assert all(e["wait_s"] >= 1.0 for e in limited)  # rate_limit_backoff_s


def test_malformed_venue_messages_counted_logged_no_crash(procs, run_dir, venue):
    p = start(procs, run_dir, venue)
    try:
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 20, 20, "data flowing")
        pid = testkit.actor_pids(run_dir)["market-data"]
        venue.ctl(malformed=12)
        wait_md(run_dir, lambda s: s.get("malformed", 0) >= 6, 20, "malformed messages counted")
        n0 = md_status(run_dir)["fseq"]
        wait_md(run_dir, lambda s: s["fseq"] > n0 + 30, 20, "data still flowing")
        assert testkit.actor_pids(run_dir)["market-data"] == pid
        assert testkit.field(run_dir, "actors", "market-data", "restarts") == 0
    finally:
        assert testkit.shutdown(p, run_dir) == 0
    assert "malformed venue message dropped" in log_text(run_dir, "market-data")


def test_symbol_the_venue_does_not_list_is_a_start_error_naming_it(procs, run_dir, venue):
    venue.ctl(list_symbols=["BTCUSDT"])
    p = procs.spawn(testkit.supervisor_args(run_dir, testkit.DEFAULT_CONFIG, [*venue.sets(), *FAST]),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err.decode()
    assert "ETH/USDT not listed by ccxt:binance" in err.decode()
    assert not os.path.exists(os.path.join(run_dir, "recording.csv"))


def test_cached_master_is_used_when_the_venue_is_down(procs, run_dir, venue):
    p = start(procs, run_dir, venue)
    assert testkit.shutdown(p, run_dir) == 0
    venue.ctl(down=True)  # every REST request: 503
    p = start(procs, run_dir, venue, timeout=40)
    try:
        ev = testkit.log_events(run_dir)
        warns = [e for e in ev if "using the cached master" in str(e.get("warning", ""))]
        assert warns, [e for e in ev if e.get("level") == "warning"]
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 20, 20, "the stream works without REST")
    finally:
        assert testkit.shutdown(p, run_dir) == 0


def test_no_cache_and_venue_down_fails_the_start_with_the_venues_error(procs, run_dir, venue):
    venue.ctl(down=True)
    p = procs.spawn(testkit.supervisor_args(run_dir, testkit.DEFAULT_CONFIG,
                                            [*venue.sets(), *FAST, "supervisor.max_restarts=0"]),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=80)
    assert p.returncode != 0
    text = err.decode() + log_text(run_dir, "market-data")
    assert "instrument master download failed" in text and "no cached master" in text


def test_bad_feed_plugin_exits_2_naming_the_key(procs, run_dir):
    p = procs.spawn(testkit.supervisor_args(run_dir, testkit.DEFAULT_CONFIG, ['market_data.feed="nosuch_pkg.x:Feed"']),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "market_data.feed = 'nosuch_pkg.x:Feed': cannot import module 'nosuch_pkg.x'" in err.decode()


def test_a_connection_silent_too_long_is_remade(procs, run_dir, venue):
    p = start(procs, run_dir, venue, extra=["market_data.reconnect_silent_s=2.0"])
    try:
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 20, 20, "data flowing")
        conn0 = venue.state()["counts"]["ws_connects"]
        venue.ctl(silent_s=3.5)  # the socket stays open, nothing comes: like a half-open connection
        wait_md(run_dir, lambda s: s.get("reconnects", 0) >= 1, 10, "a reconnect on silence")
        testkit.wait_for(lambda: venue.state()["counts"]["ws_connects"] > conn0, 10, "new WebSocket connections")
        n0 = md_status(run_dir)["fseq"]
        wait_md(run_dir, lambda s: s["fseq"] > n0 + 30 and s["feed_state"] == "ok", 20, "data again")
    finally:
        assert testkit.shutdown(p, run_dir) == 0
    assert "the connection is taken for dead" in log_text(run_dir, "market-data")


def test_a_plugin_adapter_and_rest_polling_where_the_venue_has_no_websocket(procs, run_dir, venue):
    p = start(procs, run_dir, venue, extra=['market_data.feed="tests.fixtures.rest_feed:RestOnlyCcxt"',
                                            "market_data.poll_s=0.2", "market_data.stale_after_s=3.0"])
    try:
        wait_md(run_dir, lambda s: s.get("fseq", 0) > 40, 30, "data over REST")
        assert md_status(run_dir)["feed"] == "ccxt:binance"
        testkit.wait_for(lambda: len(_recorded_now(run_dir)) >= 2, 30, "closed bars over REST")
    finally:
        assert testkit.shutdown(p, run_dir) == 0
    assert venue.state()["counts"]["ws_connects"] == 0
    with open(os.path.join(run_dir, "recording.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["type"] for r in rows} == {"tick", "quote", "bar"}
    bars = [(r["symbol"], int(r["ts"])) for r in rows if r["type"] == "bar"]
    assert len(bars) == len(set(bars))  # polling the same candles again publishes each closed one once
    # Every trade once, none from before the start: the venue's own trade list from the first one recorded on.
    got = [(r["symbol"], float(r["price"]), float(r["size"]), int(r["ts"])) for r in rows if r["type"] == "tick"]
    assert len(got) == len(set(got)) and len(got) > 20

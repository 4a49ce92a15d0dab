"""Figures of the live feed against the local fake venue (scripts/fake_venue.py) on loopback.

    python -m scripts.bench_venue [--seconds 20] [--rounds 3] [--hour-rate 40]

1. venue -> strategy: the fake venue stamps each trade (Binance's ``T``, milliseconds) as
   it sends it; a probe strategy (``LatencyProbe`` below) takes the wall clock in
   ``on_tick``. The path: aiohttp WebSocket -> ccxt.pro parse -> the adapter's feed
   thread -> inproc PAIR -> market-data's loop -> md PUB -> the strategy's SUB -> the
   plugin. Figures include up to 1 ms of the venue's millisecond truncation (mean 0.5 ms).
2. reconnect -> gap backfilled: the venue drops every WebSocket and refuses new ones for
   ``--outage`` seconds (1 s bars); from the moment it accepts again to the log line
   "bars backfilled after reconnect" (the missing closed bars published), and the REST
   backfill itself (``took_s``).
3. memory of a 1-hour recorded session, simulated at full speed: ``--hour-rate``
   messages a second for an hour (trades and quotes of two symbols, a bar per symbol
   a minute) through the Recorder (Parquet, 10,000-row groups), then the recording
   replayed (RecordingReplay); peak RSS of each in a fresh process, and the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from actors.strategies.base import Strategy  # noqa: E402
from scripts import testkit  # noqa: E402
from scripts.fake_venue import VenueProc  # noqa: E402


class LatencyProbe(Strategy):
    """Writes ``now - tick.ts`` of every trade (ns) to ``out`` (JSON lines, 200 at a time)."""

    def __init__(self, out: str = ""):
        self.out = out
        self.buf: list[int] = []

    def on_tick(self, tick: Any) -> None:
        self.buf.append(time.time_ns() - tick.ts)
        if len(self.buf) >= 200:
            self._flush()

    def _flush(self) -> None:
        if self.out and self.buf:
            with open(self.out, "a") as f:
                f.write(json.dumps(self.buf) + "\n")
        self.buf = []

    def on_stop(self) -> None:
        self._flush()


def say(*a: Any) -> None:
    print(*a, flush=True)


def pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


def _venue_sets(v: VenueProc) -> list[str]:
    return [*v.sets(), "market_data.stale_after_s=2.0", "market_data.reconnect_initial_s=0.1",
            "market_data.reconnect_max_s=0.5"]


def latency(seconds: float, tmp: str) -> dict[str, Any]:
    rd = os.path.join(tmp, "lat")
    v = VenueProc(testkit.spawn, tmp, trade_ms=50)
    out = os.path.join(tmp, "lat.jsonl")
    try:
        p = testkit.start_supervisor(rd, testkit.DEFAULT_CONFIG, [
            *_venue_sets(v), 'strategy.plugin="scripts.bench_venue:LatencyProbe"', f'strategy.params={{out="{out}"}}'],
            stderr=subprocess.DEVNULL)
        try:
            time.sleep(seconds)  # the bench measures for a fixed time: nothing to wait on
        finally:
            testkit.shutdown(p, rd)
    finally:
        v.stop()
    lat: list[float] = []
    with open(out) as f:
        for line in f:
            lat += [x / 1e6 for x in json.loads(line)]
    lat = lat[len(lat) // 10:]  # the first seconds include connecting and imports settling
    return {"n": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat)}


def reconnect(rounds: int, outage: float, tmp: str) -> list[dict[str, float]]:
    rd = os.path.join(tmp, "rec")
    v = VenueProc(testkit.spawn, tmp)
    res = []
    try:
        p = testkit.start_supervisor(rd, testkit.DEFAULT_CONFIG, _venue_sets(v), stderr=subprocess.DEVNULL)
        for i in range(rounds):
            time.sleep(3)  # closed bars before the outage
            v.ctl(refuse_ws_s=outage, drop_ws=True)
            back = time.time() + outage
            n0 = len(_backfills(rd))
            testkit.wait_for(lambda: len(_backfills(rd)) > n0, 30, "a backfill")
            e = _backfills(rd)[-1]
            t = _ts(e["timestamp"])
            res.append({"venue_back_to_backfilled_s": t - back, "rest_backfill_s": e["took_s"], "bars": e["bars"],
                        "data_after_s": e["data_after_s"]})
        testkit.shutdown(p, rd)
    finally:
        if "p" in locals() and p.poll() is None:
            testkit.shutdown(p, rd)
        v.stop()
    return res


def _ts(iso: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(iso).timestamp()


def _backfills(rd: str) -> list[dict]:
    return [e for e in testkit.log_events(rd, "market-data") if e.get("event") == "bars backfilled after reconnect"]


HOUR_CODE = r"""
import json, os, random, sys, time
sys.path.insert(0, sys.argv[1])
from actors.recorder import Recorder
from bus.messages import Bar, Quote, Tick
import pyarrow.parquet  # imported before the baseline: the recorder's own growth is what is measured
rate, tmp, minutes = float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def hwm():
    for l in open("/proc/self/status"):
        if l.startswith("VmHWM:"):
            return int(l.split()[1])
base = hwm()
rec = Recorder(tmp, "parquet", 10_000)
rng = random.Random(1)
t0 = 1_700_000_000 * 10**9
n = int(rate * 60 * minutes)
px = {"BTC/USDT": 60000.0, "ETH/USDT": 3000.0}
t = time.perf_counter()
for i in range(n):
    s = "BTC/USDT" if i % 2 else "ETH/USDT"
    ts = t0 + int(i / rate * 1e9)
    p = px[s] = round(px[s] * (1 + rng.gauss(0, 1e-4)), 2)
    m = (Tick(symbol=s, ts=ts, price=p, size=round(rng.uniform(0.0001, 0.5), 5)) if i % 4 < 2 else
         Quote(symbol=s, ts=ts, bid=p - 0.01, ask=p + 0.01, bid_size=0.5, ask_size=1.0))
    rec.write(m, ts)
    if i % int(rate * 60) == 0:
        for s2 in px:
            rec.write(Bar(symbol=s2, ts=ts, open=px[s2], high=px[s2], low=px[s2], close=px[s2], volume=1.5), ts)
rec.close()
print(json.dumps({"rows": rec.rows, "write_s": time.perf_counter() - t, "rss_base_kb": base, "rss_peak_kb": hwm(),
                  "file_mb": os.path.getsize(rec.path) / 1e6, "path": rec.path}))
"""

REPLAY_CODE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import config as config_mod
from actors.recorder import RecordingReplay
from bus.messages import Instrument
def hwm():
    for l in open("/proc/self/status"):
        if l.startswith("VmHWM:"):
            return int(l.split()[1])
md = config_mod.load(None, ['market_data.kind="all"']).market_data
insts = {s: Instrument(symbol=s, kind="crypto", tick_size=0.01) for s in ("BTC/USDT", "ETH/USDT")}
import pyarrow.parquet  # imported before the baseline: the replay's own growth is what is measured
base = hwm()
t = time.perf_counter()
r = RecordingReplay(md, insts, sys.argv[2])
n = sum(1 for _ in r.messages())
print(json.dumps({"messages": n, "replay_s": time.perf_counter() - t, "rss_base_kb": base, "rss_peak_kb": hwm()}))
"""


def hour(rate: float, tmp: str, minutes: float = 60.0) -> dict[str, Any]:
    d = os.path.join(tmp, f"rec-{minutes:g}")
    os.makedirs(d)
    w = json.loads(subprocess.run([sys.executable, "-c", HOUR_CODE, ROOT, str(rate), d, str(minutes)], check=True,
                                  capture_output=True, text=True).stdout)
    r = json.loads(subprocess.run([sys.executable, "-c", REPLAY_CODE, ROOT, w["path"]], check=True,
                                  capture_output=True, text=True).stdout)
    return {"write": w, "replay": r}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="latency: how long to measure")
    ap.add_argument("--rounds", type=int, default=3, help="reconnect rounds")
    ap.add_argument("--outage", type=float, default=2.5, help="seconds the venue refuses WebSockets per round")
    ap.add_argument("--hour-rate", type=float, default=40.0, help="messages a second of the simulated hour")
    ap.add_argument("--skip", default="", help="comma-separated: latency, reconnect, hour")
    a = ap.parse_args(argv)
    skip = set(a.skip.split(","))
    tmp = tempfile.mkdtemp(prefix="pbv-", dir="/tmp")
    try:
        if "latency" not in skip:
            r = latency(a.seconds, tmp)
            say(f"venue trade -> strategy on_tick: n={r['n']} p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                  f"max {r['max_ms']:.2f} ms (venue stamps in ms: includes up to 1 ms of truncation)")
        if "reconnect" not in skip:
            for r in reconnect(a.rounds, a.outage, tmp):
                say(f"reconnect after a {a.outage:g} s outage: venue back -> missing bars published "
                    f"{r['venue_back_to_backfilled_s']:.2f} s (of which: the new connection's first data "
                    f"{r['data_after_s']:.2f} s after the attempt, REST backfill {r['rest_backfill_s']:.3f} s, "
                    f"{r['bars']} bars)")
        if "hour" not in skip:
            for minutes in (6, 60):  # the same peak for 10x the session: memory is flat
                r = hour(a.hour_rate, tmp, minutes)
                w, rp = r["write"], r["replay"]
                say(f"{minutes}-minute session at {a.hour_rate:g} msg/s: {w['rows']:,} rows recorded in {w['write_s']:.1f} s, "
                      f"{w['file_mb']:.1f} MB Parquet; recorder peak RSS {w['rss_peak_kb'] / 1024:.0f} MB "
                      f"(+{(w['rss_peak_kb'] - w['rss_base_kb']) / 1024:.0f} MB over its imports); replay of "
                      f"{rp['messages']:,} messages in {rp['replay_s']:.1f} s, peak RSS {rp['rss_peak_kb'] / 1024:.0f} MB "
                      f"(+{(rp['rss_peak_kb'] - rp['rss_base_kb']) / 1024:.0f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replaying a recorded live session: every message in its original order through the
market-data actor, and the same fills every time through the real supervisor."""

import os
import random

import pytest

from actors.feed_api import InstrumentCache
from actors.recorder import Recorder
from bus.messages import Bar, EndOfData, Instrument, Quote, Ready, Tick
from scripts import testkit
from tests.test_market_data import NAME, start_md  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(120)
S = 1_000_000_000
SYMS = ("BTC/USDT", "ETH/USDT")


def make_recording(data_dir, n_bars, fmt="parquet"):
    """A live-like session: per second per symbol 4 quotes and 3 trades, then the closed bar
    (fractional sizes and volumes); the venue's master beside it, as a live run leaves it."""
    rec_dir = os.path.join(data_dir, f"session-{fmt}")
    os.makedirs(rec_dir)
    insts = [Instrument(symbol=s, kind="crypto", tick_size=0.01, lot_size=1.0, currency="USDT", base=s[:3],
                        venue_symbol=s.replace("/", "")) for s in SYMS]
    InstrumentCache(rec_dir, "ccxt:binance").save(insts, 1)
    rec = Recorder(rec_dir, fmt, 500)
    rng = random.Random(7)
    px = {"BTC/USDT": 60000.0, "ETH/USDT": 3000.0}
    msgs = []
    t0 = 1_700_000_000 * S
    for k in range(n_bars):
        for s in SYMS:
            o = px[s]
            hi = lo = o
            vol = 0.0
            for j in range(4):
                p = round(px[s] * (1 + rng.gauss(0, 0.002)), 2)
                px[s] = p
                hi, lo = max(hi, p), min(lo, p)
                ts = t0 + k * S + j * S // 4
                msgs.append(Quote(symbol=s, ts=ts, bid=round(p - 0.01, 2), ask=round(p + 0.01, 2), bid_size=0.5,
                                  ask_size=1.25))
                if j < 3:
                    q = round(rng.uniform(0.001, 0.2), 5)
                    vol += q
                    msgs.append(Tick(symbol=s, ts=ts + 1, price=p, size=q))
            msgs.append(Bar(symbol=s, ts=t0 + k * S, open=o, high=hi, low=lo, close=px[s], volume=round(vol, 5)))
    for i, m in enumerate(msgs):
        rec.write(m, t0 + i)
    rec.close()
    return rec.path, os.path.join(rec_dir, "instruments.json"), msgs


def test_replay_of_a_recording_gives_every_message_in_order(start_md, run_dir, data_dir):
    path, inst, msgs = make_recording(data_dir, 40)
    md = start_md(run_dir, ['market_data.feed="replay"', f'market_data.path="{path}"', 'market_data.kind="all"',
                            f'market_data.instruments="{inst}"', "market_data.speed=0"])
    ready = md.sup.wait_msg(NAME, Ready, 15)
    assert ready.info["instruments"] == 2
    md.connect(topics=("md.bar.", "md.tick.", "md.quote.", "md.eod"))
    md.sup.run(NAME)
    got = []
    while True:
        m = md.recv()
        assert m is not None, f"stalled after {len(got)} messages"
        if isinstance(m, EndOfData):
            eod = m
            break
        got.append(m)
    md.stop()
    assert [m.fseq for m in got] == list(range(1, len(msgs) + 1))
    for m in got:
        m.fseq = 0
    assert got == msgs  # quotes, trades and bars, the recorded order, fractional sizes intact
    assert eod.count == len(msgs)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_recording_backtested_twice_gives_the_same_fills(procs, run_dir, data_dir, fmt):
    path, inst, msgs = make_recording(data_dir, 600, fmt)
    sets = ['market_data.feed="replay"', f'market_data.path="{path}"', 'market_data.kind="bars"',
            f'market_data.instruments="{inst}"', 'market_data.symbols=["BTC/USDT", "ETH/USDT"]',
            "strategy.params={fast=3, slow=8, qty=1}"]
    fills = []
    for i in range(2):
        rd = os.path.join(run_dir, f"bt{i}")
        code, out, err = testkit.run_backtest(rd, sets, spawn=procs.spawn)
        assert code == 0, err[-3000:]
        with open(os.path.join(rd, "latest", "fills.csv")) as f:
            fills.append(f.read())
    assert fills[0] == fills[1]
    assert fills[0].count("\n") > 20  # the strategy traded on the recording: there is something to compare

"""market-data as a real process: READY counts, the RUN barrier, feeds, history, memory."""

import csv
import datetime as dt
import os
import subprocess

import time

import pytest

import config as config_mod
from bus.codec import Stamper
from actors.feeds import FeedState, GbmSymbol, WallClockBars
from bus.messages import (
    Bar, EndOfData, HistoryReply, HistoryRequest, InitFailed, Instrument, InstrumentsReply, InstrumentsRequest, MdError,
    Progress, Ready, Stopped,
)
from bus.sockets import open_port
from tests.harness import PY, ROOT, FakeSupervisor, actor_cmd, read_log, wait_for

pytestmark = pytest.mark.timeout(60)

NAME = "market-data"
GOOG_CSV = str(ROOT / "data/sample/GOOG.csv")
GOOG_ROWS = 2148


class MD:
    """One market-data process under a FakeSupervisor, with a SUB and a DEALER on its endpoints."""

    def __init__(self, procs, run_dir, sets):
        self.sup = FakeSupervisor(run_dir, config_mod.load(None, sets))
        self.proc = procs.spawn(actor_cmd("actors.market_data", self.sup.run_dir, self.sup.write_config()),
                                stderr=subprocess.PIPE)
        self.stamper = Stamper("test", "test-run")
        self.sub = None
        self.ref = None

    def connect(self, topics=("md.bar.", "md.tick.", "md.eod")):  # md.status: tests of their own
        self.sub = open_port(self.sup.ctx, self.sup.endpoints, "md", bind=False, stamper=self.stamper,
                             subscribe=topics)
        self.ref = open_port(self.sup.ctx, self.sup.endpoints, "md.ref", bind=False, stamper=self.stamper)
        # A round trip on md.ref: by then the SUB has long been connected and subscribed.
        assert isinstance(self.request(InstrumentsRequest()), InstrumentsReply)

    def request(self, msg, timeout=5.0):
        self.ref.send(msg)
        assert self.ref.sock.poll(int(timeout * 1000)), "no reply on md.ref"
        return self.ref.recv().msg

    def recv(self, timeout=10.0):
        """Next md message, heartbeating the actor while waiting; None on timeout."""
        deadline = _now() + timeout
        while _now() < deadline:
            self.sup.pump(0.001)
            if self.sub.sock.poll(50):
                return self.sub.recv().msg
        return None

    def hwm_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self):
        self.sup.stop(NAME)
        self.sup.wait_msg(NAME, Stopped, 10)
        assert self.proc.wait(10) == 0

    def close(self):
        # Every socket closed before the context terminates, or term() would block forever.
        for p in (self.sub, self.ref):
            if p is not None:
                p.close()
        self.sup.close()


@pytest.fixture
def start_md(procs):
    made = []

    def make(run_dir, sets):
        made.append(MD(procs, run_dir, sets))
        return made[-1]
    yield make
    for md in made:
        md.close()


def _now():
    return time.monotonic()


def synthetic_bars(start_md, run_dir, seed, n, extra=()):
    md = start_md(run_dir, [f"market_data.seed={seed}", "market_data.rate_hz=100", *extra])
    ready = md.sup.wait_msg(NAME, Ready, 15)
    md.connect()
    assert md.recv(timeout=0.3) is None, "published before RUN"
    md.sup.run(NAME)
    bars = [md.recv() for _ in range(n)]
    md.stop()
    return ready, bars


def test_ready_counts_barrier_and_synthetic_sequence(start_md, run_dir):
    inst = str(ROOT / "data/sample/instruments_options.csv")
    ready, bars = synthetic_bars(start_md, run_dir, 7, 40, [f'market_data.instruments="{inst}"'])
    assert ready.info == {"instruments": 4, "option_mappings": 2}
    assert all(isinstance(b, Bar) for b in bars)
    assert [b.fseq for b in bars] == list(range(1, 41))  # contiguous from 1: nothing lost before RUN
    # Options get no GBM path; equities and futures alternate in master order, one bar each per step.
    assert [b.symbol for b in bars[:4]] == ["GOOG", "ES", "GOOG", "ES"]
    goog = [b for b in bars if b.symbol == "GOOG"]
    assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars)
    assert all(abs(b.close / 0.01 - round(b.close / 0.01)) < 1e-6 for b in goog)  # on the tick grid
    # On the wall-clock grid of 1/rate_hz = 10 ms; both symbols of a step share its ts.
    assert all(b.ts % 10**7 == 0 for b in bars) and bars[0].ts == bars[1].ts
    assert all(0 < (b.ts - a.ts) and (b.ts - a.ts) % 10**7 == 0 for a, b in zip(goog, goog[1:]))


def path_closes(bars, interval_ns=10**7):
    """{(symbol, intervals since the symbol's first bar at which a bar ended): close}. A bar
    that covers several intervals (the feed fell behind on a loaded machine) ends where the
    path is after all of them, so two runs agree on every end point they share."""
    out, by = {}, {}
    for b in bars:
        by.setdefault(b.symbol, []).append(b)
    for sym, bs in by.items():
        first = bs[0].ts
        for b, nxt in zip(bs, bs[1:]):
            out[(sym, (nxt.ts - first) // interval_ns)] = b.close
    return out


def test_synthetic_is_deterministic_per_seed(start_md, run_dir):
    a = path_closes(synthetic_bars(start_md, os.path.join(run_dir, "a"), 3, 40)[1])
    b = path_closes(synthetic_bars(start_md, os.path.join(run_dir, "b"), 3, 40)[1])
    c = path_closes(synthetic_bars(start_md, os.path.join(run_dir, "c"), 4, 40)[1])
    common = a.keys() & b.keys()
    assert len(common) >= 10, (a, b)
    assert {k: a[k] for k in common} == {k: b[k] for k in common}
    common_c = a.keys() & c.keys()
    assert {k: a[k] for k in common_c} != {k: c[k] for k in common_c}
    assert {k[0] for k in a} == {"SYN1", "SYN2"}


def replay_goog(start_md, run_dir, extra=()):
    md = start_md(run_dir, ["market_data.feed=replay", f'market_data.path="{GOOG_CSV}"',
                             f'market_data.instruments="{ROOT}/data/sample/instruments.csv"', *extra])
    assert md.sup.wait_msg(NAME, Ready, 15).info == {"instruments": 1, "option_mappings": 0}
    md.connect()
    md.sup.run(NAME)
    return md


def test_replay_goog_to_end_of_data_then_history(start_md, run_dir):
    md = replay_goog(start_md, run_dir)
    msgs = []
    while True:
        m = md.recv()
        assert m is not None, f"stalled after {len(msgs)} messages"
        msgs.append(m)
        if isinstance(m, EndOfData):
            break
    bars, eod = msgs[:-1], msgs[-1]
    assert eod.count == GOOG_ROWS and eod.last_fseq == GOOG_ROWS and eod.feed == "replay:GOOG.csv"
    assert [b.fseq for b in bars] == list(range(1, GOOG_ROWS + 1))
    with open(GOOG_CSV) as f:
        rows = list(csv.reader(f))[1:]
    first, last = bars[0], bars[-1]
    assert first.symbol == "GOOG" and first.ts == int(dt.datetime(2004, 8, 19, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert (first.open, first.high, first.low, first.close, first.volume) == (100.0, 104.06, 95.96, 100.34, 22351900)
    assert last.close == float(rows[-1][4]) and last.volume == int(rows[-1][5])

    # The actor stays up after end of data and serves history of what it published.
    h = md.request(HistoryRequest(symbol="GOOG", n=5))
    assert isinstance(h, HistoryReply) and h.bars == bars[-5:]
    err = md.request(HistoryRequest(symbol="MSFT", n=5))
    assert isinstance(err, MdError) and err.code == "unknown-symbol" and "MSFT" in err.text
    # Undecodable bytes get an error reply too, and change nothing.
    md.ref.sock.send(b"\x93garbage")
    assert md.ref.sock.poll(5000)
    err = md.ref.recv().msg
    assert isinstance(err, MdError) and err.code == "bad-request"
    err = md.request(Bar(symbol="GOOG", ts=1, open=1.0, high=1.0, low=1.0, close=1.0))
    assert isinstance(err, MdError) and err.code == "bad-request"
    md.ref.send(Progress(fseq=5))  # one-way (backtest flow control): no reply, so the next reply is history
    assert md.request(HistoryRequest(symbol="GOOG", n=1)).bars == bars[-1:]
    md.stop()


def _vm_hwm_full_load(path):
    """Peak RSS growth of reading the whole file at once with pandas, in a fresh process (kB)."""
    code = ("import sys, pandas as pd\n"
            "def hwm():\n"
            "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
            "a = hwm(); df = pd.read_csv(sys.argv[1]); print(hwm() - a)\n")
    return int(subprocess.run([PY, "-c", code, path], capture_output=True, check=True, text=True,
                              timeout=60).stdout)


def test_replay_large_file_in_chunks_with_bounded_memory(start_md, run_dir):
    import numpy as np
    import pandas as pd  # imported here: the rest of the suite does not pay for it

    # Baseline: the same process replaying the small GOOG file (pandas imported, history filled).
    md = replay_goog(start_md, os.path.join(run_dir, "small"))
    while not isinstance(md.recv(), EndOfData):
        pass
    small_kb = md.hwm_kb()
    md.stop()

    # 1,000,000 rows: a 50,000-row block of prices written 20 times behind increasing
    # timestamps (the pre-scan refuses time going back), formatted once.
    n_block, reps = 50_000, 20
    rng = np.random.default_rng(1)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n_block)))
    o = np.concatenate([[c[0]], c[:-1]])
    block = pd.DataFrame({"o": o.round(2), "h": (np.maximum(o, c) * 1.001).round(2),
                          "l": (np.minimum(o, c) * 0.999).round(2), "c": c.round(2),
                          "v": rng.integers(100, 10_000, n_block)})
    body = block.to_csv(index=False, header=False).splitlines()
    path = os.path.join(run_dir, "big.csv")
    with open(path, "w") as f:
        f.write("time,o,h,l,c,v\n")
        for r in range(reps):
            t0 = 1_600_000_000 + r * n_block * 60
            f.write("\n".join(f"{t0 + i * 60},{line}" for i, line in enumerate(body)) + "\n")
    rows = n_block * reps
    full_kb = _vm_hwm_full_load(path)

    md = start_md(os.path.join(run_dir, "big"), [
        "market_data.feed=replay", f'market_data.path="{path}"', "market_data.symbol=BIG",
        'market_data.symbols=["BIG"]', "market_data.chunk_rows=20000", 'market_data.timestamp_column="time"',
        'market_data.columns={open="o", high="h", low="l", close="c", volume="v"}'])
    md.sup.wait_msg(NAME, Ready, 15)
    md.connect(topics=("md.eod",))
    md.sup.run(NAME)
    eod = md.recv(timeout=50)
    assert isinstance(eod, EndOfData), eod
    assert eod.count == rows and eod.last_fseq == rows
    big_kb = md.hwm_kb()
    h = md.request(HistoryRequest(symbol="BIG", n=3))
    assert [b.close for b in h.bars] == list(block["c"].iloc[-3:]) and h.bars[-1].fseq == rows
    md.stop()
    growth = big_kb - small_kb
    print(f"peak RSS kB: small replay {small_kb}, 1M-row replay {big_kb}, whole-file load +{full_kb}")
    # Reading it whole costs >100 MB more; streaming costs a chunk (a few MB).
    assert full_kb > 100_000, full_kb
    assert growth < full_kb / 4, (growth, full_kb, small_kb, big_kb)


@pytest.mark.parametrize("sets,needle", [
    (["market_data.feed=replay", 'market_data.path="/nonexistent/data.csv"'], "replay file not found: /nonexistent"),
    (["market_data.feed=replay", f'market_data.path="{GOOG_CSV}"', 'market_data.symbols=["GOOG"]',
      'market_data.columns={close="Last"}'], "columns.close = 'Last' is not a column"),
    (["market_data.feed=replay", f'market_data.path="{GOOG_CSV}"'], "replay symbol 'GOOG' is not in the instrument"),
    (['market_data.instruments="/nonexistent/inst.csv"'], "instrument file not found: /nonexistent/inst.csv"),
])
def test_startup_errors_are_init_failures(start_md, run_dir, sets, needle):
    md = start_md(run_dir, sets)
    failed = md.sup.wait_msg(NAME, InitFailed, 15)
    assert needle in failed.reason, failed.reason
    assert md.proc.wait(10) == 2  # bad user input: UserError


def test_bad_instrument_row_fails_startup_naming_file_and_row(start_md, run_dir):
    p = os.path.join(run_dir, "inst.csv")
    with open(p, "w") as f:
        f.write("symbol,kind,tick_size\nGOOG,equity,0.01\nC1,option,0.01\n")
    md = start_md(os.path.join(run_dir, "r"), [f'market_data.instruments="{p}"'])
    failed = md.sup.wait_msg(NAME, InitFailed, 15)
    assert f"{p}: row 3: option C1 needs underlying" in failed.reason, failed.reason
    assert md.proc.wait(10) == 2  # bad user input: UserError


def test_parquet_needs_pyarrow_or_replays(start_md, run_dir):
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
        have = True
    except ImportError:
        have = False
    path = os.path.join(run_dir, "GOOG.parquet")
    if have:
        pd.read_csv(GOOG_CSV).to_parquet(path)
    else:
        with open(path, "wb") as f:
            f.write(b"PAR1")  # never read: the missing pyarrow is found first
    md = start_md(os.path.join(run_dir, "r"), ["market_data.feed=replay", f'market_data.path="{path}"',
                                               'market_data.symbols=["GOOG"]'])
    if not have:
        failed = md.sup.wait_msg(NAME, InitFailed, 15)
        assert "needs pyarrow" in failed.reason and path in failed.reason
        assert md.proc.wait(10) == 2  # bad user input: UserError
        return
    md.sup.wait_msg(NAME, Ready, 15)
    md.connect(topics=("md.eod",))
    md.sup.run(NAME)
    eod = md.recv()
    assert isinstance(eod, EndOfData) and eod.count == GOOG_ROWS
    md.stop()


def test_replay_skips_rows_that_would_not_decode(start_md, run_dir):
    # NaN, non-positive prices and high < low would be rejected by every receiver: dropped at the source.
    path = os.path.join(run_dir, "X.csv")
    with open(path, "w") as f:
        f.write("date,open,high,low,close,volume\n"
                "2024-01-02,10,11,9,10.5,100\n"
                "2024-01-03,10,,9,10.5,100\n"
                "2024-01-04,-1,11,9,10.5,100\n"
                "2024-01-05,10,9,11,10.5,100\n"
                "2024-01-06,10,12,9,11.5,\n")
    md = start_md(os.path.join(run_dir, "r"), ["market_data.feed=replay", f'market_data.path="{path}"',
                                               'market_data.symbols=["X"]'])
    ready = md.sup.wait_msg(NAME, Ready, 15)
    # Counted where the user sees it: the READY warnings (the supervisor logs them) and EndOfData.
    assert ready.info["warnings"] == [
        f"{path}: 3 rows of 5 skipped: rows 3, 4, 5; the first: row 3, column 'high' is empty "
        '(market_data.on_bad_row = "error" refuses such a file)']
    md.connect()
    md.sup.run(NAME)
    got = [md.recv(), md.recv(), md.recv()]
    assert [type(m).__name__ for m in got] == ["Bar", "Bar", "EndOfData"]
    assert [(b.fseq, b.close, b.volume) for b in got[:2]] == [(1, 10.5, 100), (2, 11.5, 0)]
    assert got[2].count == 2 and got[2].last_fseq == 2 and got[2].rows_skipped == 3
    md.stop()


def test_replay_ticks_with_symbol_column_epoch_ms_and_pacing(start_md, run_dir):
    # Ticks of two symbols in one file (a symbol column), epoch milliseconds, paced at 1000x real time;
    # a row for a symbol outside the instrument master is dropped.
    path = os.path.join(run_dir, "ticks.csv")
    with open(path, "w") as f:
        f.write("t,sym,px,qty\n"
                "1700000000000,AAA,10.5,3\n"
                "1700000001000,BBB,20.25,1\n"
                "1700000002000,ZZZ,1.0,1\n"
                "1700000003000,AAA,10.75,2\n")
    md = start_md(os.path.join(run_dir, "r"), [
        "market_data.feed=replay", f'market_data.path="{path}"', "market_data.kind=ticks",
        'market_data.symbols=["AAA", "BBB"]', "market_data.speed=1000",
        'market_data.columns={symbol="sym", price="px", size="qty"}'])
    md.sup.wait_msg(NAME, Ready, 15)
    md.connect()
    md.sup.run(NAME)
    got = [md.recv() for _ in range(4)]
    assert [type(m).__name__ for m in got] == ["Tick", "Tick", "Tick", "EndOfData"]
    assert [(t.symbol, t.ts, t.price, t.size, t.fseq) for t in got[:3]] == [
        ("AAA", 1_700_000_000_000 * 10**6, 10.5, 3, 1), ("BBB", 1_700_000_001_000 * 10**6, 20.25, 1, 2),
        ("AAA", 1_700_000_003_000 * 10**6, 10.75, 2, 3)]
    assert got[3].count == 3
    md.stop()


# ------------------------------------------------------------ live time is wall-clock time
def test_live_bars_are_stamped_with_the_wall_clock_interval_they_cover(start_md, run_dir):
    iv = 50 * 10**6  # rate_hz = 20: each bar covers 50 ms of real time
    md = start_md(run_dir, ["market_data.rate_hz=20"])
    md.sup.wait_msg(NAME, Ready, 15)
    md.connect()
    md.sup.run(NAME)
    got = []
    for _ in range(24):
        b = md.recv()
        assert isinstance(b, Bar), b
        got.append((b, time.time_ns()))
    md.stop()
    for b, seen in got:
        assert b.ts % iv == 0, b  # on the grid: ts = the start of a real interval
        # made once its interval had ended, and seen soon after (2 s: a loaded machine)
        assert b.ts + iv <= seen < b.ts + iv + 2 * 10**9, (b.ts, seen)
    for sym in ("SYN1", "SYN2"):
        ts = [b.ts for b, _ in got if b.symbol == sym]
        # contiguous: the next bar starts where the previous one ended (a late bar covers
        # every interval it missed, so the gap is a whole number of intervals, never a hole)
        assert all(b > a and (b - a) % iv == 0 for a, b in zip(ts, ts[1:])), ts


def _twin_paths(n=2):
    inst = Instrument(symbol="X", kind="equity", tick_size=0.01)
    return [GbmSymbol(inst, seed=1, start=100.0, drift=0.0, vol=5.0, interval_s=0.1) for _ in range(n)]


def test_a_late_bar_covers_the_missed_intervals_on_the_same_price_path():
    iv = 10**8
    a, b = _twin_paths()
    late, steady = WallClockBars([a], iv), WallClockBars([b], iv)
    t0 = 1_700_000_000_050_000_000  # between two grid points
    late.start(t0)
    steady.start(t0)
    assert late.start_ns == 1_700_000_000_100_000_000  # the first bar starts at the next grid point
    assert late.step(late.due_ns() - 1) == []  # its interval has not ended: no bar
    singles = [steady.step(steady.due_ns() + 7)[0] for _ in range(3)]
    assert [s[1] for s in singles] == [late.start_ns + k * iv for k in range(3)]
    [merged] = late.step(late.start_ns + 3 * iv + 7)  # woken three intervals late: one bar for all three
    sym, ts, o, h, lo, c, v = merged
    assert ts == singles[0][1] and late.start_ns == steady.start_ns  # covers [first start, third end)
    assert (o, h, lo, c, v) == (singles[0][2], max(s[3] for s in singles), min(s[4] for s in singles),
                                singles[-1][5], sum(s[6] for s in singles))


def test_feed_state_missing_or_corrupt_is_a_fresh_start(run_dir):
    fs = FeedState(run_dir, seed=1)
    paths = _twin_paths(1)
    assert fs.load(paths) == ({}, "")  # a new run dir: nothing to resume, no warning
    paths[0].bar(5)
    fs.save(paths)
    assert os.stat(fs.path).st_mode & 0o777 == 0o600
    fresh = _twin_paths(1)
    resumed, warn = fs.load(fresh)
    assert warn == "" and resumed == {"X": {"price": paths[0].price, "last_ts": 0}}
    assert fresh[0].bar(3) == paths[0].bar(3)  # same price and the same random stream
    for junk in (b"{not json", b'{"version": 1, "symbols": {"X": {"price": -3}}}', b'[1, 2]',
                 b'{"version": 1, "seed": 1, "symbols": {"X": {"price": 101.0, "rng": [3, [1, 2], null]}}}'):
        with open(fs.path, "wb") as f:
            f.write(junk)
        fresh = _twin_paths(1)
        resumed, warn = fs.load(fresh)
        assert resumed == {} and fs.path in warn and "start again from start_price" in warn, (junk, warn)
        assert fresh[0].price == 100.0  # nothing half-applied


def _bars_until(md, n):
    out = []
    while len(out) < n:
        m = md.recv()
        assert isinstance(m, Bar), m
        out.append(m)
    return out


def _last_by_symbol(bars):
    return {b.symbol: b for b in bars}


def _first_by_symbol(bars):
    out = {}
    for b in bars:
        out.setdefault(b.symbol, b)
    return out


def test_restarted_market_data_continues_from_the_last_prices(start_md, run_dir):
    sets = ["market_data.rate_hz=50", "market_data.start_price=100"]
    state = os.path.join(run_dir, FeedState.FILE)

    def start():
        md = start_md(run_dir, sets)
        ready = md.sup.wait_msg(NAME, Ready, 15)
        md.connect()
        md.sup.run(NAME)
        return md, ready

    md, _ = start()
    before = _bars_until(md, 60)
    md.stop()  # what `ctl restart market-data` does first: STOP, on_stop saves the prices
    assert os.stat(state).st_mode & 0o777 == 0o600
    last = _last_by_symbol(before)
    assert any(b.close != 100.0 for b in last.values())

    md, ready = start()
    assert "warnings" not in ready.info
    after = _bars_until(md, 4)
    first = _first_by_symbol(after)
    for sym in ("SYN1", "SYN2"):
        assert first[sym].open == last[sym].close, (sym, first[sym], last[sym])
        assert first[sym].ts > last[sym].ts
    more = _bars_until(md, 60)
    seen = {}
    for b in before + after + more:
        seen[(b.symbol, b.ts)] = b.close
    # Killed (no on_stop): it resumes from the last periodic save, the close of a bar it published.
    saved = os.stat(state).st_mtime_ns
    wait_for(lambda: os.stat(state).st_mtime_ns != saved, 10, "a periodic save of the prices")
    md.proc.kill()
    md.proc.wait(10)
    while (m := md.recv(timeout=0.5)) is not None:  # what it published before it died
        more.append(m)
        seen[(m.symbol, m.ts)] = m.close
    killed_at = _last_by_symbol(more)

    md, _ = start()
    after_kill = _first_by_symbol(_bars_until(md, 4))
    md.stop()
    resumed = [e for e in read_log_events(run_dir) if e["event"] == "synthetic prices resumed"][-1]["symbols"]
    for sym in ("SYN1", "SYN2"):
        close = seen.get((sym, resumed[sym]["last_ts"]))
        assert close is not None, f"{sym}: resumed from a bar that was never published: {resumed[sym]}"
        assert after_kill[sym].open == close
        assert after_kill[sym].ts > killed_at[sym].ts


def test_corrupt_feed_state_is_a_warning_and_a_fresh_start(start_md, run_dir):
    path = os.path.join(run_dir, FeedState.FILE)
    with open(path, "w") as f:
        f.write('{"version": 1, "symbols": ')
    md = start_md(run_dir, ["market_data.rate_hz=50", "market_data.start_price=123.45"])
    ready = md.sup.wait_msg(NAME, Ready, 15)
    [warn] = ready.info["warnings"]
    assert path in warn and "start again from start_price" in warn
    md.connect()
    md.sup.run(NAME)
    first = _first_by_symbol(_bars_until(md, 2))
    assert {b.open for b in first.values()} == {123.45}
    md.stop()


def read_log_events(run_dir, process=NAME):
    import json

    return [json.loads(line) for line in read_log(run_dir, process).splitlines() if line.strip()]


def test_feed_status_on_md_status_at_run_and_every_second(start_md, run_dir):
    """A late subscriber learns the feed's health: FeedStatus is repeated every second."""
    from bus.messages import FeedStatus
    md = start_md(run_dir, ["market_data.rate_hz=5"])
    md.sup.wait_msg(NAME, Ready, 15)
    md.connect(topics=("md.status",))
    md.sup.run(NAME)
    first, second = md.recv(), md.recv(timeout=3)
    assert isinstance(first, FeedStatus) and isinstance(second, FeedStatus)
    assert (second.feed, second.state, second.since) == ("synthetic", "ok", first.since)
    md.stop()

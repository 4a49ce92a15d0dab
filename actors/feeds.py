"""Market data as iterators, without transport: the instrument master, the synthetic
feed (seeded GBM cut into wall-clock bars) and the replay feed (a checked file as Bars
or Ticks numbered by ``fseq``, then EndOfData).

The market-data actor (actors/market_data.py) publishes what these make; the in-process
backtest kernel (actors/kernel.py) hands the same bars to the exchange core and the
strategy host. Conventions: ``fseq`` counts from 1 over everything a feed yields; a
replay's time is the file's market time; the synthetic feed's is the wall clock.

- ``GbmSymbol``/``WallClockBars``: seeded geometric Brownian motion per instrument
  (options are skipped: GBM is not an option price); every ``1 / rate_hz`` seconds one
  Bar per symbol, stamped with the start of the real interval it covers. Same seed,
  same price path; each symbol has its own generator, so adding a symbol does not
  change the others. ``FeedState`` saves the prices so a restart goes on from them.
- ``ReplayFeed``: a ``Replay`` (actors/replay.py: the pre-scan, then chunks of rows)
  as market data, in batches of Bars or one message at a time.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

from actors import instruments as instruments_mod
from actors.replay import Replay, ReplayError, resolve
from bus.fileio import atomic_write
from bus.messages import Bar, EndOfData, Instrument, Tick

SUB_STEPS = 16  # GBM steps per synthetic interval (they make high/low)
MAX_CATCHUP = 3000  # intervals of sub-steps one late synthetic bar replays before it takes one big step
YEAR_S = 365.25 * 86400.0
SLICE = 4096  # replay rows made into Python objects at a time (a chunk's arrays are smaller than its objects)


def load_instruments(md: Any) -> tuple[list[Instrument], int, str]:
    """The instrument master of ``market_data`` config ``md``: (instruments, option mappings,
    where it came from). A missing or malformed file is a UserError naming it."""
    src = md.instruments if md.instruments == instruments_mod.SYNTHETIC else resolve(md.instruments)
    instruments, option_mappings = instruments_mod.load(src, md.symbols)
    return instruments, option_mappings, src


# ------------------------------------------------------------------ synthetic
class GbmSymbol:
    """One symbol's seeded GBM price path, advanced one wall-clock interval at a time.

    Each interval is SUB_STEPS steps of ``interval_s / SUB_STEPS`` (they make high and
    low) and one volume draw, always in that order, so the path at interval k depends
    only on the seed and k: a bar covering several intervals (the feed fell behind)
    ends at the same price as the bars it replaces would have.
    """

    def __init__(self, inst: Instrument, seed: int, start: float, drift: float, vol: float, interval_s: float):
        self.symbol = inst.symbol
        self.tick = inst.tick_size
        # str seeds are hashed deterministically (sha512) by random.Random.
        self.rng = random.Random(f"{seed}:{inst.symbol}")
        self.price = start
        self.last_ts = 0  # ts of the last bar this path made (its close is self.price)
        self.drift, self.vol = drift, vol
        dt = interval_s / SUB_STEPS / YEAR_S
        self.mu_dt = (drift - 0.5 * vol * vol) * dt
        self.sig = vol * math.sqrt(dt)

    def _round(self, p: float) -> float:
        # Prices on the tick grid (the exchange checks ticks on limit orders); never below one tick.
        return max(self.tick, round(round(p / self.tick) * self.tick, 10))

    def bar(self, intervals: int, extra_s: float = 0.0) -> tuple[float, float, float, float, int]:
        """OHLCV of the next ``intervals`` intervals (plus, after a stall longer than the
        catch-up cap, one step of ``extra_s`` seconds)."""
        o = hi = lo = p = self.price
        vol = 0
        rng, mu, sig = self.rng, self.mu_dt, self.sig
        for _ in range(intervals):
            for _ in range(SUB_STEPS):
                p *= math.exp(mu + sig * rng.gauss(0.0, 1.0))
                if p > hi:
                    hi = p
                elif p < lo:
                    lo = p
            vol += int(rng.uniform(100, 10_000))
        if extra_s > 0:
            dt = extra_s / YEAR_S
            p *= math.exp((self.drift - 0.5 * self.vol ** 2) * dt + self.vol * math.sqrt(dt) * rng.gauss(0.0, 1.0))
            hi, lo = max(hi, p), min(lo, p)
        self.price = p
        return self._round(o), self._round(hi), self._round(lo), self._round(p), vol

    def state(self) -> dict[str, Any]:
        version, internal, gauss_next = self.rng.getstate()
        return {"price": self.price, "last_ts": self.last_ts, "rng": [version, list(internal), gauss_next]}

    def parse_state(self, st: Any, same_seed: bool) -> tuple[float, int, Any]:
        """Check a saved state without applying it; ValueError/TypeError/KeyError on a bad one."""
        price = st["price"]
        if not isinstance(price, (int, float)) or not math.isfinite(price) or not 0 < price < 1e12:
            raise ValueError(f"{self.symbol}: bad price {price!r}")
        last_ts = st.get("last_ts", 0)
        if not isinstance(last_ts, int) or last_ts < 0:
            raise ValueError(f"{self.symbol}: bad last_ts {last_ts!r}")
        rng_state = None
        if same_seed:  # the same random stream goes on; another seed starts its own from here
            version, internal, gauss_next = st["rng"]
            rng_state = (version, tuple(internal), gauss_next)
            random.Random().setstate(rng_state)  # raises on a malformed state
        return float(price), last_ts, rng_state

    def restore(self, parsed: tuple[float, int, Any]) -> None:
        self.price, self.last_ts, rng_state = parsed
        if rng_state is not None:
            self.rng.setstate(rng_state)


class WallClockBars:
    """Cuts the GBM paths into wall-clock bars (the synthetic feed's clock).

    Bars lie on the grid of ``interval_ns`` since the epoch: a bar's ts is the start
    of the interval it covers and it is made once that interval has ended, so its
    OHLC is the path over that real time. The first bar starts at the first grid
    point after start(). If the feed falls behind (CPU starved, stopped), the next
    bar covers every interval since the last one, so consecutive bars always cover
    contiguous time; past MAX_CATCHUP intervals the rest is one GBM step of the
    remaining time (a suspended machine does not cost minutes of sub-steps).
    """

    def __init__(self, paths: list[GbmSymbol], interval_ns: int):
        self.paths = paths
        self.iv = interval_ns
        self.start_ns = 0  # start of the bar being built

    def start(self, now_ns: int) -> None:
        self.start_ns = -(-now_ns // self.iv) * self.iv

    def due_ns(self) -> int:
        """Wall-clock time at which the bar being built is complete."""
        return self.start_ns + self.iv

    def step(self, now_ns: int) -> list[tuple[str, int, float, float, float, float, int]]:
        end = now_ns // self.iv * self.iv
        if end <= self.start_ns:
            return []  # woken early (or the wall clock stepped back): nothing has ended yet
        n = (end - self.start_ns) // self.iv
        k = min(n, MAX_CATCHUP)
        extra = (n - k) * self.iv / 1e9
        ts, out = self.start_ns, []
        for g in self.paths:
            o, h, lo, c, v = g.bar(k, extra)
            g.last_ts = ts
            out.append((g.symbol, ts, o, h, lo, c, v))
        self.start_ns = end
        return out


class FeedState:
    """Each synthetic symbol's price (and random stream) in ``<run-dir>/feed_state.json``,
    so a restarted market-data, or a new supervisor on the same run directory, goes on
    from the last prices instead of ``start_price``. Written atomically (never half a
    file), 0600; a missing file is a fresh start, a corrupt one a warning and a fresh start."""

    FILE = "feed_state.json"

    def __init__(self, run_dir: str, seed: int):
        self.path = os.path.join(run_dir, self.FILE)
        self.seed = seed

    def load(self, paths: list[GbmSymbol]) -> tuple[dict[str, Any], str]:
        """Restore what the file has; returns ({symbol: {price, last_ts}} resumed, warning or "")."""
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return {}, ""
        except (OSError, ValueError) as e:
            return {}, f"{self.path}: unreadable ({e}); synthetic prices start again from start_price"
        try:
            if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("symbols"), dict):
                raise ValueError("not a feed state (version 1)")
            same_seed = doc.get("seed") == self.seed
            # All checked before any is applied: no symbol is left half-restored.
            plan = [(g, g.parse_state(doc["symbols"][g.symbol], same_seed))
                    for g in paths if g.symbol in doc["symbols"]]
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return {}, f"{self.path}: corrupt ({e}); synthetic prices start again from start_price"
        for g, parsed in plan:
            g.restore(parsed)
        return {g.symbol: {"price": g.price, "last_ts": g.last_ts} for g, _ in plan}, ""

    def save(self, paths: list[GbmSymbol]) -> None:
        doc = {"version": 1, "seed": self.seed, "saved_ns": time.time_ns(),
               "symbols": {g.symbol: g.state() for g in paths}}
        atomic_write(self.path, json.dumps(doc, separators=(",", ":")).encode(), 0o600)


# --------------------------------------------------------------------- replay
class ReplayFeed:
    """A replay file as market data. The constructor runs the pre-scan (a bad file is a
    ReplayError here, before anything runs); ``batches`` and ``messages`` then stream it,
    numbering every Bar/Tick with ``fseq`` from 1; ``end()`` is the EndOfData that
    follows the last one."""

    def __init__(self, md: Any, instruments: dict[str, Instrument]):
        from actors.recorder import RecordingReplay, is_recording

        path = resolve(md.path) if md.path else ""
        self.recording = bool(path) and is_recording(path)
        self.replay: Any
        if self.recording:  # a live session's recording (actors/recorder.py): its own columns
            self.replay = RecordingReplay(md, instruments, path)
        elif md.kind == "all":
            raise ReplayError(f"market_data.kind = \"all\" replays a recording (market_data.record = true), and "
                              f"{path or '<no path>'} is not one (use kind = \"bars\" or \"ticks\")")
        else:
            self.replay = Replay(md, instruments)
        self.kind = md.kind
        self.name = f"replay:{Path(self.replay.path).name}"
        self.fseq = 0  # of the last message made
        self.total = self.replay.total  # messages the file will give
        self.done = False

    @property
    def warnings(self) -> list[str]:
        return self.replay.warnings

    @property
    def skipped(self) -> int:
        return self.replay.skipped

    def batches(self, n: int) -> Iterator[list[Bar]]:
        """Bars in lists of up to ``n`` (the last may be shorter), whatever the chunking of the file."""
        out: list[Bar] = []
        fseq = self.fseq
        for rows in self.replay.chunks(SLICE):
            for sym, ts, o, h, lo, c, v in rows:
                fseq += 1
                out.append(Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=fseq))
                if len(out) == n:
                    self.fseq = fseq
                    yield out
                    out = []
        self.fseq = fseq
        if out:
            yield out
        self.done = True

    def messages(self) -> Iterator[Bar | Tick]:
        """One Bar (or Tick) at a time."""
        fseq = self.fseq
        bars = self.kind == "bars"
        if self.recording:
            for m in self.replay.messages():
                fseq += 1
                self.fseq = m.fseq = fseq
                yield m
            self.done = True
            return
        for rows in self.replay.chunks(SLICE):
            for row in rows:
                fseq += 1
                self.fseq = fseq
                if bars:
                    sym, ts, o, h, lo, c, v = row
                    yield Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=fseq)
                else:
                    sym, ts, p, s = row
                    yield Tick(symbol=sym, ts=ts, price=p, size=s, fseq=fseq)
        self.done = True

    def end(self) -> EndOfData:
        return EndOfData(feed=self.name, count=self.fseq, last_fseq=self.fseq, rows_skipped=self.replay.skipped)

"""market-data actor: instrument master, the feed, recent history.

init (before READY): load the instrument master; for a replay, check the whole
file (Replay's pre-scan: a bad file is refused here, naming file, row and
value, and what will be skipped becomes READY info["warnings"], which the
supervisor logs); bind ``md`` PUB and ``md.ref`` ROUTER. Nothing is published
before RUN.

Feeds (``market_data.feed``):

- ``synthetic``: seeded geometric Brownian motion per instrument (options are
  skipped: GBM is not an option price), on the wall clock: every ``1 / rate_hz``
  seconds one Bar per symbol, stamped with the start of the real interval it
  covers, its OHLC taken from GBM sub-steps over that interval
  (``WallClockBars``). Same seed, same price path; each symbol has its own
  generator so adding a symbol does not change the others. The prices are saved
  in the run directory (``FeedState``) so a restart goes on from them.
- ``replay``: bars or ticks from CSV/Parquet in market time (the file's
  timestamps), read in chunks of ``chunk_rows`` (pandas, imported only here), so
  memory stays flat whatever the file size (unless ``sort = true``). ``speed`` 0
  replays as fast as possible, N paces at real time x N. Work is done in bounded
  slices from ``work()`` so heartbeats keep flowing. At the end an ``EndOfData``
  (with ``rows_skipped``) goes out on ``md.eod`` and the actor stays up.

Every published Bar/Tick carries ``fseq``, the feed's sequence number (1, 2, ...).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from actors import instruments as instruments_mod
from actors import registry
from actors.base import Actor, Role, UserError, main
from actors.report import iso
from bus.codec import ProtocolError
from bus.fileio import atomic_write
from bus.messages import (
    Bar, BarBatch, EndOfData, HistoryReply, HistoryRequest, Instrument, InstrumentsReply, InstrumentsRequest, MdError,
    Progress, Tick,
)
from bus.sockets import Port, Received, topic_for

ROOT = Path(__file__).resolve().parent.parent
HISTORY_MAX = 10_000  # bars kept per symbol for HistoryRequest
SLICE_ROWS = 2_000  # rows published per work() call: bounds the time between heartbeats
SUB_STEPS = 16  # GBM steps per synthetic interval (they make high/low)
MAX_CATCHUP = 3000  # intervals of sub-steps one late synthetic bar replays before it takes one big step
SAVE_EVERY_S = 1.0  # synthetic prices saved this often (and on stop): what a killed feed resumes from
YEAR_S = 365.25 * 86400.0
TOPIC_EOD = topic_for("md.eod")
TOPIC_BATCH = topic_for("md.batch")
BACKTEST_WINDOW_BATCHES = 4  # bars in flight <= 4 batches: far below the md PUB's 100k HWM


class ReplayError(UserError, ValueError):
    pass


def resolve(path: str) -> str:
    """Relative paths are taken from the working directory, else from the project root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    alt = ROOT / path
    return str(alt) if alt.exists() else path


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
CANON = {"bars": ("open", "high", "low", "close", "volume"), "ticks": ("price", "size")}
OPTIONAL = {"volume", "size"}
NAMED_BAD = 5  # bad rows listed by number in the warning
NS_MAX = 2**63 - 1
UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
SORT_HINT = "set market_data.sort = true to sort the file in memory"


class Problem(NamedTuple):
    """One refused row: where it is and why."""

    row: int
    column: str
    value: str
    reason: str

    def __str__(self) -> str:
        if self.reason == "is empty":
            return f"row {self.row}, column {self.column!r} is empty"
        return f"row {self.row}, column {self.column!r}: {self.value} {self.reason}"


class ScanStats:
    """What one pass over the file found; the pre-scan's figures become the user's warnings."""

    def __init__(self) -> None:
        self.rows = 0  # data rows read
        self.good = 0  # rows that will be published
        self.skipped = 0
        self.bad_rows: list[int] = []  # the first NAMED_BAD skipped rows
        self.first_bad: Problem | None = None
        self.off_tick = 0  # good rows with a price off their instrument's tick grid
        self.first_off: str = ""


def _n(k: int, noun: str, count: bool = True) -> str:
    word = noun if k == 1 else noun + "s"
    return f"{k} {word}" if count else word


def _show(v: Any) -> str:
    """A cell as the user typed it (near enough): numbers without a spurious .0, text quoted."""
    import pandas as pd

    try:
        if pd.isna(v):
            return "(empty)"
    except (TypeError, ValueError):
        pass
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, str) else str(v)


class OrderCheck:
    """The order a replay needs: time never goes back, across symbols too (rows of one
    timestamp may come in any symbol order), because the strategy and the exchange see
    one stream in file order and the exchange writes one equity row per timestamp; and
    per symbol, bar timestamps strictly increase (two bars of one symbol cannot start
    at the same time; ticks can: several trades in one millisecond). Fed chunk by chunk
    (arrays of good rows), it keeps only the last timestamp and the symbols seen at it,
    so memory stays flat."""

    def __init__(self, path: str, names: list[str], strict: bool = True, sortable: bool = True):
        self.path = path
        self.names = names  # symbol code -> symbol
        self.strict = strict
        self.hint = f"; {SORT_HINT}" if sortable else ""
        self.last_ts: int | None = None
        self.last_row = 0
        self.last_code = 0
        self.run: dict[int, int] = {}  # symbol code -> row, for the rows at last_ts

    def check(self, ts: Any, rows: Any, codes: Any) -> None:
        import numpy as np

        if len(ts) == 0:
            return
        if self.last_ts is None:
            prev_ts, prev_rows, prev_codes = ts[:-1], rows[:-1], codes[:-1]
            cur = slice(1, None)
        else:
            prev_ts = np.concatenate(([self.last_ts], ts[:-1]))
            prev_rows = np.concatenate(([self.last_row], rows[:-1]))
            prev_codes = np.concatenate(([self.last_code], codes[:-1]))
            cur = slice(None)
        back = np.flatnonzero(ts[cur] < prev_ts)
        if len(back):
            i = int(back[0])
            j = i + (1 if cur.start == 1 else 0)
            t, r, c = int(ts[j]), int(rows[j]), int(codes[j])
            pt, pr, pc = int(prev_ts[i]), int(prev_rows[i]), int(prev_codes[i])
            if c == pc:
                raise ReplayError(f"{self.path}: row {r}: timestamp {iso(t)} of {self.names[c]} is before row {pr}'s "
                                  f"{iso(pt)}: timestamps must increase{self.hint}")
            raise ReplayError(f"{self.path}: row {r}: timestamp {iso(t)} ({self.names[c]}) is before row {pr}'s "
                              f"{iso(pt)} ({self.names[pc]}): the replay needs the rows in time order across "
                              f"symbols (rows of one timestamp may come in any symbol order){self.hint}")
        if not self.strict:
            self.last_ts, self.last_row, self.last_code = int(ts[-1]), int(rows[-1]), int(codes[-1])
            return
        # Time never goes back now, so a symbol's repeated timestamp sits in one run of
        # equal timestamps: sort by (ts, symbol, row) and look at neighbours. The run
        # left open by the previous chunk takes part.
        if self.run and ts[0] == self.last_ts:
            k = np.fromiter(self.run.keys(), dtype=np.int64, count=len(self.run))
            v = np.fromiter(self.run.values(), dtype=np.int64, count=len(self.run))
            all_ts = np.concatenate((np.full(len(k), self.last_ts, dtype=np.int64), ts))
            all_codes, all_rows = np.concatenate((k, codes)), np.concatenate((v, rows))
        else:
            all_ts, all_codes, all_rows = ts, codes, rows
        order = np.lexsort((all_rows, all_codes, all_ts))
        s_ts, s_codes, s_rows = all_ts[order], all_codes[order], all_rows[order]
        dup = np.flatnonzero((s_ts[1:] == s_ts[:-1]) & (s_codes[1:] == s_codes[:-1]))
        if len(dup):
            i = int(dup[np.argmin(s_rows[dup + 1])])  # the first repeat in file order
            raise ReplayError(f"{self.path}: row {int(s_rows[i + 1])}: timestamp {iso(int(s_ts[i + 1]))} of "
                              f"{self.names[int(s_codes[i + 1])]} repeats row {int(s_rows[i])}'s "
                              f"{iso(int(s_ts[i]))}: per symbol, timestamps must strictly increase "
                              "(a duplicated row? sorting cannot fix that)")
        last = int(ts[-1])
        if last != self.last_ts:
            self.run = {}
        tail = np.flatnonzero(ts == last)
        for c, r in zip(codes[tail].tolist(), rows[tail].tolist()):
            self.run[c] = r
        self.last_ts, self.last_row, self.last_code = last, int(rows[-1]), int(codes[-1])


class Replay:
    """A CSV/Parquet file of bars or ticks, checked whole before the run and then streamed.

    The constructor runs the pre-scan (``scan``): one chunked pass that parses every row
    as the replay will, refuses the file (ReplayError) on what cannot be replayed
    (no data rows, timestamps out of order, with ``on_bad_row = "error"`` any bad
    row) and counts what will be skipped (bad values, unknown symbols) and prices off
    the tick grid, for ``warnings``. ``chunks()`` then streams the rows (a second pass
    through the same code, or the rows sorted in memory with ``sort = true``).

    Rows are named as a user finds them in an editor: for CSV the line number (the
    header is line 1; blank lines count), for Parquet the 1-based row.
    """

    def __init__(self, md: Any, instruments: dict[str, Instrument]):
        import numpy as np
        import pandas as pd  # only the market-data process pays for pandas, and only in replay

        self.np, self.pd = np, pd
        self.cfg = md
        self.kind = md.kind
        if not md.path:
            raise ReplayError("market_data.feed = 'replay' needs market_data.path")
        self.path = resolve(md.path)
        if not os.path.isfile(self.path):
            raise ReplayError(f"replay file not found: {self.path}")
        fmt = md.format
        if fmt == "auto":
            ext = self.path.lower().rsplit(".", 1)[-1]
            fmt = {"csv": "csv", "parquet": "parquet", "pq": "parquet"}.get(ext, "")
            if not fmt:
                raise ReplayError(f"{self.path}: cannot tell the format from the extension; "
                                  "set market_data.format = 'csv' or 'parquet'")
        self.fmt = fmt
        header = self._header()
        self.ts_col = md.timestamp_column or header[0]
        if self.ts_col not in header:
            raise ReplayError(f"{self.path}: timestamp column {self.ts_col!r} not in columns {header}")
        # Canonical name -> file column: the rename map first, else a case-insensitive match.
        lower = {h.lower(): h for h in header}
        for k in md.columns:
            if k not in CANON[self.kind] + ("symbol",):
                raise ReplayError(f"market_data.columns: unknown field {k!r} for {self.kind} "
                                  f"(known: {', '.join(CANON[self.kind] + ('symbol',))})")
        self.colmap: dict[str, str] = {}
        for canon in CANON[self.kind] + ("symbol",):
            col = md.columns.get(canon) or lower.get(canon)
            if col is None:
                if canon in OPTIONAL or canon == "symbol":
                    continue
                raise ReplayError(f"{self.path}: no column for {canon!r} in {header}; "
                                  f"map it with market_data.columns = {{ {canon} = \"<column>\" }}")
            if col not in header:
                raise ReplayError(f"{self.path}: market_data.columns.{canon} = {col!r} is not a column of {header}")
            self.colmap[canon] = col
        self.symbol = md.symbol or ("" if "symbol" in self.colmap else Path(self.path).stem.upper())
        if self.symbol and self.symbol not in instruments:
            raise ReplayError(f"replay symbol {self.symbol!r} is not in the instrument master")
        # Symbols travel as small integer codes; code 0 is the single-symbol file's symbol.
        self.names = [self.symbol] if self.symbol else list(instruments)
        self.code_of = {s: i for i, s in enumerate(self.names)}
        self.ticks = np.array([instruments[s].tick_size for s in self.names], dtype="float64")
        self.usecols = sorted({self.ts_col, *self.colmap.values()})
        self._ts_mode = ""  # decided on the first chunk, kept for the file (see _ts_ns)
        self._epoch_scale = 1
        self._sorted: dict[str, Any] | None = None
        self.rows_read = 0
        self.stats = self.scan()
        self.skipped = self.stats.skipped
        self.total = self.stats.good  # rows chunks() will yield

    # ------------------------------------------------------------- reading
    def _header(self) -> list[str]:
        if self.fmt == "csv":
            try:
                return [str(c) for c in self.pd.read_csv(self.path, nrows=0, index_col=False).columns]
            except self.pd.errors.EmptyDataError:
                raise ReplayError(f"{self.path}: the file is empty (no header, no rows)") from None
            except Exception as e:
                raise ReplayError(f"{self.path}: cannot read CSV header: {e}") from None
        pq = self._pyarrow()
        try:
            return list(pq.ParquetFile(self.path).schema_arrow.names)
        except Exception as e:
            raise ReplayError(f"{self.path}: cannot read Parquet schema: {e}") from None

    def _pyarrow(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ReplayError(f"{self.path}: Parquet replay needs pyarrow, which is not installed "
                              "(pip install pyarrow), or convert the file to CSV") from None
        return pq

    def _frames(self) -> Iterator[tuple[int, Any]]:
        """(first row number, DataFrame) per chunk."""
        n = self.cfg.chunk_rows
        if self.fmt == "csv":
            row = 2  # line 1 is the header
            try:
                # Blank lines are kept (as empty rows) so row numbers stay line numbers;
                # only an empty cell is missing ("NA", "n/a", "NaN" are shown as typed: a
                # bad value, or a symbol); the timestamp is read as text and parsed by
                # _ts_ns, the same way in every chunk.
                with self.pd.read_csv(self.path, chunksize=n, usecols=self.usecols, index_col=False,
                                      skip_blank_lines=False, keep_default_na=False, na_values=[""],
                                      dtype={self.ts_col: str}) as reader:
                    for df in reader:
                        yield row, df
                        row += len(df)
            except (self.pd.errors.ParserError, ValueError, UnicodeDecodeError) as e:
                raise ReplayError(f"{self.path}: cannot read CSV near line {row}: {e}") from None
        else:
            pf = self._pyarrow().ParquetFile(self.path)
            row = 1
            for batch in pf.iter_batches(batch_size=n, columns=self.usecols):
                df = batch.to_pandas()
                yield row, df
                row += len(df)

    def _ts_ns(self, col: Any) -> tuple[Any, Any, Any]:
        """(ns int64, unreadable mask, out-of-range mask). Epoch numbers or text dates;
        which one, the epoch unit and the text format are decided on the first chunk
        and kept for the whole file, so two chunks never read the same column two ways."""
        np, pd = self.np, self.pd
        n = len(col)
        notna = col.notna().to_numpy()
        if not self._ts_mode and notna.any():
            if pd.api.types.is_datetime64_any_dtype(col):
                self._ts_mode = "datetime"
            elif pd.api.types.is_numeric_dtype(col):
                self._ts_mode = "epoch"
            else:
                nums = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
                self._ts_mode = "epoch" if np.isfinite(nums[notna]).mean() >= 0.5 else "text"
                if self._ts_mode == "text":
                    iso_ok = pd.to_datetime(col, utc=True, format="ISO8601", errors="coerce").notna().any()
                    self._ts_mode = "iso" if iso_ok else "text"
            if self._ts_mode == "epoch":
                v = np.abs(pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64"))
                mag = float(np.nanmax(v)) if np.isfinite(v).any() else 0.0
                # Epoch numbers: the unit is told by the magnitude (s, ms, us or ns since 1970).
                self._epoch_scale = 10**9 if mag < 1e11 else 10**6 if mag < 1e14 else 10**3 if mag < 1e17 else 1
        if self._ts_mode == "epoch":
            num = pd.to_numeric(col, errors="coerce")
            scale = self._epoch_scale
            if pd.api.types.is_integer_dtype(num):
                v = num.to_numpy(dtype="int64")
                bad = np.zeros(n, dtype=bool)
                oor = np.abs(v) > NS_MAX // scale
                ns = np.where(oor, 0, v) * scale
            else:
                f = num.to_numpy(dtype="float64")
                bad = ~np.isfinite(f)
                with np.errstate(invalid="ignore"):
                    oor = ~bad & (np.abs(f) * scale >= 9.2e18)
                ns = np.round(np.where(bad | oor, 0.0, f) * scale).astype("int64")
            return ns, bad, oor
        with warnings.catch_warnings():  # "could not infer format": the user sees the rows it could not read
            warnings.simplefilter("ignore", UserWarning)
            t = pd.to_datetime(col, utc=True, errors="coerce", **({"format": "ISO8601"} if self._ts_mode == "iso" else {}))
        a = t.dt.tz_convert(None).to_numpy()
        if not np.issubdtype(a.dtype, np.datetime64):  # no value at all in this chunk
            return np.zeros(n, dtype="int64"), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        mult = UNIT_NS[np.datetime_data(a.dtype)[0]]
        bad = np.isnat(a)
        raw = a.view("int64")
        oor = ~bad & (np.abs(raw) > NS_MAX // mult)
        return np.where(bad | oor, 0, raw) * mult, bad, oor

    # ------------------------------------------------------------ checking
    def _clean(self, df: Any, row0: int, stats: ScanStats) -> tuple[Any, ...]:
        """Parse one chunk; count and (on_bad_row = "error") refuse bad rows; return the
        good rows as arrays (ts, row numbers, symbol codes, value columns...)."""
        np, pd = self.np, self.pd
        n = len(df)
        rows = np.arange(row0, row0 + n, dtype="int64")
        checks: list[tuple[str, Any, str]] = []  # (file column, bad mask, why), in the order they are told
        ts, ts_bad, ts_oor = self._ts_ns(df[self.ts_col])
        checks += [(self.ts_col, df[self.ts_col].isna().to_numpy(), "is empty"),
                   (self.ts_col, ts_bad, "is not a timestamp"), (self.ts_col, ts_oor, "is out of range"),
                   (self.ts_col, ts < 0, "is before 1970")]
        if "symbol" in self.colmap:
            col = self.colmap["symbol"]
            codes = df[col].map(self.code_of).to_numpy(dtype="float64", na_value=np.nan)
            unknown = np.isnan(codes)
            checks += [(col, df[col].isna().to_numpy(), "is empty"),
                       (col, unknown, "is not a symbol of the instrument master")]
            codes = np.where(unknown, 0, codes).astype("int64")
        else:
            codes = np.zeros(n, dtype="int64")
        vals = []
        for canon in CANON[self.kind]:
            col = self.colmap.get(canon)
            if col is None:
                vals.append(np.zeros(n, dtype="int64"))
                continue
            raw = df[col]
            empty = raw.isna().to_numpy()
            a = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            fin = np.isfinite(a)
            if canon in OPTIONAL:  # a missing count is 0; one that is there must be a count
                good = fin & (a >= 0)
                checks.append((col, ~empty & ~good, "is not a count (a number >= 0)"))
                vals.append(np.where(good, a, 0).astype("int64"))
                continue
            checks += [(col, empty, "is empty"), (col, ~empty & ~fin, "is not a number"),
                       (col, fin & ~((a > 0) & (a < 1e12)), "is not a price (> 0 and < 1e12)")]
            vals.append(a)
        if self.kind == "bars":
            o, h, lo, c = vals[:4]
            cm = self.colmap
            with np.errstate(invalid="ignore"):  # NaN compares false: those rows are already bad
                checks += [(cm["high"], h < lo, "is below the row's low"),
                           (cm["high"], h < np.maximum(o, c), "is below the row's open or close"),
                           (cm["low"], lo > np.minimum(o, c), "is above the row's open or close")]
        bad = np.zeros(n, dtype=bool)
        for _, m, _ in checks:
            bad |= m
        stats.rows += n
        nbad = int(bad.sum())
        if nbad:
            first = np.flatnonzero(bad)[:NAMED_BAD]
            if stats.first_bad is None:
                i = int(first[0])
                col, _, why = next(ch for ch in checks if ch[1][i])
                stats.first_bad = Problem(int(rows[i]), col, _show(df[col].iloc[i]), why)
                if self.cfg.on_bad_row == "error":
                    raise ReplayError(f"{self.path}: {stats.first_bad} (market_data.on_bad_row = \"error\")")
            room = NAMED_BAD - len(stats.bad_rows)
            stats.bad_rows += rows[first[:room]].tolist()
            stats.skipped += nbad
        ok = ~bad
        out = (ts[ok], rows[ok], codes[ok], *(v[ok] for v in vals))
        stats.good += len(out[0])
        self._check_ticks(out, stats)
        return out

    def _check_ticks(self, good: tuple[Any, ...], stats: ScanStats) -> None:
        np = self.np
        _, rows, codes, *vals = good
        if not len(rows):
            return
        tick = self.ticks[codes]
        prices = list(zip(CANON[self.kind], vals))[: 4 if self.kind == "bars" else 1]
        off = np.zeros(len(rows), dtype=bool)
        for _, a in prices:
            q = a / tick
            off |= np.abs(q - np.round(q)) > 1e-6 + 1e-9 * np.abs(q)
        k = int(off.sum())
        if not k:
            return
        if not stats.first_off:
            i = int(np.flatnonzero(off)[0])
            for canon, a in prices:  # name the row's first off-grid column
                q = a[i] / tick[i]
                if abs(q - round(q)) > 1e-6 + 1e-9 * abs(q):
                    stats.first_off = (f"row {int(rows[i])}, {self.names[int(codes[i])]} {self.colmap[canon]} "
                                       f"{a[i]:g} (tick {tick[i]:g})")
                    break
        stats.off_tick += k

    def _order_check(self, sortable: bool = True) -> OrderCheck:
        return OrderCheck(self.path, self.names, strict=self.kind == "bars", sortable=sortable)

    def _pass(self, stats: ScanStats, order: OrderCheck | None) -> Iterator[tuple[Any, ...]]:
        for row0, df in self._frames():
            good = self._clean(df, row0, stats)
            if order is not None:
                order.check(good[0], good[1], good[2])
            yield good

    def scan(self) -> ScanStats:
        """The pre-scan (see the class docstring). Memory stays flat, but for ``sort = true``,
        which keeps the good rows (about 60 bytes each, twice that while sorting)."""
        np = self.np
        stats = ScanStats()
        if self.cfg.sort:
            parts = list(self._pass(stats, None))
            cols = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []
            del parts
        else:
            for _ in self._pass(stats, self._order_check()):
                pass
        if stats.rows == 0:
            raise ReplayError(f"{self.path}: no data rows (only a header)")
        if stats.good == 0:
            raise ReplayError(f"{self.path}: none of its {stats.rows} rows can be replayed; the first: "
                              f"{stats.first_bad}")
        if self.cfg.sort:
            perm = np.argsort(cols[0], kind="stable")  # ties keep file order
            cols = [c[perm] for c in cols]
            del perm
            self._order_check(sortable=False).check(cols[0], cols[1], cols[2])
            self._sorted = cols
        return stats

    @property
    def warnings(self) -> list[str]:
        """One line each for the user's console: rows skipped, prices off the tick grid."""
        s, out = self.stats, []
        if s.skipped:
            more = ", ..." if s.skipped > len(s.bad_rows) else ""
            out.append(f"{self.path}: {_n(s.skipped, 'row')} of {s.rows} skipped: {_n(len(s.bad_rows), 'row', False)} "
                       f"{', '.join(map(str, s.bad_rows))}{more}; the first: {s.first_bad} "
                       "(market_data.on_bad_row = \"error\" refuses such a file)")
        if s.off_tick:
            out.append(f"{self.path}: {_n(s.off_tick, 'row')} with prices off their instrument's tick grid, "
                       f"the first: {s.first_off}; replayed as they are")
        return out

    def chunks(self) -> Iterator[list[tuple]]:
        """Yield lists of (symbol, ts_ns, *values) rows, bad rows dropped (as counted by the scan)."""
        if self._sorted is not None:
            cols, n = self._sorted, self.cfg.chunk_rows
            for i in range(0, len(cols[0]), n):
                part = [c[i:i + n] for c in cols]
                self.rows_read += len(part[0])
                yield self._tuples(part)
            return
        stats = ScanStats()
        for good in self._pass(stats, self._order_check()):
            self.rows_read = stats.rows
            yield self._tuples(good)

    def _tuples(self, good: tuple[Any, ...]) -> list[tuple]:
        ts, _rows, codes, *vals = good
        names = self.names
        syms = [names[0]] * len(ts) if len(names) == 1 else [names[c] for c in codes.tolist()]
        return list(zip(syms, ts.tolist(), *(v.tolist() for v in vals)))


# ---------------------------------------------------------------------- actor
class MarketData(Actor):
    name = "market-data"
    progress_bar = ("fseq", "total")  # heartbeat status, READY info

    def init(self) -> dict[str, Any]:
        md = self.cfg.market_data
        src = md.instruments if md.instruments == instruments_mod.SYNTHETIC else resolve(md.instruments)
        self.instruments, self.option_mappings = instruments_mod.load(src, md.symbols)
        self.by_symbol = {i.symbol: i for i in self.instruments}
        self.log.info("instrument master loaded", source=src, instruments=len(self.instruments),
                      option_mappings=self.option_mappings)
        self.feed_name = md.feed
        self.fseq = 0
        self.published = 0
        self.eod_sent = False
        self.history: dict[str, deque[Bar]] = {}
        self.progress: dict[str, int] = {}  # consumer identity -> last Progress.fseq it reported
        self.replay: Replay | None = None
        self.feed_state: FeedState | None = None  # the synthetic feed's saved prices
        self._rows: list[tuple] = []
        self._row_i = 0
        self._chunks: Iterator[list[tuple]] | None = None
        self._pace_t0: float | None = None  # (wall, market ts) anchor of a paced replay
        self._pace_ts0 = 0
        self._state_dirty = False  # bars made since feed_state.json was last written
        warns: list[str] = []  # told on the supervisor's console when READY
        if md.feed == "replay":
            self.replay = Replay(md, self.by_symbol)
            warns += self.replay.warnings
            self.feed_name = f"replay:{Path(self.replay.path).name}"
            self.log.info("replay opened", path=self.replay.path, format=self.replay.fmt, kind=md.kind,
                          columns=self.replay.colmap, timestamp_column=self.replay.ts_col,
                          symbol=self.replay.symbol or "<column>")
        else:
            interval_ns = max(1, round(1e9 / md.rate_hz))
            self.gbm = [GbmSymbol(i, md.seed, md.start_price, md.drift, md.volatility, interval_ns / 1e9)
                        for i in self.instruments if i.kind != "option"]
            self.clock = WallClockBars(self.gbm, interval_ns)
            self.feed_state = FeedState(self.run_dir, md.seed)
            resumed, warn = self.feed_state.load(self.gbm)
            if warn:
                warns.append(warn)
            elif resumed:
                self.log.info("synthetic prices resumed", path=self.feed_state.path, symbols=resumed)
            else:
                self.log.info("synthetic prices start fresh", start_price=md.start_price)
        # Backtest: bars go out in BarBatch messages, at most `window` bars ahead
        # of the slowest flow consumer's Progress, so the PUB never reaches its
        # high-water mark and nothing is dropped (see docs/ARCHITECTURE.md).
        self.backtest = self.cfg.service.mode == "backtest" and self.replay is not None and md.kind == "bars"
        self.batch_n = md.batch_bars
        self.window = BACKTEST_WINDOW_BATCHES * md.batch_bars
        # md.ref identities whose Progress gates a backtest: the actors declaring the role.
        self.consumers = registry.role_holders(self.cfg, Role.BACKTEST_FLOW) if self.backtest else ()
        self.waiting_credit = 0  # times the window was full (how often consumers held us back)
        info: dict[str, Any] = {"instruments": len(self.instruments), "option_mappings": self.option_mappings}
        if self.backtest:
            info["total"] = self.replay.total  # type: ignore[union-attr]  # for the progress bar
        for w in warns:
            self.log.warning("market data warning", warning=w)
        if warns:
            info["warnings"] = warns
        self.pub = self.open("md", bind=True)
        self.ref = self.open("md.ref", bind=True, handler=self._on_ref)
        return info

    # ---------------------------------------------------------------- feeds
    def on_run(self) -> None:
        md = self.cfg.market_data
        if self.replay is not None:
            self._chunks = self.replay.chunks()
            if md.speed > 0:
                # Woken by this timer when the next paced row is due; work() sets its due time.
                self._pace = self.every(3600.0, lambda: None)
        else:
            self.clock.start(time.time_ns())
            self._bar_timer = self.every(1.0 / md.rate_hz, self._synthetic_step)
            self._schedule_bar()
            self.every(SAVE_EVERY_S, self._save_feed_state)
        self.log.info("feed started", feed=self.feed_name)

    def _publish_bar(self, bar: Bar) -> None:
        self.pub.send(bar, topic=topic_for("md.bar", bar.symbol))
        self.published += 1
        h = self.history.get(bar.symbol)
        if h is None:
            h = self.history[bar.symbol] = deque(maxlen=HISTORY_MAX)
        h.append(bar)

    def _schedule_bar(self) -> None:
        # Timers run on the monotonic clock, bars end on the wall clock: wake just
        # after the wall-clock end of the bar being built (an early wake makes no bar).
        wait_s = (self.clock.due_ns() - time.time_ns()) / 1e9
        self._bar_timer.due = time.monotonic() + max(0.0, wait_s) + 0.0005

    def _synthetic_step(self) -> None:
        for sym, ts, o, h, lo, c, v in self.clock.step(time.time_ns()):
            self.fseq += 1
            self._publish_bar(Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=self.fseq))
            self._state_dirty = True
        self._schedule_bar()

    def _save_feed_state(self) -> None:
        if self._state_dirty and self.feed_state is not None:
            self.feed_state.save(self.gbm)
            self._state_dirty = False

    def on_stop(self) -> None:
        self._save_feed_state()

    def _work_batches(self) -> bool:
        """Backtest: publish one BarBatch if the consumers' credit allows."""
        progress = self.progress
        low = min(progress.get(c, 0) for c in self.consumers)
        if self.fseq - low >= self.window:
            self.waiting_credit += 1
            return False  # woken by the next Progress on md.ref
        out: list[Bar] = []
        n = self.batch_n
        while len(out) < n:
            if self._row_i >= len(self._rows):
                self._rows = next(self._chunks, None)  # type: ignore[arg-type]
                self._row_i = 0
                if self._rows is None:
                    break
                continue
            take = self._rows[self._row_i:self._row_i + (n - len(out))]
            self._row_i += len(take)
            fseq = self.fseq
            for sym, ts, o, h, lo, c, v in take:
                fseq += 1
                out.append(Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=fseq))
            self.fseq = fseq
        if out:
            self.pub.send(BarBatch(bars=out), topic=TOPIC_BATCH)
            self.published += len(out)
        if self._rows is None:
            self._end_of_data()
            return False
        return True

    def work(self) -> bool:
        if self._chunks is None or self.eod_sent:
            return False
        if self.backtest:
            return self._work_batches()
        speed = self.cfg.market_data.speed
        bars = self.replay.kind == "bars"  # type: ignore[union-attr]
        for _ in range(SLICE_ROWS):
            if self._row_i >= len(self._rows):
                self._rows = next(self._chunks, None)  # type: ignore[arg-type]
                self._row_i = 0
                if self._rows is None:
                    self._end_of_data()
                    return False
                continue
            row = self._rows[self._row_i]
            if speed > 0:
                now = time.monotonic()
                if self._pace_t0 is None:
                    self._pace_t0, self._pace_ts0 = now, row[1]
                due = self._pace_t0 + (row[1] - self._pace_ts0) / 1e9 / speed
                if due > now:
                    self._pace.due = due
                    return False
            self._row_i += 1
            self.fseq += 1
            if bars:
                sym, ts, o, h, lo, c, v = row
                self._publish_bar(Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=self.fseq))
            else:
                sym, ts, p, s = row
                self.pub.send(Tick(symbol=sym, ts=ts, price=p, size=s, fseq=self.fseq),
                              topic=topic_for("md.tick", sym))
                self.published += 1
        return True

    def _end_of_data(self) -> None:
        self.eod_sent = True
        self._chunks = None
        self.pub.send(EndOfData(feed=self.feed_name, count=self.published, last_fseq=self.fseq,
                                rows_skipped=self.replay.skipped), topic=TOPIC_EOD)  # type: ignore[union-attr]
        self.log.info("end of data", feed=self.feed_name, count=self.published, last_fseq=self.fseq,
                      rows_read=self.replay.rows_read, rows_skipped=self.replay.skipped)  # type: ignore[union-attr]

    # ------------------------------------------------------------ reference
    def _on_ref(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, Progress):
            # One-way backtest flow-control report from a consumer (no reply); recorded for status.
            self.progress[(rcv.ident or b"?").decode(errors="replace")] = msg.fseq
            return
        if isinstance(msg, InstrumentsRequest):
            reply: Any = InstrumentsReply(instruments=self.instruments, option_mappings=self.option_mappings)
        elif isinstance(msg, HistoryRequest):
            if msg.symbol not in self.by_symbol:
                reply = MdError(code="unknown-symbol", text=f"no instrument {msg.symbol!r}")
            else:
                h = self.history.get(msg.symbol, ())
                bars = list(h)[-msg.n:] if h else []
                reply = HistoryReply(symbol=msg.symbol, bars=bars)
        else:
            reply = MdError(code="bad-request", text=f"md.ref does not answer {type(msg).__name__}")
        port.send(reply, to=rcv.ident, delim=rcv.delim)

    def on_bad_message(self, port: Port, err: ProtocolError) -> None:
        super().on_bad_message(port, err)
        if port is self.ref and err.ident is not None:
            port.send(MdError(code="bad-request", text=str(err)[:4000]), to=err.ident, delim=err.delim)

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {"feed": self.feed_name, "fseq": self.fseq, "published": self.published,
                             "instruments": len(self.instruments), "option_mappings": self.option_mappings,
                             "eod": self.eod_sent}
        if self.progress:
            s["consumer_progress"] = dict(self.progress)
        if self.backtest:
            s["credit_waits"] = self.waiting_credit
        if self.replay is not None:
            s["rows_read"] = self.replay.rows_read
            s["rows_skipped"] = self.replay.skipped
        return s


if __name__ == "__main__":
    main(MarketData)

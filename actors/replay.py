"""Replay files: a CSV/Parquet file of bars or ticks, checked whole before a run (the
pre-scan) and then streamed in chunks, so memory stays flat whatever the file size.

``Replay`` refuses (ReplayError, a UserError naming file, row, column, value or both
timestamps) what cannot be replayed and counts what will be skipped, for the user's
warnings; ``chunks()`` then yields the good rows. actors/feeds.py turns them into
market data (Bars/Ticks with fseq); both the market-data actor and the in-process
backtest kernel read files through here. pandas and numpy are imported only when a
Replay is made.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from actors.base import UserError
from actors.report import iso
from bus.messages import Instrument

ROOT = Path(__file__).resolve().parent.parent

class ReplayError(UserError, ValueError):
    pass


def resolve(path: str) -> str:
    """Relative paths are taken from the working directory, else from the project root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    alt = ROOT / path
    return str(alt) if alt.exists() else path



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
                vals.append(np.zeros(n, dtype="float64"))
                continue
            raw = df[col]
            empty = raw.isna().to_numpy()
            a = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            fin = np.isfinite(a)
            if canon in OPTIONAL:  # a missing volume/size is 0; one that is there must be a number >= 0
                good = fin & (a >= 0)  # fractional: crypto volumes (0.00123 BTC) are kept as they are
                checks.append((col, ~empty & ~good, "is not a volume (a number >= 0)"))
                vals.append(np.where(good, a, 0.0))
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

    def chunks(self, rows: int = 0) -> Iterator[list[tuple]]:
        """Yield lists of (symbol, ts_ns, *values) rows, bad rows dropped (as counted by the
        scan); at most ``rows`` rows a list when given, so a consumer that makes an object of
        every row holds a slice of a chunk in Python objects, never a whole chunk."""
        for good in self._good():
            n = len(good[0])
            step = rows if 0 < rows < n else max(n, 1)
            for i in range(0, n or 1, step):
                yield self._tuples(good if step == n else [c[i:i + step] for c in good])

    def _good(self) -> Iterator[tuple[Any, ...]]:
        """The good rows of each chunk as arrays (ts, row numbers, symbol codes, values...)."""
        if self._sorted is not None:
            cols, n = self._sorted, self.cfg.chunk_rows
            for i in range(0, len(cols[0]), n):
                part = tuple(c[i:i + n] for c in cols)
                self.rows_read += len(part[0])
                yield part
            return
        stats = ScanStats()
        for good in self._pass(stats, self._order_check()):
            self.rows_read = stats.rows
            yield good

    def _tuples(self, good: Any) -> list[tuple]:
        ts, _rows, codes, *vals = good
        names = self.names
        syms = [names[0]] * len(ts) if len(names) == 1 else [names[c] for c in codes.tolist()]
        return list(zip(syms, ts.tolist(), *(v.tolist() for v in vals)))

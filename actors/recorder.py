"""Recording a live session and replaying it.

``Recorder`` (``market_data.record = true``): every Bar, Tick and Quote a live feed
published, in the order it was published, into ``<run-dir>/recording.parquet``
(Parquet through pyarrow, one row group per ``record_rows`` rows, so memory stays
flat whatever the session length) or ``recording.csv`` (flushed every
``record_rows`` rows). One table, one row per message::

    recv_ns, type (bar|tick|quote), symbol, ts, open, high, low, close, volume,
    price, size, bid, ask, bid_size, ask_size

(the columns a type does not use are empty). A restarted market-data writes
``recording-2.parquet`` and so on, never over an earlier file. A Parquet file is
readable once closed (at stop): a market-data killed outright leaves it without its
footer, while a CSV recording keeps every flushed row. The venue's symbol master sits beside
it in ``instruments.json`` (actors/feed_api.py), which ``market_data.instruments``
can name for the replay.

``RecordingReplay`` (``feed = "replay"`` with ``path`` a recording): what
actors/feeds.py's ReplayFeed streams instead of a plain bars/ticks file.
``kind = "all"`` gives every message in the recorded order (quotes, trades, bars);
``kind = "bars"`` the bars only (what a backtest uses), ``"ticks"`` the trades only.
The file is checked whole first, like any replay file: a row with a bad value or an
unknown symbol is skipped and counted (or refuses the file with on_bad_row = "error").
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterator

from actors.base import UserError
from bus.messages import Bar, Instrument, Quote, Tick

COLUMNS = ("recv_ns", "type", "symbol", "ts", "open", "high", "low", "close", "volume", "price", "size",
           "bid", "ask", "bid_size", "ask_size")
FLOATS = COLUMNS[4:]
NEEDS = {"bar": ("open", "high", "low", "close", "volume"), "tick": ("price", "size"),
         "quote": ("bid", "ask", "bid_size", "ask_size")}
POSITIVE = {"open", "high", "low", "close", "price", "bid", "ask"}
KIND_TYPES = {"all": ("bar", "tick", "quote"), "bars": ("bar",), "ticks": ("tick",)}
SLICE = 4096


class Recorder:
    """Appends messages as rows; a full buffer becomes a row group (Parquet) or is flushed (CSV)."""

    def __init__(self, run_dir: str, fmt: str, rows_per_group: int):
        self.fmt = fmt
        # A restarted market-data (or a second run in the directory) starts a file of its own:
        # recording.parquet, recording-2.parquet, ... nothing recorded before is overwritten.
        self.path = os.path.join(run_dir, f"recording.{fmt}")
        k = 1
        while os.path.exists(self.path):
            k += 1
            self.path = os.path.join(run_dir, f"recording-{k}.{fmt}")
        self.group = rows_per_group
        self.rows = 0
        self.buf: dict[str, list] = {c: [] for c in COLUMNS}
        self._writer: Any = None
        self._csv: Any = None
        if fmt == "csv":
            self._file = open(self.path, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(COLUMNS)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._schema = pa.schema([("recv_ns", pa.int64()), ("type", pa.string()), ("symbol", pa.string()),
                                      ("ts", pa.int64()), *[(c, pa.float64()) for c in FLOATS]])
            self._writer = pq.ParquetWriter(self.path, self._schema)

    def write(self, m: Bar | Tick | Quote, recv_ns: int) -> None:
        b = self.buf
        b["recv_ns"].append(recv_ns)
        b["symbol"].append(m.symbol)
        b["ts"].append(m.ts)
        vals: dict[str, float] = {}
        if isinstance(m, Bar):
            b["type"].append("bar")
            vals = {"open": m.open, "high": m.high, "low": m.low, "close": m.close, "volume": m.volume}
        elif isinstance(m, Tick):
            b["type"].append("tick")
            vals = {"price": m.price, "size": m.size}
        else:
            b["type"].append("quote")
            vals = {"bid": m.bid, "ask": m.ask, "bid_size": m.bid_size, "ask_size": m.ask_size}
        for c in FLOATS:
            b[c].append(vals.get(c))
        self.rows += 1
        if len(b["ts"]) >= self.group:
            self.flush()

    def flush(self) -> None:
        b = self.buf
        if not b["ts"]:
            return
        if self._csv is not None:
            for row in zip(*(b[c] for c in COLUMNS)):
                self._csv.writerow("" if v is None else (repr(v) if isinstance(v, float) else v) for v in row)
            self._file.flush()
        else:
            import pyarrow as pa

            self._writer.write_table(pa.table({c: b[c] for c in COLUMNS}, schema=self._schema))
        for c in COLUMNS:
            b[c].clear()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._csv is not None:
            self._file.close()
            self._csv = None


def is_recording(path: str) -> bool:
    """True if ``path`` is a recording (its columns are the recorder's)."""
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
        else:
            with open(path, newline="", encoding="utf-8") as f:
                names = next(csv.reader(f), [])
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    except Exception:  # pyarrow's own errors for a file that is not Parquet
        return False
    return tuple(names) == COLUMNS


class RecordingReplay:
    """A recording as replay rows: checked whole on construction (counts, skips), then streamed."""

    def __init__(self, md: Any, instruments: dict[str, Instrument], path: str):
        self.path = path
        self.fmt = "parquet" if path.endswith(".parquet") else "csv"
        self.colmap = {c: c for c in COLUMNS}
        self.ts_col = "ts"
        self.symbol = ""
        self.instruments = instruments
        self.kind = md.kind
        self.types = KIND_TYPES[md.kind]
        self.on_bad_row = md.on_bad_row
        self.rows_read = 0
        self.skipped = 0
        self.total = 0
        self.warnings: list[str] = []
        first_bad = ""
        for rowno, row, err in self._rows():
            if err:
                if self.on_bad_row == "error":
                    raise UserError(f"{self.path}: row {rowno}: {err}")
                self.skipped += 1
                first_bad = first_bad or f"row {rowno}: {err}"
            elif row[1] in self.types:
                self.total += 1
        if self.skipped:
            self.warnings.append(f"{self.path}: {self.skipped} bad rows will be skipped (first: {first_bad})")
        self.rows_read = 0

    def _raw(self) -> Iterator[dict[str, Any]]:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=SLICE):
                d = batch.to_pydict()
                yield from (dict(zip(d, vals)) for vals in zip(*d.values()))
        else:
            with open(self.path, newline="", encoding="utf-8") as f:
                yield from csv.DictReader(f)

    def _rows(self) -> Iterator[tuple[int, tuple | None, str]]:
        """(row number, (recv, type, symbol, ts, values...), error) per data row; row 1 is the header."""
        for n, r in enumerate(self._raw(), 2):
            self.rows_read += 1
            t, sym = r.get("type"), r.get("symbol")
            if t not in NEEDS:
                yield n, None, f"column 'type': {t!r} is not bar, tick or quote"
                continue
            if sym not in self.instruments:
                yield n, None, f"column 'symbol': {sym!r} is not in the instrument master"
                continue
            try:
                ts = int(r["ts"])
                recv = int(r["recv_ns"])
                if ts < 0:
                    raise ValueError
            except (TypeError, ValueError):
                yield n, None, f"column 'ts' or 'recv_ns': {r.get('ts')!r} / {r.get('recv_ns')!r} is not a time in ns"
                continue
            vals = []
            bad = ""
            for c in NEEDS[t]:
                try:
                    v = float(r[c])
                except (TypeError, ValueError):
                    v = math.nan
                if not math.isfinite(v) or v < 0 or (c in POSITIVE and v <= 0):
                    bad = f"column {c!r}: {r.get(c)!r} is not a valid {t} value"
                    break
                vals.append(v)
            if bad:
                yield n, None, bad
                continue
            yield n, (recv, t, sym, ts, *vals), ""

    def messages(self) -> Iterator[Bar | Tick | Quote]:
        """Every kept message in the recorded order (fseq is the caller's)."""
        for _n, row, err in self._rows():
            if err or row is None or row[1] not in self.types:
                continue
            _recv, t, sym, ts, *v = row
            if t == "bar":
                yield Bar(symbol=sym, ts=ts, open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4])
            elif t == "tick":
                yield Tick(symbol=sym, ts=ts, price=v[0], size=v[1])
            else:
                yield Quote(symbol=sym, ts=ts, bid=v[0], ask=v[1], bid_size=v[2], ask_size=v[3])

    def chunks(self, n: int) -> Iterator[list[tuple]]:
        """Bar rows (symbol, ts, o, h, l, c, v) in lists of up to ``n``, as a bars file gives them."""
        out: list[tuple] = []
        for _n, row, err in self._rows():
            if err or row is None or row[1] != "bar":
                continue
            out.append((row[2], row[3], *row[4:]))
            if len(out) == n:
                yield out
                out = []
        if out:
            yield out

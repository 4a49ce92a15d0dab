"""market-data actor: instrument master, the feed, recent history.

init (before READY): load the instrument master, open the replay file (so a
missing file or column is a startup error), bind ``md`` PUB and ``md.ref``
ROUTER. Nothing is published before RUN.

Feeds (``market_data.feed``):

- ``synthetic``: seeded geometric Brownian motion per instrument (options are
  skipped: GBM is not an option price). Every ``1 / rate_hz`` seconds one Bar per
  symbol, each covering ``bar_seconds`` of simulated time, its OHLC taken from
  GBM sub-steps. Same seed, same prices; each symbol has its own generator so
  adding a symbol does not change the others.
- ``replay``: bars or ticks from CSV/Parquet, read in chunks of ``chunk_rows``
  (pandas, imported only here), so memory stays flat whatever the file size.
  ``speed`` 0 replays as fast as possible, N paces at real time x N. Work is
  done in bounded slices from ``work()`` so heartbeats keep flowing. At the end
  an ``EndOfData`` goes out on ``md.eod`` and the actor stays up.

Every published Bar/Tick carries ``fseq``, the feed's sequence number (1, 2, ...).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from actors import instruments as instruments_mod
from actors.base import Actor, UserError, main
from bus.codec import ProtocolError
from bus.messages import (
    Bar, BarBatch, EndOfData, HistoryReply, HistoryRequest, Instrument, InstrumentsReply, InstrumentsRequest, MdError,
    Progress, Tick,
)
from bus.sockets import Port, Received, topic_for

ROOT = Path(__file__).resolve().parent.parent
HISTORY_MAX = 10_000  # bars kept per symbol for HistoryRequest
SLICE_ROWS = 2_000  # rows published per work() call: bounds the time between heartbeats
SUB_STEPS = 16  # GBM steps per synthetic bar (they make high/low)
YEAR_S = 365.25 * 86400.0
TOPIC_EOD = topic_for("md.eod")
TOPIC_BATCH = topic_for("md.batch")
BACKTEST_WINDOW_BATCHES = 4  # bars in flight <= 4 batches: far below the md PUB's 100k HWM
FLOW_CONSUMERS = ("paper-exchange", "strategy")  # md.ref identities whose Progress gates a backtest


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
    """One symbol's seeded GBM price path, cut into bars."""

    def __init__(self, inst: Instrument, seed: int, start: float, drift: float, vol: float, bar_s: float):
        self.symbol = inst.symbol
        self.tick = inst.tick_size
        # str seeds are hashed deterministically (sha512) by random.Random.
        self.rng = random.Random(f"{seed}:{inst.symbol}")
        self.price = start
        dt = bar_s / SUB_STEPS / YEAR_S
        self.mu_dt = (drift - 0.5 * vol * vol) * dt
        self.sig = vol * math.sqrt(dt)

    def _round(self, p: float) -> float:
        # Prices on the tick grid (the exchange checks ticks on limit orders); never below one tick.
        return max(self.tick, round(round(p / self.tick) * self.tick, 10))

    def next_bar(self) -> tuple[float, float, float, float, int]:
        o = hi = lo = self.price
        p = self.price
        for _ in range(SUB_STEPS):
            p *= math.exp(self.mu_dt + self.sig * self.rng.gauss(0.0, 1.0))
            hi = max(hi, p)
            lo = min(lo, p)
        self.price = p
        vol = int(self.rng.uniform(100, 10_000))
        return self._round(o), self._round(hi), self._round(lo), self._round(p), vol


# --------------------------------------------------------------------- replay
CANON = {"bars": ("open", "high", "low", "close", "volume"), "ticks": ("price", "size")}
OPTIONAL = {"volume", "size"}


class Replay:
    """Streams rows of a CSV/Parquet file as lists, one chunk at a time."""

    def __init__(self, md: Any, known: set[str]):
        import pandas as pd  # only the market-data process pays for pandas, and only in replay

        self.pd = pd
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
        if self.symbol and self.symbol not in known:
            raise ReplayError(f"replay symbol {self.symbol!r} is not in the instrument master")
        self.known = known
        self.usecols = sorted({self.ts_col, *self.colmap.values()})
        self.skipped = 0  # rows dropped: bad prices, unknown symbols
        self.rows_read = 0

    def count_rows(self) -> int:
        """Data rows in the file, for the backtest progress bar (a fast byte scan for CSV)."""
        if self.fmt == "parquet":
            return self._pyarrow().ParquetFile(self.path).metadata.num_rows
        n = 0
        last = b"\n"
        with open(self.path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                n += block.count(b"\n")
                last = block[-1:]
        if last != b"\n":
            n += 1  # last line without a newline
        return max(0, n - 1)  # minus the header

    def _header(self) -> list[str]:
        if self.fmt == "csv":
            try:
                return [str(c) for c in self.pd.read_csv(self.path, nrows=0, index_col=False).columns]
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

    def _frames(self) -> Iterator[Any]:
        n = self.cfg.chunk_rows
        if self.fmt == "csv":
            with self.pd.read_csv(self.path, chunksize=n, usecols=self.usecols, index_col=False) as reader:
                yield from reader
        else:
            pf = self._pyarrow().ParquetFile(self.path)
            for batch in pf.iter_batches(batch_size=n, columns=self.usecols):
                yield batch.to_pandas()

    def _ts_ns(self, col: Any) -> Any:
        pd = self.pd
        if pd.api.types.is_numeric_dtype(col):
            # Epoch numbers: the unit is told by the magnitude (s, ms, us or ns since 1970).
            v = col.astype("float64")
            mag = float(v.abs().max()) if len(v) else 0.0
            scale = 1e9 if mag < 1e11 else 1e6 if mag < 1e14 else 1e3 if mag < 1e17 else 1.0
            return (v * scale).astype("int64").to_numpy()
        try:
            t = pd.to_datetime(col, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            t = pd.to_datetime(col, utc=True)
        # pandas 3 infers the resolution (s, ms, us...) from the text: normalise to ns.
        return t.dt.as_unit("ns").astype("int64").to_numpy()

    def chunks(self) -> Iterator[list[tuple]]:
        """Yield lists of (symbol, ts_ns, *values) rows, bad rows dropped and counted."""
        import numpy as np

        for df in self._frames():
            self.rows_read += len(df)
            try:
                ts = self._ts_ns(df[self.ts_col])
            except (ValueError, TypeError, OverflowError) as e:
                raise ReplayError(f"{self.path}: timestamp column {self.ts_col!r} near row "
                                  f"{self.rows_read - len(df) + 2}: {e}") from None
            cols = []
            ok = np.ones(len(df), dtype=bool)
            for canon in CANON[self.kind]:
                if canon not in self.colmap:
                    cols.append(np.zeros(len(df), dtype="int64"))
                    continue
                a = self.pd.to_numeric(df[self.colmap[canon]], errors="coerce").to_numpy(dtype="float64")
                if canon in OPTIONAL:
                    good = np.isfinite(a) & (a >= 0)
                    a = np.where(good, a, 0).astype("int64")
                else:
                    ok &= np.isfinite(a) & (a > 0) & (a < 1e12)
                cols.append(a)
            if self.kind == "bars":
                o, h, lo, c, _v = cols
                ok &= (h >= lo) & (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c))
            ok &= ts >= 0
            if "symbol" in self.colmap:
                syms = df[self.colmap["symbol"]].astype(str).to_numpy()
                ok &= np.isin(syms, list(self.known))
                sym_list = syms[ok].tolist()
            else:
                sym_list = None
            self.skipped += int((~ok).sum())
            lists = [ts[ok].tolist()] + [a[ok].tolist() for a in cols]
            if sym_list is None:
                sym_list = [self.symbol] * len(lists[0])
            yield list(zip(sym_list, *lists))


# ---------------------------------------------------------------------- actor
class MarketData(Actor):
    name = "market-data"

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
        self._rows: list[tuple] = []
        self._row_i = 0
        self._chunks: Iterator[list[tuple]] | None = None
        self._pace_t0: float | None = None  # (wall, market ts) anchor of a paced replay
        self._pace_ts0 = 0
        if md.feed == "replay":
            self.replay = Replay(md, set(self.by_symbol))
            self.feed_name = f"replay:{Path(self.replay.path).name}"
            self.log.info("replay opened", path=self.replay.path, format=self.replay.fmt, kind=md.kind,
                          columns=self.replay.colmap, timestamp_column=self.replay.ts_col,
                          symbol=self.replay.symbol or "<column>")
        else:
            self.gbm = [GbmSymbol(i, md.seed, md.start_price, md.drift, md.volatility, md.bar_seconds)
                        for i in self.instruments if i.kind != "option"]
        # Backtest: bars go out in BarBatch messages, at most `window` bars ahead
        # of the slowest flow consumer's Progress, so the PUB never reaches its
        # high-water mark and nothing is dropped (see docs/ARCHITECTURE.md).
        self.backtest = self.cfg.service.mode == "backtest" and self.replay is not None and md.kind == "bars"
        self.batch_n = md.batch_bars
        self.window = BACKTEST_WINDOW_BATCHES * md.batch_bars
        self.consumers = tuple(FLOW_CONSUMERS)
        self.waiting_credit = 0  # times the window was full (how often consumers held us back)
        info: dict[str, Any] = {"instruments": len(self.instruments), "option_mappings": self.option_mappings}
        if self.backtest:
            info["total"] = self.replay.count_rows()  # type: ignore[union-attr]  # for the progress bar
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
            bar_ns = int(md.bar_seconds * 1e9)
            self._sim_ts = (time.time_ns() // bar_ns) * bar_ns
            self._bar_ns = bar_ns
            self.every(1.0 / md.rate_hz, self._synthetic_step)
        self.log.info("feed started", feed=self.feed_name)

    def _publish_bar(self, bar: Bar) -> None:
        self.pub.send(bar, topic=topic_for("md.bar", bar.symbol))
        self.published += 1
        h = self.history.get(bar.symbol)
        if h is None:
            h = self.history[bar.symbol] = deque(maxlen=HISTORY_MAX)
        h.append(bar)

    def _synthetic_step(self) -> None:
        ts = self._sim_ts
        self._sim_ts += self._bar_ns
        for g in self.gbm:
            o, h, lo, c, v = g.next_bar()
            self.fseq += 1
            self._publish_bar(Bar(symbol=g.symbol, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=self.fseq))

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
        self.pub.send(EndOfData(feed=self.feed_name, count=self.published, last_fseq=self.fseq), topic=TOPIC_EOD)
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

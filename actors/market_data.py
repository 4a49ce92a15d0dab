"""The market-data actor: the sockets around actors/feeds.py (the instrument master, the
synthetic feed, the replay feed) plus recent history for the other actors.

init (before READY): load the instrument master; for a replay, check the whole
file (the pre-scan, actors/replay.py: a bad file is refused here, naming file, row and
value, and what will be skipped becomes READY info["warnings"], which the
supervisor logs); bind ``md`` PUB and ``md.ref`` ROUTER. Nothing is published
before RUN.

Feeds (``market_data.feed``):

- ``synthetic``: on the wall clock, every ``1 / rate_hz`` seconds one Bar per symbol
  (``WallClockBars``); the prices are saved in the run directory (``FeedState``) so a
  restart goes on from them.
- ``replay``: bars or ticks from CSV/Parquet in market time (the file's timestamps),
  read in chunks of ``chunk_rows``, so memory stays flat whatever the file size (unless
  ``sort = true``). ``speed`` 0 replays as fast as possible, N paces at real time x N.
  Work is done in bounded slices from ``work()`` so heartbeats keep flowing. At the end
  an ``EndOfData`` (with ``rows_skipped``) goes out on ``md.eod`` and the actor stays up.

Backtest under the actor kernel: bars go out in BarBatch messages, at most a window of
bars ahead of the slowest flow consumer's Progress, so the PUB never reaches its
high-water mark and nothing is dropped (docs/ARCHITECTURE.md, "The actor kernel").

- ``ccxt`` or ``package.module:Class``: a live feed adapter (actors/feed_api.py). The
  venue's symbol master is loaded in init (READY only after it is loaded and checked;
  a failed download falls back to a fresh-enough cache in the run dir, with a
  warning); at RUN the adapter's stream starts in a thread of its own (``FeedThread``)
  whose messages arrive here over an inproc PAIR socket polled with the others.
  Trades go out as Tick on ``md.tick.<SYM>``, best bid/ask as Quote on
  ``md.quote.<SYM>``, closed candles as Bar on ``md.bar.<SYM>``. ``record = true``
  writes them into the run dir (actors/recorder.py) for a later replay.

Every feed's health is a FeedStatus on ``md.status``, sent on every change and every
second (a late subscriber learns it within a second): a live feed silent for
``stale_after_s`` is stale, ``reconnecting`` while its connection is re-made, ok
again when data flows; synthetic and replay feeds are always ok.

Every published Bar/Tick/Quote carries ``fseq``, the feed's sequence number (1, 2, ...),
given in one place (``_emit``) whatever the feed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Iterator

from actors import options as options_mod
from actors import market_rules, registry
from actors.base import Actor, Role, main
from actors.feeds import FeedState, GbmSymbol, ReplayFeed, WallClockBars, load_instruments
from bus.codec import ProtocolError
from bus.messages import (
    Bar, BarBatch, FeedStatus, HistoryReply, HistoryRequest, InstrumentsReply, InstrumentsRequest, MdError, Progress,
    Quote, Tick,
)
from bus.sockets import Port, Received, open_inproc, topic_for

HISTORY_MAX = 10_000  # bars kept per symbol for HistoryRequest
SLICE_ROWS = 2_000  # rows published per work() call: bounds the time between heartbeats
SAVE_EVERY_S = 1.0  # synthetic prices saved this often (and on stop): what a killed feed resumes from
TOPIC_EOD = topic_for("md.eod")
TOPIC_BATCH = topic_for("md.batch")
TOPIC_STATUS = topic_for("md.status")
STATUS_EVERY_S = 1.0  # FeedStatus is repeated this often: a late subscriber learns it within this
LIVE_FEEDS_BUILTIN = ("synthetic", "replay")  # the rest are adapters (actors/feed_api.py)
BACKTEST_WINDOW_BATCHES = 4  # bars in flight <= 4 batches: far below the md PUB's 100k HWM


class MarketData(Actor):
    name = "market-data"
    progress_bar = ("fseq", "total")  # heartbeat status, READY info

    def init(self) -> dict[str, Any]:
        md = self.cfg.market_data
        self.adapter = None
        self.feed_thread = None
        self.recorder = None
        self.health = None
        warns: list[str] = []  # told on the supervisor's console when READY
        if md.feed not in LIVE_FEEDS_BUILTIN:
            from actors import feed_api

            self.adapter = feed_api.load_adapter(md)
            self.instruments, warns = feed_api.load_master(self.adapter, list(md.symbols), self.run_dir,
                                                           md.instruments_max_age_s, self.log)
            self.option_mappings, src = 0, self.adapter.name
        else:
            self.instruments, self.option_mappings, src = load_instruments(md)
            if md.instruments == "synthetic":  # [options]: a generated chain on the synthetic symbols
                self.instruments, self.option_mappings = options_mod.with_synthetic_chain(
                    self.cfg, self.instruments, options_mod.today_in(self.cfg, time.time_ns()))
        self.by_symbol = {i.symbol: i for i in self.instruments}
        self.log.info("instrument master loaded", source=src, instruments=len(self.instruments),
                      option_mappings=self.option_mappings)
        self.feed_name = md.feed
        self.fseq = 0
        self.published = 0
        self.eod_sent = False
        self.history: dict[str, deque[Bar]] = {}
        self.progress: dict[str, int] = {}  # consumer identity -> last Progress.fseq it reported
        self.replay: ReplayFeed | None = None
        self.feed_state: FeedState | None = None  # the synthetic feed's saved prices
        self._source: Iterator[Any] | None = None  # the replay's batches or messages, once running
        self._next: Bar | Tick | None = None  # a paced replay's message that is not due yet
        self._pace_t0: float | None = None  # (wall, market ts) anchor of a paced replay
        self._pace_ts0 = 0
        self._state_dirty = False  # bars made since feed_state.json was last written
        if self.adapter is not None:
            self.feed_name = self.adapter.name
            if md.record:
                from actors.recorder import Recorder

                self.recorder = Recorder(self.run_dir, md.record_format, md.record_rows)
                self.log.info("recording", path=self.recorder.path)
        elif md.feed == "replay":
            self.replay = ReplayFeed(md, self.by_symbol)
            warns += self.replay.warnings
            self.feed_name = self.replay.name
            r = self.replay.replay
            self.log.info("replay opened", path=r.path, format=r.fmt, kind=md.kind, columns=r.colmap,
                          timestamp_column=r.ts_col, symbol=r.symbol or "<column>")
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
        # [session]: publish only in session (pre-open to close); the synthetic feed also
        # prices the listed options (actors/market_rules.py).
        self.session = market_rules.sessions.calendar_of(self.cfg)
        self.quoter = market_rules.OptionQuoter(self.cfg, self.instruments) if self.replay is None else None
        self.dropped = 0  # synthetic bars not published: outside the session
        self.gate: market_rules.InSession | None = None  # a replay's session filter
        self.pub = self.open("md", bind=True)
        self.ref = self.open("md.ref", bind=True, handler=self._on_ref)
        if self.adapter is not None:
            from actors.feed_api import FeedThread

            # The actor's end binds first; the thread's end connects at RUN (inproc needs the bind first).
            pair = f"md-feed-{os.getpid()}-{id(self)}"
            self.feed_port = open_inproc(self.ctx, pair, "md", bind=True, stamper=self.stamper)
            self.adopt(self.feed_port, self._on_feed)
            thread_port = open_inproc(self.ctx, pair, "md", bind=False, stamper=self.stamper)
            self._ports.append(thread_port)  # closed with the others, after the thread stopped
            self.feed_thread = FeedThread(self.adapter, thread_port, list(md.symbols), md, self.log)
        return info

    # ---------------------------------------------------------------- feeds
    def on_run(self) -> None:
        md = self.cfg.market_data
        from actors.feed_api import FeedHealth

        syms = [i.symbol for i in self.instruments if i.kind != "option"]
        self.health = FeedHealth(self.feed_name, syms, int(md.stale_after_s * 1e9), time.time_ns())
        self.every(STATUS_EVERY_S, self._send_status)
        self._send_status()
        if self.feed_thread is not None:
            self.feed_thread.start()
            self.every(min(0.25, md.stale_after_s / 4), self._check_stale)
        elif self.replay is not None:
            self._source = self.replay.batches(self.batch_n) if self.backtest else self.replay.messages()
            if self.session is not None:  # only in session, fseq renumbered (market_rules.InSession)
                self.gate = market_rules.InSession(self.session)
                self._source = (self.gate.batches(self._source) if self.backtest
                                else self.gate.messages(self._source))
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

    def _emit(self, m: Bar | Tick | Quote) -> None:
        """The one way a Bar, Tick or Quote leaves, on its topic (a Bar also into the history);
        the caller has numbered it (``fseq``: a synthetic step's option quote and bar share one)."""
        if isinstance(m, Bar):
            self._publish_bar(m)
        elif isinstance(m, Quote):
            self.pub.send(m, topic=topic_for("md.quote", m.symbol))
            self.published += 1
        else:
            self.pub.send(m, topic=topic_for("md.tick", m.symbol))
            self.published += 1

    # ------------------------------------------------------------ live feeds
    def _on_feed(self, _port: Port, rcv: Received) -> None:
        """A message from the feed thread: data is numbered and published, a status noted."""
        m = rcv.msg
        now = time.time_ns()
        if isinstance(m, FeedStatus):
            if m.state == "reconnecting" and self.health is not None and self.health.reconnecting(m.detail, now):
                self._send_status()
            return
        if not isinstance(m, (Bar, Tick, Quote)):
            return
        self.fseq += 1
        m.fseq = self.fseq
        self._emit(m)
        if self.recorder is not None:
            self.recorder.write(m, now)
        if self.health is not None and self.health.data(m.symbol, now):
            self._log_health()
            self._send_status()

    def _check_stale(self) -> None:
        if self.health is not None and self.health.check(time.time_ns()):
            self._log_health()
            self._send_status()

    def _log_health(self) -> None:
        h = self.health
        assert h is not None
        (self.log.info if h.state == "ok" else self.log.warning)(
            "feed status", feed=h.feed, state=h.state, detail=h.detail, symbols=h.stale_symbols)

    def _send_status(self) -> None:
        if self.health is not None:
            self.pub.send(self.health.status(), topic=TOPIC_STATUS)

    def _schedule_bar(self) -> None:
        # Timers run on the monotonic clock, bars end on the wall clock: wake just
        # after the wall-clock end of the bar being built (an early wake makes no bar).
        wait_s = (self.clock.due_ns() - time.time_ns()) / 1e9
        self._bar_timer.due = time.monotonic() + max(0.0, wait_s) + 0.0005

    def _synthetic_step(self) -> None:
        last: dict[str, float] = {}
        step_ts = 0
        for sym, ts, o, h, lo, c, v in self.clock.step(time.time_ns()):
            self._state_dirty = True
            if self.session is not None and not self.session.publishes(ts):
                self.dropped += 1  # the path goes on; the market is closed
                continue
            self.fseq += 1
            self._emit(Bar(symbol=sym, ts=ts, open=o, high=h, low=lo, close=c, volume=v, fseq=self.fseq))
            last[sym], step_ts = c, ts
        if last and self.quoter:
            self._publish_options(last, step_ts)
        self._schedule_bar()

    def _publish_options(self, last: dict[str, float], ts: int) -> None:
        """Each listed option's model Quote and Bar (market_rules.OptionQuoter): the exchange
        fills on the Quote (bid / ask); the Bar is the option's price history."""
        for q, bar in self.quoter.quotes(last, ts):
            self.fseq += 1
            q.fseq = bar.fseq = self.fseq
            self._emit(q)
            self._emit(bar)

    def _save_feed_state(self) -> None:
        if self._state_dirty and self.feed_state is not None:
            self.feed_state.save(self.gbm)
            self._state_dirty = False

    def on_stop(self) -> None:
        self._save_feed_state()
        if self.feed_thread is not None:
            self.feed_thread.stop()
        if self.recorder is not None:
            self.recorder.close()
            self.log.info("recording closed", path=self.recorder.path, rows=self.recorder.rows)

    def _work_batches(self) -> bool:
        """Backtest: publish one BarBatch if the consumers' credit allows."""
        progress = self.progress
        low = min(progress.get(c, 0) for c in self.consumers)
        if self.fseq - low >= self.window:
            self.waiting_credit += 1
            return False  # woken by the next Progress on md.ref
        out = next(self._source, None)  # type: ignore[arg-type]
        if out is None:
            self._end_of_data()
            return False
        self.pub.send(BarBatch(bars=out), topic=TOPIC_BATCH)
        self.fseq = out[-1].fseq
        self.published += len(out)
        return True

    def work(self) -> bool:
        if self._source is None or self.eod_sent:
            return False
        if self.backtest:
            return self._work_batches()
        speed = self.cfg.market_data.speed
        for _ in range(SLICE_ROWS):
            m = self._next if self._next is not None else next(self._source, None)
            self._next = None
            if m is None:
                self._end_of_data()
                return False
            if speed > 0:
                now = time.monotonic()
                if self._pace_t0 is None:
                    self._pace_t0, self._pace_ts0 = now, m.ts
                due = self._pace_t0 + (m.ts - self._pace_ts0) / 1e9 / speed
                if due > now:
                    self._next = m
                    self._pace.due = due
                    return False
            self.fseq = m.fseq
            self._emit(m)
        return True

    def _end_of_data(self) -> None:
        assert self.replay is not None
        self.eod_sent = True
        self._source = None
        eod = self.replay.end()
        if self.gate is not None:
            eod = self.gate.end(eod)
        self.pub.send(eod, topic=TOPIC_EOD)
        self.log.info("end of data", feed=self.feed_name, count=self.published, last_fseq=self.fseq,
                      rows_read=self.replay.replay.rows_read, rows_skipped=self.replay.skipped)

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
        if self.session is not None:
            if self.replay is None:  # live: the wall clock's state (a replay's is its bars')
                s["session"] = self.session.state(time.time_ns())
            s["dropped_out_of_session"] = self.gate.dropped if self.gate is not None else self.dropped
        if self.replay is not None:
            s["rows_read"] = self.replay.replay.rows_read
            s["rows_skipped"] = self.replay.skipped
        if self.health is not None:
            s["feed_state"] = self.health.state
        if self.feed_thread is not None:
            s.update(self.feed_thread.stats())
        if self.recorder is not None:
            s["recorded"] = self.recorder.rows
        return s


if __name__ == "__main__":
    main(MarketData)

"""The feed adapter API: how market data from a venue or a broker gets into paperbus.

Write one class in one file, as you write a strategy (actors/strategies/base.py), and
name it in the config::

    [market_data]
    feed = "mybroker.feed:MyBrokerFeed"   # package.module:Class, importable from the working dir
    symbols = ["BTC/USDT"]
    params = { region = "eu" }            # given to your constructor as ``params``

An adapter has three parts:

1. ``fetch_instruments(symbols)`` -- the symbol master. Called once in market-data's
   init, before READY (blocking is fine: nothing runs yet). Return one
   ``Instrument`` per symbol asked for; raise ``UnknownSymbols`` naming the ones the
   venue does not list, anything else if the venue cannot be reached. market-data
   caches what you return in the run directory (``instruments.json``, with its fetch
   time) and reuses it, with a warning, when a later download fails and the cache is
   younger than ``instruments_max_age_s``.

2. ``stream(out)`` -- the live data, an ``async`` method run in market-data's feed
   thread (its own asyncio loop; the actor's poll loop, heartbeats and commands never
   wait on your network). Connect, subscribe, and push what arrives through ``out``::

       out.trade(symbol, ts_ns, price, size)
       out.quote(symbol, ts_ns, bid, ask, bid_size, ask_size)
       out.candle(symbol, ts_ns, open, high, low, close, volume)  # a candle update, maybe still forming
       out.bad("why")                                             # a venue message you could not read

   Return or raise when the connection is gone: the host reports ``reconnecting``,
   waits (exponential backoff, from ``reconnect_initial_s`` to ``reconnect_max_s``;
   ``rate_limited(e)`` true: at least ``rate_limit_backoff_s``) and calls ``stream``
   again. Candles are closed by the host (a candle is closed when the next one
   starts), numbered per symbol and never duplicated; after a reconnect, or on any
   gap, the host asks ``backfill(symbol, since_ns)`` for the closed candles it missed.

3. Health needs nothing from you: market-data marks the feed ``stale`` (FeedStatus on
   ``md.status``; the exchange fills nothing while stale) when no data arrived for
   ``stale_after_s``, ``reconnecting`` while the host reconnects, ``ok`` again as soon
   as data flows. A connection silent for ``reconnect_silent_s`` is taken for dead and
   re-made (a half-open TCP connection never closes by itself).

Values are checked before they are published (prices finite and > 0, sizes finite
and >= 0, a known symbol): a bad one is counted and logged, never published.

The built-in feeds use the same API: ``ccxt`` (actors/adapters/ccxt_feed.py) is an
adapter like yours; ``synthetic`` and ``replay`` are sources that run inside the
actor's loop (they need no network). Either way market-data publishes through one
path (actors/market_data.py, ``_emit``): fseq, the topic, the history, the recording.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import random
import threading
import time
from typing import Any, Callable

import msgspec

from actors.base import UserError
from bus.fileio import atomic_write
from bus.messages import Bar, FeedStatus, Instrument, Quote, Tick

BUILTIN = {"ccxt": "actors.adapters.ccxt_feed:CcxtFeed"}
CACHE_FILE = "instruments.json"
NS = 1_000_000_000
CLOCK_SKEW_NS = 2 * NS  # a backfilled last candle is taken as closed only this long after its end


class UnknownSymbols(UserError):
    """The venue does not list these symbols (a start error naming them, exit 2)."""

    def __init__(self, venue: str, missing: list[str], listed: int):
        super().__init__(f"market_data.symbols: {', '.join(missing)} not listed by {venue} "
                         f"({listed} markets listed)")
        self.missing = missing


class FeedAdapter:
    """Base of every live adapter. Override ``fetch_instruments`` and ``stream``;
    ``backfill``, ``rate_limited`` and ``close`` are optional."""

    name = "adapter"  # shown in FeedStatus.feed and in status (the ccxt adapter: ccxt:<venue>)
    bar_interval_ns = 0  # the candles' interval; 0 = the adapter sends no candles

    def __init__(self, md: Any, params: dict[str, Any]):
        self.md = md  # the [market_data] table (config.MarketDataCfg)
        self.params = params  # market_data.params

    def fetch_instruments(self, symbols: list[str]) -> list[Instrument]:
        raise NotImplementedError

    async def stream(self, out: "FeedOut") -> None:
        raise NotImplementedError

    async def backfill(self, symbol: str, since_ns: int) -> list[tuple[int, float, float, float, float, float]]:
        """Candles (ts_ns, o, h, l, c, v) from ``since_ns`` on, oldest first; the last may still be forming."""
        return []

    def cache_state(self) -> Any:
        """Anything (JSON-able) the adapter needs again to stream when a later start has to
        use the cached master instead of a download (ccxt: the venue's market entries)."""
        return None

    def restore_cache(self, state: Any) -> None:
        """Take back what ``cache_state`` gave, on a start that uses the cache."""

    def rate_limited(self, err: BaseException) -> bool:
        """True if ``err`` says the venue is rate-limiting us (HTTP 429/418): back off longer."""
        return False

    async def close(self) -> None:
        """Release the connection (called after ``stream`` ends and at stop)."""


def load_adapter(md: Any) -> FeedAdapter:
    """The adapter named by ``market_data.feed``; a bad name is a UserError naming the key."""
    spec = BUILTIN.get(md.feed, md.feed)
    key = f"market_data.feed = {md.feed!r}"
    module_name, _, cls_name = spec.partition(":")
    if not module_name or not cls_name:
        raise UserError(f"{key}: expected synthetic, replay, ccxt or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{key}: cannot import module {module_name!r}: {e}") from None
    except Exception as e:
        raise UserError(f"{key}: module {module_name!r} failed to import: {type(e).__name__}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UserError(f"{key}: module {module_name!r} has no class {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, FeedAdapter)):
        raise UserError(f"{key}: {cls_name} is not a subclass of actors.feed_api.FeedAdapter")
    try:
        return cls(md, dict(md.params))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{key}: {cls_name}({md.params!r}) failed: {type(e).__name__}: {e}") from None


# ------------------------------------------------------------- symbol master
def _lean(inst: Instrument) -> dict[str, Any]:
    """An instrument without its default fields (the instrument loader refuses option
    fields on a non-option, even empty ones written out)."""
    d = msgspec.to_builtins(inst)
    dflt = msgspec.to_builtins(Instrument(symbol="X", kind="equity", tick_size=1.0))
    return {k: v for k, v in d.items() if k in ("symbol", "kind", "tick_size") or v != dflt.get(k)}


class InstrumentCache:
    """The venue's symbol master in ``<run-dir>/instruments.json`` with its fetch time."""

    def __init__(self, run_dir: str, venue: str):
        self.path = os.path.join(run_dir, CACHE_FILE)
        self.venue = venue

    def save(self, instruments: list[Instrument], fetched_ns: int, adapter_state: Any = None) -> None:
        doc = {"version": 1, "venue": self.venue, "fetched_ns": fetched_ns,
               "instruments": [_lean(i) for i in instruments], "adapter": adapter_state}
        atomic_write(self.path, json.dumps(doc).encode(), 0o600)

    def load(self) -> tuple[list[Instrument], int, Any] | None:
        """(instruments, fetched_ns, adapter state), or None if there is no usable cache of this venue."""
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
            if doc.get("version") != 1 or doc.get("venue") != self.venue:
                return None
            return (msgspec.convert(doc["instruments"], list[Instrument]), int(doc["fetched_ns"]),
                    doc.get("adapter"))
        except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError):
            return None


def load_master(adapter: FeedAdapter, symbols: list[str], run_dir: str, max_age_s: float,
                log: Any) -> tuple[list[Instrument], list[str]]:
    """Download the master and cache it; (instruments, warnings).

    Every start downloads (tick sizes and limits change). A failed download falls back
    to the cached master if it is younger than ``max_age_s`` and has every symbol,
    with a warning; without one the start fails with the venue's error (VenueError).
    A symbol the venue does not list is refused (UnknownSymbols): the venue said so."""
    cache = InstrumentCache(run_dir, adapter.name)
    try:
        insts = adapter.fetch_instruments(list(symbols))
    except UnknownSymbols:
        raise
    except Exception as e:
        err = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        cached = cache.load()
        if cached is None:
            raise VenueError(f"{adapter.name}: instrument master download failed ({err}) and there is no "
                             f"cached master in {cache.path}") from None
        age = (time.time_ns() - cached[1]) / NS
        if age >= max_age_s:
            raise VenueError(f"{adapter.name}: instrument master download failed ({err}) and the cached master "
                             f"{cache.path} is {age:.0f} s old (instruments_max_age_s = {max_age_s:g})") from None
        if not _covers(cached[0], symbols):
            missing = sorted(set(symbols) - {i.symbol for i in cached[0]})
            raise VenueError(f"{adapter.name}: instrument master download failed ({err}) and the cached master "
                             f"{cache.path} lacks {', '.join(missing)}") from None
        warn = (f"{adapter.name}: instrument master download failed ({err}); using the cached master "
                f"{cache.path} fetched {age:.0f} s ago")
        log.warning("instrument master from cache", path=cache.path, age_s=round(age, 1), error=err)
        adapter.restore_cache(cached[2])
        return _pick(cached[0], symbols), [warn]
    _check(insts, symbols, adapter.name)
    cache.save(insts, time.time_ns(), adapter.cache_state())
    return _pick(insts, symbols), []


class VenueError(Exception):
    """The venue could not be reached for the start (InitFailed with its error; exit 1)."""


def _covers(insts: list[Instrument], symbols: list[str]) -> bool:
    have = {i.symbol for i in insts}
    return all(s in have for s in symbols)


def _pick(insts: list[Instrument], symbols: list[str]) -> list[Instrument]:
    by = {i.symbol: i for i in insts}
    return [by[s] for s in symbols]


def _check(insts: list[Instrument], symbols: list[str], venue: str) -> None:
    if not isinstance(insts, list) or not all(isinstance(i, Instrument) for i in insts):
        raise TypeError(f"{venue}: fetch_instruments must return a list of bus.messages.Instrument")
    missing = [s for s in symbols if s not in {i.symbol for i in insts}]
    if missing:
        raise UnknownSymbols(venue, missing, len(insts))
    for i in insts:  # the wire refuses what msgspec does not construct-check: round-trip it
        msgspec.msgpack.decode(msgspec.msgpack.encode(i), type=Instrument)


# --------------------------------------------------------- candles and gaps
class CandleCloser:
    """Turns a stream of candle updates (the forming candle, again and again) into closed
    candles: a candle is closed when one with a later start arrives. Pure: no I/O."""

    def __init__(self) -> None:
        self.forming: dict[str, tuple] = {}  # symbol -> (ts, o, h, l, c, v)

    def update(self, symbol: str, candle: tuple) -> tuple | None:
        """Feed one update; returns the candle it closed, if any."""
        cur = self.forming.get(symbol)
        if cur is None or candle[0] == cur[0]:
            self.forming[symbol] = candle
            return None
        if candle[0] < cur[0]:
            return None  # an old update arriving late: that candle is already closed
        self.forming[symbol] = candle
        return cur

    def reset(self) -> None:
        """After a disconnect the forming candles missed updates: forget them (backfill redoes them)."""
        self.forming.clear()


class BarSequencer:
    """Per symbol, the closed bars in strict time order: a bar at or before the last one
    is a duplicate (dropped, counted); one more than an interval after it leaves a gap
    (``gap`` says from when the missing bars start). Pure: no I/O."""

    def __init__(self, interval_ns: int):
        self.iv = interval_ns
        self.last: dict[str, int] = {}  # symbol -> ts of the last closed bar accepted
        self.duplicates = 0

    def gap(self, symbol: str, ts: int) -> int | None:
        """Start of the missing bars before a bar at ``ts``, or None if there is no gap."""
        last = self.last.get(symbol)
        if last is None or ts <= last + self.iv:
            return None
        return last + self.iv

    def accept(self, symbol: str, ts: int) -> bool:
        last = self.last.get(symbol)
        if last is not None and ts <= last:
            self.duplicates += 1
            return False
        self.last[symbol] = ts
        return True


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class FeedOut:
    """What ``stream`` pushes through (in the feed thread). Checks each value, closes
    candles, and hands everything to ``send`` (the inproc socket to the actor)."""

    def __init__(self, symbols: set[str], send: Callable[[Any], None], interval_ns: int, log: Any):
        self.symbols = symbols
        self.send = send
        self.log = log
        self.closer = CandleCloser()
        self.seq = BarSequencer(interval_ns) if interval_ns else None
        self.bad_count = 0
        self.data_count = 0
        self.gaps: list[tuple[str, int, int]] = []  # (symbol, missing from, bar after) for the host to backfill
        self.iv = interval_ns
        self.floor_ns = 0  # stream candles that start before it are not taken (see ``reconnecting``)

    def reconnecting(self, now_ns: int) -> None:
        """A new connection starts at ``now_ns`` after a drop. The forming candles missed
        updates, so they are forgotten; and no candle that started before the first
        interval boundary after ``now_ns`` is taken from the stream: ccxt keeps its candle
        cache across reconnects, so the partial copy of a candle from before the drop
        comes back, and the candle forming now may get no update on the new connection
        before it ends. Those candles come from the venue over REST instead: the
        reconnect backfill, or the gap the first stream candle leaves."""
        self.closer.reset()
        if self.iv:
            self.floor_ns = (now_ns // self.iv + 1) * self.iv

    def bad(self, why: str) -> None:
        self.bad_count += 1
        if self.bad_count <= 20 or self.bad_count % 1000 == 0:
            self.log.warning("malformed venue message dropped", reason=why[:300], bad_total=self.bad_count)

    def _sym(self, symbol: Any) -> bool:
        if symbol not in self.symbols:
            self.bad(f"unknown symbol {symbol!r}")
            return False
        return True

    def trade(self, symbol: str, ts_ns: Any, price: Any, size: Any) -> None:
        p, s = _num(price), _num(size)
        if not self._sym(symbol):
            return
        if p is None or p <= 0 or s is None or s < 0 or not isinstance(ts_ns, int) or ts_ns < 0:
            return self.bad(f"trade {symbol}: price {price!r}, size {size!r}, ts {ts_ns!r}")
        self.data_count += 1
        self.send(Tick(symbol=symbol, ts=ts_ns, price=p, size=s))

    def quote(self, symbol: str, ts_ns: Any, bid: Any, ask: Any, bid_size: Any = 0.0, ask_size: Any = 0.0) -> None:
        b, a, bs, as_ = _num(bid), _num(ask), _num(bid_size or 0.0), _num(ask_size or 0.0)
        if not self._sym(symbol):
            return
        if (b is None or a is None or b <= 0 or a <= 0 or bs is None or as_ is None or bs < 0 or as_ < 0
                or not isinstance(ts_ns, int) or ts_ns < 0):
            return self.bad(f"quote {symbol}: bid {bid!r}, ask {ask!r}, sizes {bid_size!r}/{ask_size!r}")
        self.data_count += 1
        self.send(Quote(symbol=symbol, ts=ts_ns, bid=b, ask=a, bid_size=bs, ask_size=as_))

    def _candle(self, symbol: str, ts_ns: Any, o: Any, h: Any, lo: Any, c: Any, v: Any) -> tuple | None:
        vals = [_num(x) for x in (o, h, lo, c)]
        vol = _num(v if v is not None else 0.0)
        if (any(x is None or x <= 0 for x in vals) or vol is None or vol < 0 or not isinstance(ts_ns, int)
                or ts_ns < 0):
            self.bad(f"candle {symbol}: {ts_ns!r} {o!r} {h!r} {lo!r} {c!r} {v!r}")
            return None
        return (ts_ns, *vals, vol)

    def candle(self, symbol: str, ts_ns: Any, o: Any, h: Any, lo: Any, c: Any, v: Any) -> None:
        if not self._sym(symbol):
            return
        cd = self._candle(symbol, ts_ns, o, h, lo, c, v)
        if cd is None:
            return
        self.data_count += 1
        if cd[0] < self.floor_ns:
            return  # started before the reconnect's first boundary: REST gives the final one
        closed = self.closer.update(symbol, cd)
        if closed is not None:
            self.closed_bar(symbol, closed)

    def closed_bar(self, symbol: str, cd: tuple) -> bool:
        """Publish one closed candle unless it is a duplicate; a gap before it is noted for backfill."""
        if self.seq is None:
            return False
        gap = self.seq.gap(symbol, cd[0])
        if gap is not None:
            self.gaps.append((symbol, gap, cd[0]))
            return False  # the host backfills from ``gap`` (this bar included), in order
        if not self.seq.accept(symbol, cd[0]):
            return False
        ts, o, h, lo, c, v = cd
        self.send(Bar(symbol=symbol, ts=ts, open=o, high=h, low=lo, close=c, volume=v))
        return True


# ------------------------------------------------------------------ the host
class FeedThread:
    """Runs an adapter's ``stream`` in a thread of its own with its own asyncio loop,
    sending what it makes to the actor over an inproc PAIR socket (bus/sockets.py):
    the actor's loop polls that socket with its others and never waits on the network.
    Reconnects with exponential backoff and backfills the closed bars it missed."""

    def __init__(self, adapter: FeedAdapter, port: Any, symbols: list[str], md: Any, log: Any):
        self.adapter = adapter
        self.port = port  # the thread's end of the PAIR: only this thread sends on it
        self.symbols = symbols
        self.md = md
        self.log = log
        self.out = FeedOut(set(symbols), self._send, adapter.bar_interval_ns, log)
        self.thread = threading.Thread(target=self._main, name=f"feed-{adapter.name}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.reconnects = 0
        self.backfilled = 0
        self.last_backfill_s = 0.0  # how long the last reconnect's backfill took
        self._stopping = False

    def _send(self, msg: Any) -> None:
        self.port.send(msg)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping = True
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop already ended
        self.thread.join(timeout)

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        try:
            self.task = loop.create_task(self._run())
            loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug in the host: say it to the actor, which fails loudly
            self.log.exception("feed thread failed", error=str(e))
            self._status("reconnecting", f"feed thread failed: {type(e).__name__}: {e}")
        finally:
            try:
                loop.run_until_complete(self.adapter.close())
            except Exception:
                pass
            loop.close()

    def _status(self, state: str, detail: str) -> None:
        self._send(FeedStatus(feed=self.adapter.name, state=state, detail=detail[:4000]))

    async def _run(self) -> None:
        md = self.md
        backoff = md.reconnect_initial_s
        first = True
        while not self._stopping:
            seen = self.out.data_count
            t_start = time.monotonic()
            if not first:
                self.out.reconnecting(time.time_ns())
            try:
                await self._stream_with_gaps(backfill=not first)
                err: BaseException | None = None
                why = "the stream ended"
            except asyncio.CancelledError:
                raise
            except Exception as e:
                err, why = e, f"{type(e).__name__}: {e}"
            first = False
            if self.out.data_count > seen and time.monotonic() - t_start > 1.0:
                backoff = md.reconnect_initial_s  # that connection worked: start the backoff again
            wait = backoff
            if err is not None and self.adapter.rate_limited(err):
                wait = max(wait, md.rate_limit_backoff_s)
            wait *= 1.0 + 0.2 * random.random()  # jitter: many clients do not reconnect in step
            self.reconnects += 1
            self.log.warning("feed disconnected; reconnecting", error=why[:500], wait_s=round(wait, 2),
                             reconnects=self.reconnects)
            self._status("reconnecting", why)
            self.out.closer.reset()
            try:
                await self.adapter.close()
            except Exception:
                pass
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, md.reconnect_max_s)

    async def _stream_with_gaps(self, backfill: bool) -> None:
        """``stream`` plus a watcher that backfills any gap the sequencer saw. After a
        reconnect (``backfill``) the missed closed bars are fetched once the new connection
        delivers data: the stream is up, so the REST answer reaches the candle it is forming."""
        seen = self.out.data_count
        t0 = time.monotonic()
        # A connection silent this long is taken for dead (a half-open TCP connection never
        # closes by itself); shorter silences only make the feed stale.
        silence_s = self.md.reconnect_silent_s
        last_count, last_change = seen, t0
        stream = asyncio.ensure_future(self.adapter.stream(self.out))
        try:
            while True:
                done, _ = await asyncio.wait({stream}, timeout=0.05)
                now = time.monotonic()
                if self.out.data_count != last_count:
                    last_count, last_change = self.out.data_count, now
                elif not done and now - last_change > silence_s:
                    raise TimeoutError(f"no data for {silence_s:g} s: the connection is taken for dead")
                if backfill and self.out.data_count > seen:
                    backfill = False
                    await self._backfill_all(time.monotonic() - t0)
                if self.out.gaps:
                    await self._fill_gaps()
                if done:
                    stream.result()
                    return
        finally:
            if not stream.done():
                stream.cancel()
                try:
                    await stream
                except (asyncio.CancelledError, Exception):
                    pass

    async def _fill_gaps(self) -> None:
        gaps, self.out.gaps = self.out.gaps, []
        t0 = time.monotonic()
        n = 0
        for symbol, since, _until in gaps:
            n += await self._backfill(symbol, since)
        self.log.info("bar gap backfilled", gaps=len(gaps), bars=n, took_s=round(time.monotonic() - t0, 3))

    async def _backfill_all(self, connected_s: float) -> None:
        """After a reconnect: every closed bar since the last one of each symbol."""
        if self.out.seq is None:
            return
        t0 = time.monotonic()
        n = 0
        for symbol in self.symbols:
            last = self.out.seq.last.get(symbol)
            if last is not None:
                n += await self._backfill(symbol, last + self.out.seq.iv)
        self.last_backfill_s = time.monotonic() - t0
        self.log.info("bars backfilled after reconnect", bars=n, took_s=round(self.last_backfill_s, 3),
                      data_after_s=round(connected_s, 3))

    async def _backfill(self, symbol: str, since: int) -> int:
        seq = self.out.seq
        assert seq is not None
        raw = await self.adapter.backfill(symbol, since)
        candles = [c for c in (self.out._candle(symbol, *cd) for cd in raw) if c is not None]
        now = time.time_ns()
        n = 0
        for i, cd in enumerate(candles):
            # Closed: a later candle follows it (the venue's word, whatever our clock says), or,
            # the last one, it ended longer ago than any plausible clock skew.
            closed = i + 1 < len(candles) or cd[0] + seq.iv + CLOCK_SKEW_NS <= now
            if not closed:
                # Still forming: the stream's updates go on from here (the closer holds it). The
                # stream's own update of the same candle wins: the REST answer may be older than it.
                # A candle begun before the reconnect's first boundary gets no stream update
                # (FeedOut.reconnecting): it is left to the gap the next stream candle leaves.
                cur = self.out.closer.forming.get(symbol)
                if cd[0] >= self.out.floor_ns and (cur is None or cur[0] < cd[0]):
                    self.out.closer.forming[symbol] = cd
                continue
            if seq.last.get(symbol) is not None and cd[0] <= seq.last[symbol]:
                continue
            # Backfilled bars are contiguous by construction: accept without the gap check.
            if seq.accept(symbol, cd[0]):
                ts, o, h, lo, c, v = cd
                self._send(Bar(symbol=symbol, ts=ts, open=o, high=h, low=lo, close=c, volume=v))
                n += 1
        self.backfilled += n
        return n

    def stats(self) -> dict[str, Any]:
        return {"reconnects": self.reconnects, "backfilled": self.backfilled, "malformed": self.out.bad_count,
                "duplicates_dropped": self.out.seq.duplicates if self.out.seq else 0}


# ------------------------------------------------------------------- health
class FeedHealth:
    """The feed's state as market-data publishes it (FeedStatus on md.status). Pure: the
    caller gives the time. ok: data arrives; stale: a symbol (or all: ``symbols`` = [])
    had none for ``stale_after_ns``; reconnecting: the host said the connection
    dropped, until data flows again."""

    def __init__(self, feed: str, symbols: list[str], stale_after_ns: int, now_ns: int):
        self.feed = feed
        self.symbols = list(symbols)
        self.stale_after = stale_after_ns
        self.state = "ok"
        self.since = now_ns
        self.detail = ""
        self.stale_symbols: list[str] = []
        self.last_data = 0  # wall clock of the last data message, ns
        self._last: dict[str, int] = {s: now_ns for s in symbols}  # the clock starts with the feed
        self.changes = 0

    def _set(self, state: str, now_ns: int, detail: str = "", stale: list[str] | None = None) -> bool:
        stale = stale or []
        if state == self.state and stale == self.stale_symbols:
            return False
        if state != self.state:
            self.since = now_ns
        self.state, self.detail, self.stale_symbols = state, detail, stale
        self.changes += 1
        return True

    def data(self, symbol: str, now_ns: int) -> bool:
        """A message of ``symbol`` arrived; True if the state changed."""
        self._last[symbol] = now_ns
        self.last_data = now_ns
        if self.state == "ok":
            return False
        return self.check(now_ns, data=True)

    def reconnecting(self, detail: str, now_ns: int) -> bool:
        return self._set("reconnecting", now_ns, detail)

    def check(self, now_ns: int, data: bool = False) -> bool:
        if self.state == "reconnecting" and not data:
            return False
        silent = [s for s in self.symbols if now_ns - self._last.get(s, 0) > self.stale_after]
        if silent:
            what = "no data" if len(silent) == len(self.symbols) else f"no data from {', '.join(silent)}"
            return self._set("stale", now_ns, f"{what} for over {self.stale_after / NS:g} s",
                             [] if len(silent) == len(self.symbols) else silent)
        return self._set("ok", now_ns)

    def status(self) -> FeedStatus:
        return FeedStatus(feed=self.feed[:256], state=self.state, since=self.since, last_data=self.last_data,
                          detail=self.detail[:4000], symbols=self.stale_symbols)

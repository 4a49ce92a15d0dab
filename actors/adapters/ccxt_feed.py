"""The ccxt adapter: public market data of any ccxt exchange (``market_data.feed = "ccxt"``,
``market_data.venue = "binance"``), no API key.

- Symbol master: ``load_markets`` (the synchronous ccxt client, in market-data's init):
  precision and limits -> tick size, quantity step, min qty, min notional; contract
  size -> multiplier; spot -> crypto, swap -> perpetual, future -> future.
- Stream (ccxt.pro, WebSocket, in the feed thread): ``watch_trades`` per symbol ->
  Tick, ``watch_bids_asks`` (else ``watch_ticker``) -> Quote, ``watch_ohlcv`` per symbol
  -> candle updates the host closes into Bars. A venue without a WebSocket method is
  polled over REST every ``poll_s`` instead (fetch_trades / fetch_bids_asks, else
  fetch_ticker / fetch_ohlcv).
- Backfill: ``fetch_ohlcv(since=...)`` over REST after a reconnect or a gap.
- Rate limits: ccxt's own limiter (enableRateLimit); HTTP 429/418 come back as
  DDoSProtection, on which the host backs off at least ``rate_limit_backoff_s``.
- ``market_data.urls = { rest = "...", ws = "..." }`` points ccxt elsewhere (a testnet,
  or scripts/fake_venue.py, which speaks Binance's wire format).

A malformed venue message never stops the stream: ccxt decodes and parses inside a
callback whose exception would silently end its receive loop, so both are guarded
here; what cannot be read is counted (``malformed`` in status) and logged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.feed_api import FeedAdapter, FeedOut, UnknownSymbols
from bus.messages import Instrument

KINDS = {"spot": "crypto", "swap": "perpetual", "future": "future"}
MS = 1_000_000


def _step(value: Any, mode: int) -> float | None:
    """A ccxt precision as a step: TICK_SIZE mode gives the step, the others a number of digits."""
    import ccxt

    if value is None:
        return None
    if mode == ccxt.TICK_SIZE:
        return float(value)
    return 10.0 ** -int(value)


def market_to_instrument(m: dict[str, Any], mode: int) -> Instrument:
    """One ccxt market as an Instrument; ValueError naming the market if it cannot be one."""
    kind = KINDS.get(m.get("type", ""))
    if kind is None:
        raise ValueError(f"{m.get('symbol')}: market type {m.get('type')!r} is not traded here "
                         f"(spot, swap, future)")
    prec, lim = m.get("precision") or {}, m.get("limits") or {}
    tick = _step(prec.get("price"), mode)
    lot = _step(prec.get("amount"), mode)
    if not tick or tick <= 0:
        raise ValueError(f"{m.get('symbol')}: no price precision")
    amount, cost = lim.get("amount") or {}, lim.get("cost") or {}
    currency = (m.get("settle") if kind != "crypto" else None) or m.get("quote") or "USD"
    return Instrument(
        symbol=m["symbol"], kind=kind, tick_size=tick, lot_size=lot if lot and lot > 0 else 1.0,
        multiplier=float(m.get("contractSize") or 1.0), currency=currency,
        min_qty=float(amount.get("min") or 0.0), min_notional=float(cost.get("min") or 0.0),
        base=m.get("base") or "", venue_symbol=str(m.get("id") or ""),
        expiry=(m.get("expiryDatetime") or "")[:10] if kind == "future" else "",
    )


class CcxtFeed(FeedAdapter):
    def __init__(self, md: Any, params: dict[str, Any]):
        super().__init__(md, params)
        try:
            import ccxt
        except ImportError:
            from actors.base import UserError
            raise UserError("market_data.feed = \"ccxt\" needs the ccxt package, which is not installed "
                            "(pip install 'paperbus[live]')") from None

        if not md.venue:
            raise ValueError("market_data.venue is required with feed = \"ccxt\" (a ccxt exchange id, e.g. binance)")
        if md.venue not in ccxt.exchanges:
            from actors.base import UserError
            raise UserError(f"market_data.venue = {md.venue!r}: not a ccxt exchange id (e.g. binance, kraken, "
                            f"bybit, okx)")
        self.venue = md.venue
        self.name = f"ccxt:{md.venue}"
        self.timeframe = md.timeframe
        self.bar_interval_ns = int(ccxt.Exchange.parse_timeframe(md.timeframe)) * 1_000_000_000
        self.markets: dict[str, Any] | None = None
        self.ex: Any = None  # the ccxt.pro client of the current connection
        self.symbols: list[str] = list(md.symbols)

    # ------------------------------------------------------------ settings
    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"enableRateLimit": True, "timeout": int(self.md.request_timeout_s * 1000)}
        cfg.update(self.params.get("ccxt", {}))
        return cfg

    def _point(self, ex: Any) -> None:
        """Apply market_data.urls and the options that keep a public session public."""
        urls = self.md.urls
        api = ex.urls.get("api")
        if urls.get("rest") and isinstance(api, dict):
            for k, v in list(api.items()):
                if isinstance(v, str) and v.startswith("http"):
                    api[k] = urls["rest"]
        elif urls.get("rest"):
            ex.urls["api"] = urls["rest"]
        if urls.get("ws") and isinstance(api, dict) and isinstance(api.get("ws"), dict):
            for k, v in list(api["ws"].items()):
                if isinstance(v, str):
                    api["ws"][k] = urls["ws"]
        if self.venue in ("binance", "binanceus"):
            # Only the markets asked for: spot symbols (BTC/USDT) need only the spot list;
            # derivatives (BTC/USDT:USDT) the linear and inverse ones too.
            if all(":" not in s for s in self.symbols):
                ex.options["fetchMarkets"] = {"types": ["spot"]}
            ex.options["fetchCurrencies"] = False  # a private endpoint: keyless sessions skip it anyway
            ex.options["fetchMargins"] = False

    # ------------------------------------------------------- symbol master
    def fetch_instruments(self, symbols: list[str]) -> list[Instrument]:
        import ccxt

        ex = getattr(ccxt, self.venue)(self._config())
        self._point(ex)
        markets = ex.load_markets()
        missing = [s for s in symbols if s not in markets]
        if missing:
            raise UnknownSymbols(self.name, missing, len(markets))
        self.markets = markets
        out = []
        for s in symbols:
            try:
                out.append(market_to_instrument(markets[s], ex.precisionMode))
            except (ValueError, TypeError) as e:
                from actors.base import UserError
                raise UserError(f"market_data.symbols: {self.name}: {e}") from None
        return out

    def cache_state(self) -> Any:
        # The markets of our symbols: a start on the cached master streams without exchangeInfo.
        return {s: self.markets[s] for s in self.symbols} if self.markets else None

    def restore_cache(self, state: Any) -> None:
        if isinstance(state, dict) and all(s in state for s in self.symbols):
            self.markets = state

    # --------------------------------------------------------------- stream
    def _pro(self, out: FeedOut | None) -> Any:
        if self.ex is not None:
            return self.ex
        import ccxt.pro

        base = getattr(ccxt.pro, self.venue, None)
        if base is None:
            base = getattr(__import__("ccxt.async_support", fromlist=[self.venue]), self.venue)
        cls = _guarded(base, out) if out is not None else base
        ex = cls(self._config())
        self._point(ex)
        if self.markets is not None:
            ex.set_markets(list(self.markets.values()))  # no second exchangeInfo per reconnect
        self.ex = ex
        return ex

    async def stream(self, out: FeedOut) -> None:
        ex = self._pro(out)
        if ex.markets is None:
            await ex.load_markets()
        has = ex.has
        tasks = []
        for s in self.symbols:
            tasks.append(self._trades_ws(ex, s, out) if has.get("watchTrades") else self._trades_rest(ex, s, out))
            if self.bar_interval_ns:
                tasks.append(self._ohlcv_ws(ex, s, out) if has.get("watchOHLCV") else self._ohlcv_rest(ex, s, out))
        if has.get("watchBidsAsks"):
            tasks.append(self._bidask_ws(ex, out))
        elif not has.get("watchTicker") and has.get("fetchBidsAsks"):
            tasks.append(self._bidask_rest(ex, out))
        else:
            for s in self.symbols:
                tasks.append(self._ticker_ws(ex, s, out) if has.get("watchTicker") else self._ticker_rest(ex, s, out))
        running = [asyncio.ensure_future(t) for t in tasks]
        try:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # the first failure ends this connection (the host reconnects)
        finally:
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _trades_ws(self, ex: Any, s: str, out: FeedOut) -> None:
        while True:
            for t in await ex.watch_trades(s):
                out.trade(s, _ns(t.get("timestamp")), t.get("price"), t.get("amount"))

    async def _ohlcv_ws(self, ex: Any, s: str, out: FeedOut) -> None:
        while True:
            for c in await ex.watch_ohlcv(s, self.timeframe):
                out.candle(s, _ns(c[0]), *c[1:6]) if len(c) >= 6 else out.bad(f"candle {s}: {c!r}")

    async def _bidask_ws(self, ex: Any, out: FeedOut) -> None:
        while True:
            got = await ex.watch_bids_asks(self.symbols)
            now = time.time_ns()
            for s, q in got.items():
                # bookTicker carries no time: the arrival time stands for it
                ts = _ns(q.get("timestamp")) if q.get("timestamp") else now
                out.quote(s, ts, q.get("bid"), q.get("ask"), q.get("bidVolume"), q.get("askVolume"))

    async def _ticker_ws(self, ex: Any, s: str, out: FeedOut) -> None:
        while True:
            q = await ex.watch_ticker(s)
            out.quote(s, _ns(q.get("timestamp")) if q.get("timestamp") else time.time_ns(), q.get("bid"),
                      q.get("ask"), q.get("bidVolume"), q.get("askVolume"))

    async def _trades_rest(self, ex: Any, s: str, out: FeedOut) -> None:
        # The first answer only says where the venue is (those trades are history, not news);
        # then each poll asks from the last trade's millisecond on and skips the ids seen in it.
        first = await ex.fetch_trades(s)
        last = max((t.get("timestamp") or 0 for t in first), default=0)
        seen = {t.get("id") for t in first if t.get("timestamp") == last}
        while True:
            await asyncio.sleep(self.md.poll_s)
            for t in await ex.fetch_trades(s, since=last or None):
                ts = t.get("timestamp") or 0
                if ts < last or (ts == last and t.get("id") in seen):
                    continue
                if ts > last:
                    last, seen = ts, set()
                seen.add(t.get("id"))
                out.trade(s, _ns(ts), t.get("price"), t.get("amount"))

    async def _bidask_rest(self, ex: Any, out: FeedOut) -> None:
        while True:
            got = await ex.fetch_bids_asks(self.symbols)
            now = time.time_ns()
            for s, q in got.items():
                out.quote(s, _ns(q.get("timestamp")) if q.get("timestamp") else now, q.get("bid"), q.get("ask"),
                          q.get("bidVolume"), q.get("askVolume"))
            await asyncio.sleep(self.md.poll_s)

    async def _ticker_rest(self, ex: Any, s: str, out: FeedOut) -> None:
        while True:
            q = await ex.fetch_ticker(s)
            out.quote(s, _ns(q.get("timestamp")) if q.get("timestamp") else time.time_ns(), q.get("bid"),
                      q.get("ask"), q.get("bidVolume"), q.get("askVolume"))
            await asyncio.sleep(self.md.poll_s)

    async def _ohlcv_rest(self, ex: Any, s: str, out: FeedOut) -> None:
        while True:
            for c in await ex.fetch_ohlcv(s, self.timeframe, limit=3):
                out.candle(s, _ns(c[0]), *c[1:6])
            await asyncio.sleep(self.md.poll_s)

    async def backfill(self, symbol: str, since_ns: int) -> list[tuple[int, float, float, float, float, float]]:
        ex = self._pro(None)
        out: list[tuple] = []
        since = since_ns // MS
        while True:
            rows = await ex.fetch_ohlcv(symbol, self.timeframe, since=since, limit=1000)
            out += [(_ns(r[0]), *r[1:6]) for r in rows if r and r[0] is not None and r[0] >= since]
            if len(rows) < 1000:
                return out
            since = rows[-1][0] + 1

    def rate_limited(self, err: BaseException) -> bool:
        import ccxt

        return isinstance(err, ccxt.DDoSProtection)

    async def close(self) -> None:
        ex, self.ex = self.ex, None
        if ex is not None:
            await ex.close()


def _ns(ms: Any) -> Any:
    """Milliseconds (ccxt's time) as nanoseconds; anything else is passed on for FeedOut to refuse."""
    return int(ms) * MS if isinstance(ms, (int, float)) and not isinstance(ms, bool) else ms


def _guarded(base: type, out: FeedOut) -> type:
    """``base`` whose message handling counts what it cannot read instead of dying on it."""

    class Guarded(base):  # type: ignore[misc, valid-type]
        def handle_message(self, client: Any, message: Any) -> Any:
            if not isinstance(message, (dict, list)):
                out.bad(f"not a JSON object: {str(message)[:120]!r}")
                return None
            try:
                return super().handle_message(client, message)
            except Exception as e:
                out.bad(f"{type(e).__name__}: {e}: {str(message)[:200]}")
                return None

        def client(self, url: str) -> Any:
            c = super().client(url)
            if not getattr(c, "_paperbus_guarded", False):
                decode = c.handle_text_or_binary_message

                def guarded(data: Any) -> None:
                    try:
                        decode(data)
                    except Exception as e:  # undecodable JSON: ccxt's decode raises before any handler
                        out.bad(f"undecodable ({type(e).__name__}): {str(data)[:120]!r}")

                c.handle_text_or_binary_message = guarded
                c._paperbus_guarded = True
            return c

    Guarded.__name__ = base.__name__
    return Guarded

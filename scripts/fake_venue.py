"""A local fake of Binance spot's public market-data API, for tests, the bench and demos.

    python -m scripts.fake_venue [--port 0] [--port-file PATH] [--symbols BTCUSDT,ETHUSDT]

aiohttp on 127.0.0.1: HTTP (GET /api/v3/ping, /time, /exchangeInfo, /klines,
/ticker/bookTicker, /trades, /aggTrades) and WebSocket streams on /stream/ws/<n> (ccxt.pro
subscribes with ``{"method": "SUBSCRIBE", "params": ["btcusdt@trade", ...]}``:
``<sym>@trade``, ``<sym>@bookTicker``, ``<sym>@kline_<interval>``), in Binance's
own wire format, so the real ccxt code parses it (the adapter points ccxt here by
overriding ``exchange.urls``; see ``urls()``).

The market: every ``--trade-ms`` each symbol trades once (a seeded random walk on
its tick grid, fractional sizes); the best bid/ask sit one tick around the last
trade; klines of ``--interval`` are the trades' OHLCV, so REST klines and the
kline stream always agree: what a test receives can be checked against
``GET /_state`` (every closed kline the venue made).

Scriptable through ``POST /_ctl`` (a JSON object, each key optional):
``exchange_info_delay_s`` (a slow symbol master), ``drop_ws`` (close every
WebSocket now), ``refuse_ws_s`` (refuse WebSocket connections for that long),
``silent_s`` (send nothing on the WebSockets for that long; the market goes on),
``http_429`` (the next N REST requests get HTTP 429), ``malformed`` (the next N
WebSocket messages are garbled, one kind after another), ``list_symbols`` (the
symbols exchangeInfo lists; [] = all), ``down`` (every REST request gets 503).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from aiohttp import WSMsgType, web

SPECS = {  # symbol -> (base, quote, start price, tick, step, min qty, min notional)
    "BTCUSDT": ("BTC", "USDT", 60000.0, 0.01, 0.00001, 0.00001, 5.0),
    "ETHUSDT": ("ETH", "USDT", 3000.0, 0.01, 0.0001, 0.0001, 5.0),
    "SOLUSDT": ("SOL", "USDT", 150.0, 0.01, 0.001, 0.001, 5.0),
}
IV_MS = {"1s": 1000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
KEEP_KLINES = 10_000
KEEP_TRADES = 1000


def _f(x: float, nd: int = 8) -> str:
    return f"{x:.{nd}f}"


class Market:
    """The venue's state: trades, quotes and klines per symbol, made on the wall clock."""

    def __init__(self, symbols: list[str], interval: str, trade_ms: int, seed: int):
        self.symbols = symbols
        self.interval = interval
        self.iv = IV_MS[interval]
        self.trade_ms = trade_ms
        self.rng = random.Random(seed)
        self.price = {s: SPECS[s][2] for s in symbols}
        self.trade_id = {s: 0 for s in symbols}
        self.book_id = 0
        self.trades: dict[str, list[dict]] = {s: [] for s in symbols}
        self.klines: dict[str, dict[int, list]] = {s: {} for s in symbols}  # open ms -> [o,h,l,c,v,n]

    def step(self, now_ms: int) -> list[tuple[str, str, dict]]:
        """One trade per symbol: returns (symbol, stream kind, ws payload) for each message to push."""
        out = []
        for s in self.symbols:
            tick = SPECS[s][3]
            p = max(tick, round((self.price[s] + self.rng.choice((-3, -1, 0, 1, 3)) * tick) / tick) * tick)
            self.price[s] = p
            q = round(self.rng.uniform(0.001, 0.5), 5)
            self.trade_id[s] += 1
            tr = {"id": self.trade_id[s], "price": _f(p), "qty": _f(q), "quoteQty": _f(p * q), "time": now_ms,
                  "isBuyerMaker": self.rng.random() < 0.5, "isBestMatch": True}
            self.trades[s].append(tr)
            del self.trades[s][:-KEEP_TRADES]
            t0 = now_ms // self.iv * self.iv
            k = self.klines[s].get(t0)
            if k is None:
                k = self.klines[s][t0] = [p, p, p, p, 0.0, 0]
                if len(self.klines[s]) > KEEP_KLINES:
                    del self.klines[s][min(self.klines[s])]
            k[1], k[2], k[3] = max(k[1], p), min(k[2], p), p
            k[4] = round(k[4] + q, 8)
            k[5] += 1
            low = s.lower()
            out.append((s, f"{low}@trade", {"e": "trade", "E": now_ms, "s": s, "t": tr["id"], "p": tr["price"],
                                            "q": tr["qty"], "T": now_ms, "m": tr["isBuyerMaker"], "M": True}))
            self.book_id += 1
            out.append((s, f"{low}@bookTicker", {"u": self.book_id, "s": s, "b": _f(p - tick), "B": _f(1.5),
                                                 "a": _f(p + tick), "A": _f(2.0)}))
            out.append((s, f"{low}@kline_{self.interval}", {"e": "kline", "E": now_ms, "s": s,
                                                            "k": self.kline_ws(s, t0, now_ms)}))
        return out

    def kline_ws(self, s: str, t0: int, now_ms: int) -> dict:
        o, h, lo, c, v, n = self.klines[s][t0]
        return {"t": t0, "T": t0 + self.iv - 1, "s": s, "i": self.interval, "f": 0, "L": 0, "o": _f(o), "c": _f(c),
                "h": _f(h), "l": _f(lo), "v": _f(v), "n": n, "x": now_ms >= t0 + self.iv, "q": "0", "V": "0",
                "Q": "0", "B": "0"}

    def kline_rest(self, s: str, t0: int) -> list:
        o, h, lo, c, v, n = self.klines[s][t0]
        return [t0, _f(o), _f(h), _f(lo), _f(c), _f(v), t0 + self.iv - 1, "0", n, "0", "0", "0"]

    def closed(self, now_ms: int) -> dict[str, list[list]]:
        """Every closed kline per symbol, [open ms, o, h, l, c, v] (what a test compares against)."""
        return {s: [[t0, *k[:5]] for t0, k in sorted(ks.items()) if t0 + self.iv <= now_ms]
                for s, ks in self.klines.items()}


class Venue:
    def __init__(self, market: Market):
        self.m = market
        self.ws: set[web.WebSocketResponse] = set()
        self.subs: dict[web.WebSocketResponse, set[str]] = {}
        self.ctl: dict[str, Any] = {"exchange_info_delay_s": 0.0, "http_429": 0, "malformed": 0,
                                    "list_symbols": [], "down": False}
        self.refuse_until = 0.0
        self.silent_until = 0.0
        self.counts: dict[str, int] = {"rest": 0, "429": 0, "ws_connects": 0, "ws_refused": 0, "malformed_sent": 0,
                                       "exchange_info": 0, "klines": 0}
        self._bad_kind = 0

    # ------------------------------------------------------------------ REST
    @web.middleware
    async def gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            self.counts["rest"] += 1
            if self.ctl["down"]:
                return web.json_response({"code": -1001, "msg": "Internal error; unable to process your request."},
                                         status=503)
            if self.ctl["http_429"] > 0:
                self.ctl["http_429"] -= 1
                self.counts["429"] += 1
                return web.json_response({"code": -1003, "msg": "Too many requests; current limit is 6000 "
                                                                "request weight per 1 MINUTE."}, status=429)
        return await handler(request)

    async def ping(self, _r: web.Request) -> web.Response:
        return web.json_response({})

    async def time_(self, _r: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def exchange_info(self, _r: web.Request) -> web.Response:
        self.counts["exchange_info"] += 1
        if self.ctl["exchange_info_delay_s"]:
            await asyncio.sleep(float(self.ctl["exchange_info_delay_s"]))
        listed = self.ctl["list_symbols"] or self.m.symbols
        syms = []
        for s in listed:
            base, quote, _p, tick, step, min_qty, min_notional = SPECS[s]
            syms.append({
                "symbol": s, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
                "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": _f(tick), "maxPrice": "1000000.00000000",
                     "tickSize": _f(tick)},
                    {"filterType": "LOT_SIZE", "minQty": _f(min_qty), "maxQty": "9000.00000000", "stepSize": _f(step)},
                    {"filterType": "NOTIONAL", "minNotional": _f(min_notional), "applyMinToMarket": True,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        return web.json_response({"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
            "exchangeFilters": [], "symbols": syms})

    def _symbol(self, r: web.Request) -> str:
        s = r.query.get("symbol", "")
        if s not in self.m.symbols:
            raise web.HTTPBadRequest(text=json.dumps({"code": -1121, "msg": "Invalid symbol."}),
                                     content_type="application/json")
        return s

    async def klines(self, r: web.Request) -> web.Response:
        self.counts["klines"] += 1
        s = self._symbol(r)
        if r.query.get("interval") != self.m.interval:
            return web.json_response({"code": -1120, "msg": "Invalid interval."}, status=400)
        start = int(r.query.get("startTime", 0))
        end = int(r.query.get("endTime", 2**62))
        limit = min(int(r.query.get("limit", 500)), 1000)
        ks = [self.m.kline_rest(s, t0) for t0 in sorted(self.m.klines[s]) if start <= t0 <= end]
        return web.json_response(ks[:limit] if "startTime" in r.query else ks[-limit:])

    async def book_ticker(self, r: web.Request) -> web.Response:
        """One symbol's best bid/ask (?symbol=), or a list (?symbols=["A","B"], or none: all)."""
        def one(s: str) -> dict:
            p, tick = self.m.price[s], SPECS[s][3]
            return {"symbol": s, "bidPrice": _f(p - tick), "bidQty": _f(1.5), "askPrice": _f(p + tick),
                    "askQty": _f(2.0)}
        if "symbol" in r.query:
            return web.json_response(one(self._symbol(r)))
        want = json.loads(r.query["symbols"]) if "symbols" in r.query else self.m.symbols
        return web.json_response([one(s) for s in want if s in self.m.symbols])

    async def trades(self, r: web.Request) -> web.Response:
        s = self._symbol(r)
        limit = min(int(r.query.get("limit", 500)), 1000)
        return web.json_response(self.m.trades[s][-limit:])

    async def agg_trades(self, r: web.Request) -> web.Response:
        """GET /api/v3/aggTrades (what ccxt's fetch_trades calls): one trade per aggregate here."""
        s = self._symbol(r)
        limit = min(int(r.query.get("limit", 500)), 1000)
        start = int(r.query.get("startTime", 0))
        end = int(r.query.get("endTime", 2**62))
        rows = [t for t in self.m.trades[s] if start <= t["time"] <= end]
        rows = rows[:limit] if "startTime" in r.query else rows[-limit:]
        return web.json_response([{"a": t["id"], "p": t["price"], "q": t["qty"], "f": t["id"], "l": t["id"],
                                   "T": t["time"], "m": t["isBuyerMaker"], "M": True} for t in rows])

    # ------------------------------------------------------------- control
    async def control(self, r: web.Request) -> web.Response:
        body = await r.json()
        for k, v in body.items():
            if k == "drop_ws":
                for ws in list(self.ws):
                    await ws.close(code=1001, message=b"going away")
            elif k == "refuse_ws_s":
                self.refuse_until = time.monotonic() + float(v)
            elif k == "silent_s":
                self.silent_until = time.monotonic() + float(v)
            elif k in self.ctl:
                self.ctl[k] = v
            else:
                return web.json_response({"error": f"unknown control {k!r}"}, status=400)
        return web.json_response({"ok": True})

    async def state(self, _r: web.Request) -> web.Response:
        return web.json_response({"closed": self.m.closed(int(time.time() * 1000)), "counts": self.counts,
                                  "connections": len(self.ws), "interval_ms": self.m.iv})

    # ----------------------------------------------------------- WebSocket
    async def ws_handler(self, r: web.Request) -> web.StreamResponse:
        if time.monotonic() < self.refuse_until:
            self.counts["ws_refused"] += 1
            raise web.HTTPServiceUnavailable()
        ws = web.WebSocketResponse(heartbeat=None)
        try:
            await ws.prepare(r)
        except ConnectionError:  # the client left during the handshake (it is reconnecting)
            return ws
        self.counts["ws_connects"] += 1
        self.ws.add(ws)
        self.subs[ws] = set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    continue
                if req.get("method") == "SUBSCRIBE":
                    self.subs[ws].update(req.get("params", []))
                    await ws.send_str(json.dumps({"result": None, "id": req.get("id")}))
                elif req.get("method") == "UNSUBSCRIBE":
                    self.subs[ws].difference_update(req.get("params", []))
                    await ws.send_str(json.dumps({"result": None, "id": req.get("id")}))
        finally:
            self.ws.discard(ws)
            self.subs.pop(ws, None)
        return ws

    def _garble(self, payload: dict) -> str:
        """One malformed message, of a different kind each time."""
        self._bad_kind += 1
        kind = self._bad_kind % 4
        if kind == 0:
            return "{not json"
        if kind == 1:
            return json.dumps({**payload, "p": "abc"} if "p" in payload else {**payload, "b": "abc"})
        if kind == 2:
            return json.dumps({"e": "trade", "s": payload.get("s", "BTCUSDT")})  # fields missing
        return json.dumps([1, 2, 3])

    async def pump(self) -> None:
        """The market's clock: one step every trade_ms, pushed to the subscribers."""
        iv = self.m.trade_ms / 1000
        nxt = time.monotonic()
        while True:
            nxt += iv
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            msgs = self.m.step(int(time.time() * 1000))
            if time.monotonic() < self.silent_until:
                continue
            for ws, subs in list(self.subs.items()):
                for _s, stream, payload in msgs:
                    if stream not in subs or ws.closed:
                        continue
                    if self.ctl["malformed"] > 0:
                        self.ctl["malformed"] -= 1
                        self.counts["malformed_sent"] += 1
                        text = self._garble(payload)
                    else:
                        text = json.dumps(payload)
                    try:
                        await ws.send_str(text)
                    except (ConnectionError, RuntimeError):
                        break


def urls(port: int) -> dict[str, str]:
    """The ``market_data.urls`` that point the ccxt adapter at a fake venue on ``port``."""
    return {"rest": f"http://127.0.0.1:{port}/api/v3", "ws": f"ws://127.0.0.1:{port}/stream/ws"}


class VenueProc:
    """A fake venue in a process of its own, as the tests and the bench drive it.

    ``spawn`` makes the process (tests pass ``procs.spawn``, which reaps it);
    ``ctl(**kw)`` scripts it; ``state()`` is what it made; ``sets()`` the config
    overrides that point a ccxt feed at it."""

    def __init__(self, spawn: Any, work_dir: str, symbols: str = "BTCUSDT,ETHUSDT", interval: str = "1s",
                 trade_ms: int = 100, timeout: float = 20.0):
        port_file = os.path.join(work_dir, "fake-venue.port")
        try:  # a former venue's port file would be read before this one writes its own
            os.unlink(port_file)
        except FileNotFoundError:
            pass
        self.proc = spawn([sys.executable, "-m", "scripts.fake_venue", "--port-file", port_file, "--symbols", symbols,
                           "--interval", interval, "--trade-ms", str(trade_ms)])
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake venue did not start (exit {self.proc.poll()})")
            time.sleep(0.02)  # a poll with a deadline: the port file appears whole (rename)
        with open(port_file) as f:
            self.port = int(f.read())
        self.interval = interval

    def _http(self, method: str, path: str, body: dict | None = None) -> Any:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def ctl(self, **kw: Any) -> Any:
        return self._http("POST", "/_ctl", kw)

    def state(self) -> dict:
        return self._http("GET", "/_state")

    def sets(self, symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT")) -> list[str]:
        u = urls(self.port)
        syms = ", ".join(f'"{s}"' for s in symbols)
        return ['market_data.feed="ccxt"', 'market_data.venue="binance"', f'market_data.timeframe="{self.interval}"',
                f"market_data.symbols=[{syms}]", f'market_data.urls={{rest="{u["rest"]}", ws="{u["ws"]}"}}']

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)


def make_app(venue: Venue) -> web.Application:
    app = web.Application(middlewares=[venue.gate])
    app.router.add_get("/api/v3/ping", venue.ping)
    app.router.add_get("/api/v3/time", venue.time_)
    app.router.add_get("/api/v3/exchangeInfo", venue.exchange_info)
    app.router.add_get("/api/v3/klines", venue.klines)
    app.router.add_get("/api/v3/ticker/bookTicker", venue.book_ticker)
    app.router.add_get("/api/v3/trades", venue.trades)
    app.router.add_get("/api/v3/aggTrades", venue.agg_trades)
    app.router.add_post("/_ctl", venue.control)
    app.router.add_get("/_state", venue.state)
    app.router.add_get("/stream/ws/{n}", venue.ws_handler)
    app.router.add_get("/stream/ws", venue.ws_handler)
    return app


async def serve(args: argparse.Namespace) -> None:
    venue = Venue(Market(args.symbols.split(","), args.interval, args.trade_ms, args.seed))
    runner = web.AppRunner(make_app(venue), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.port_file:  # written whole (rename): a reader never sees half a number
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"fake venue on 127.0.0.1:{port}", flush=True)
    await venue.pump()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="local fake of Binance spot's public market-data API")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default="")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT")
    ap.add_argument("--interval", default="1s", choices=sorted(IV_MS))
    ap.add_argument("--trade-ms", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    bad = [s for s in args.symbols.split(",") if s not in SPECS]
    if bad:
        sys.exit(f"fake venue: unknown symbols {bad} (known: {', '.join(SPECS)})")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

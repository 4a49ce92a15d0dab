"""The strategy host without transport: one plugin (actors/strategies/base.py), its
Context (positions, orders in flight), warm-up, and what it knows of the exchange's
paused/halted flags.

Calls in: ``seed`` (the exchange's Query reply), ``start`` (on_start), ``warm_up``
(history bars, which never trade), ``on_bar``/``on_tick``/``on_quote``/``end_of_data``, the
exchange's events (``on_fill``, ``on_order_update``, ``on_account``, ``on_reject``),
operator ``command``s; out: orders through ``send`` (SubmitOrder, CancelOrder, Flatten),
in the order the plugin made them.

Two callers drive this same code: the strategy actor (actors/strategy.py) decodes what
arrives on md/exec/orders and sends ``send``'s messages on its orders socket; the
in-process backtest kernel (actors/kernel.py) hands the host the feed's bars and the
exchange core's events directly.

Rules: no order is sent while warming (fewer than ``warmup_bars`` bars seen for the
symbol, history included), while paused by our own ``pause``, or while the exchange
says it is paused or halted (it is the authority: its flags come with the Query at start
and every AccountUpdate), so the host never sends what the exchange would reject. A
history bar that arrives again live is fed once. A plugin's exception is not caught:
the caller decides (the actor exits and is restarted; a backtest stops).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from actors.base import UserError
from actors.strategies.base import Context, Strategy
from bus.messages import (
    AccountUpdate, Bar, EndOfData, Fill, Flatten, Instrument, OrderReject, OrderUpdate, QueryReply, Quote, Tick,
)


class PluginError(UserError):
    """The configured strategy plugin cannot be loaded."""


class Refused(Exception):
    """An operator command the host does not handle; the message says which it does."""


def load_plugin(spec: str, params: dict[str, Any]) -> Strategy:
    """Import ``package.module:Class`` and construct it with ``params``; PluginError naming the plugin."""
    module_name, sep, cls_name = spec.partition(":")
    if not sep or not module_name or not cls_name:
        raise PluginError(f"strategy plugin {spec!r}: expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"strategy plugin {spec!r}: cannot import module {module_name!r}: {e}") from None
    except Exception as e:  # a plugin module that raises at import
        raise PluginError(f"strategy plugin {spec!r}: module {module_name!r} failed to import: "
                          f"{type(e).__name__}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise PluginError(f"strategy plugin {spec!r}: module {module_name!r} has no class {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise PluginError(f"strategy plugin {spec!r}: {cls_name} is not a subclass of "
                          "actors.strategies.base.Strategy")
    try:
        obj = cls(**params)
    except TypeError as e:
        raise PluginError(f"strategy plugin {spec!r}: bad strategy.params {params!r}: {e}") from None
    w = getattr(obj, "warmup_bars", 0)
    if not isinstance(w, int) or w < 0:
        raise PluginError(f"strategy plugin {spec!r}: warmup_bars must be an int >= 0, not {w!r}")
    return obj


class StrategyHost:
    """``cfg`` is the ``[strategy]`` config table (config.StrategyCfg); the plugin is loaded
    here (PluginError), and ``strategy.symbols`` checked against ``instruments`` (UserError).
    ``send(msg)`` takes the orders; ``cl_prefix`` starts every client order id.
    ``log_orders``: one info line per order sent (the actor's log; an in-process backtest
    has tens of thousands and logs none). ``plugin``: already loaded by the caller."""

    def __init__(self, cfg: Any, instruments: list[Instrument], *, send: Callable[[Any], None], cl_prefix: str,
                 log: Any, log_orders: bool = True, plugin: Strategy | None = None):
        self.spec = cfg.plugin
        self.plugin = plugin if plugin is not None else load_plugin(cfg.plugin, dict(cfg.params))
        self.log = log
        self.log_orders = log_orders
        self._send = send
        log.info("plugin loaded", plugin=cfg.plugin, params=dict(cfg.params), warmup_bars=self.plugin.warmup_bars)
        known = {i.symbol for i in instruments}
        unknown = [s for s in cfg.symbols if s not in known]
        if unknown:
            raise UserError(f"strategy.symbols {unknown} not in the instrument master ({len(known)} instruments)")
        self.symbols = set(cfg.symbols) if cfg.symbols else known
        self.paused = False  # by our own pause/resume commands
        self.exch_paused = self.exch_halted = False  # as the exchange last said
        self.bars_seen: dict[str, int] = {}
        self.hist_fseq: dict[str, int] = {}  # symbol -> fseq of the last history bar (overlap filter)
        self.cur_fseq = 0  # fseq of the bar being handled
        self.eod: list[str] = []
        self.rejects = 0
        self._in_history = False
        self.context = Context(instruments, send=self._order, cl_prefix=cl_prefix, params=dict(cfg.params),
                               can_trade=self._can_trade, log=log)
        self.plugin.bind(self.context)
        self.market: Any = None  # trading hours and option chains (attach_market)

    def attach_market(self, market: Any) -> None:
        """Trading hours and options (actors/market_rules.StrategyMarket): the plugin's option
        helpers read it, ``on_session_open`` / ``on_session_close`` come from it, and no
        order is sent outside the session."""
        self.market = self.context.market = market

    def market_clock(self, ts: int) -> None:
        """Live: the wall clock, so the session's open and close reach the plugin when no
        bar arrives (market-data publishes nothing outside the session)."""
        if self.market is not None:
            self._session_events(self.market.clock(ts))

    def _session_events(self, events: list[tuple[str, Any]]) -> None:
        for what, day in events:
            self.log.info("session " + what, day=str(day))
            if what == "open":
                self.plugin.on_session_open(day)
            else:
                self.plugin.on_session_close(day)

    # ----------------------------------------------------------------- start
    def seed(self, q: QueryReply) -> None:
        """Start from the exchange's view: positions, open orders, its flags."""
        self.context.seed(q)
        self.exch_paused, self.exch_halted = q.paused, q.halted
        self.log.info("position recovered", positions=self.held(), open_orders=len(self.context.orders),
                      exchange_paused=q.paused, exchange_halted=q.halted)

    def start(self) -> None:
        self.plugin.on_start()

    def warm_up(self, bars: list[Bar]) -> None:
        """History bars (the past: they warm the indicators and never trade)."""
        for bar in bars:
            self._bar(bar, history=True)

    def held(self) -> dict[str, int | float]:
        return {s: n for s, n in self.context.positions.items() if n}

    # ---------------------------------------------------------------- orders
    def _can_trade(self, symbol: str) -> bool:
        return (not self.paused and not self.exch_paused and not self.exch_halted and not self._in_history
                and self.bars_seen.get(symbol, 0) >= self.plugin.warmup_bars
                and (self.market is None or self.market.can_trade()))

    def _order(self, msg: Any) -> None:
        self._send(msg)
        if self.log_orders:
            self.log.info("order sent", type=type(msg).__name__, **{k: getattr(msg, k) for k in ("cl_id", "symbol",
                          "side", "qty") if hasattr(msg, k)})

    # ------------------------------------------------------------ market data
    def _bar(self, bar: Bar, history: bool = False) -> None:
        sym = bar.symbol
        if history:
            self.hist_fseq[sym] = bar.fseq
        elif self.hist_fseq:
            h = self.hist_fseq.get(sym)
            if h is not None:
                if bar.fseq <= h:
                    return  # published before the history reply: already fed from history
                # Only the overlap is filtered: a restarted market-data starts its fseq at 1 again.
                del self.hist_fseq[sym]
        seen = self.bars_seen
        seen[sym] = seen.get(sym, 0) + 1
        self.cur_fseq = bar.fseq
        if self.market is not None:
            if history:  # the past: prices only; the session's events are today's
                self.market.last[sym] = bar.close
            else:
                events = self.market.on_bar(bar)
                if events:
                    self._session_events(events)
        if history:
            self._in_history = True
            try:
                self.plugin.on_bar(bar)
            finally:
                self._in_history = False
        else:
            self.plugin.on_bar(bar)

    def on_bar(self, bar: Bar) -> None:
        if bar.symbol in self.symbols:
            self._bar(bar)

    def on_tick(self, tick: Tick) -> None:
        if tick.symbol in self.symbols:
            self.plugin.on_tick(tick)

    def on_quote(self, quote: Quote) -> None:
        if quote.symbol in self.symbols:
            self.plugin.on_quote(quote)

    def end_of_data(self, m: EndOfData) -> None:
        self.eod.append(m.feed)
        self.log.info("end of data", feed=m.feed, count=m.count, last_fseq=m.last_fseq)

    # -------------------------------------------------------- exchange events
    def on_fill(self, fill: Fill) -> None:
        if self.context.apply_fill(fill):
            self.plugin.on_fill(fill)

    def on_order_update(self, upd: OrderUpdate) -> None:
        self.context.apply_update(upd)

    def on_account(self, msg: AccountUpdate) -> None:
        if (msg.paused, msg.halted) != (self.exch_paused, self.exch_halted):
            self.exch_paused, self.exch_halted = msg.paused, msg.halted
            self.log.info("exchange trading state", paused=msg.paused, halted=msg.halted, state=self.state())

    def on_reject(self, msg: OrderReject) -> None:
        self.rejects += 1
        self.log.warning("order rejected", cl_id=msg.cl_id, code=msg.code, text=msg.text)
        if self.context.apply_reject(msg):
            self.plugin.on_order_rejected(msg)

    # --------------------------------------------------------------- control
    def command(self, cmd: str) -> str:
        """pause (no new orders; bars still consumed so indicators stay warm), resume,
        stop-and-close (pause, then Flatten at the exchange); returns the state."""
        if cmd == "pause":
            self.paused = True
        elif cmd == "resume":
            self.paused = False
        elif cmd == "stop-and-close":
            self.paused = True
            self._send(Flatten())
        else:
            raise Refused(f"strategy does not handle command {cmd!r} (pause, resume, stop-and-close)")
        self.log.info("command", cmd=cmd, paused=self.paused)
        return self.state()

    def state(self) -> str:
        if self.exch_halted:
            return "halted"
        if self.paused or self.exch_paused:
            return "paused"
        w = self.plugin.warmup_bars
        inst = self.context.instruments
        if any(self.bars_seen.get(s, 0) < w for s in self.symbols if inst[s].kind != "option"):
            return "warming"
        return "trading"

    def status(self) -> dict[str, Any]:
        ctx = self.context
        return {"state": self.state(), "plugin": self.spec, "positions": self.held(),
                "open_orders": len(ctx.orders), "orders_sent": ctx.sent, "orders_suppressed": ctx.suppressed,
                "rejects": self.rejects, "bars": sum(self.bars_seen.values()), "eod": len(self.eod)}

    def stop(self) -> None:
        self.plugin.on_stop()

"""strategy actor: hosts one strategy plugin (see actors/strategies/base.py).

init, in this order, before READY:
1. load the plugin ``strategy.plugin`` ("package.module:Class") with
   ``strategy.params``; any failure is an init error naming the plugin;
2. ask market-data (``md.ref``) for the instrument list -- never read the file;
3. subscribe to ``md`` (bars, ticks, end-of-data) and ``exec`` (fills, order
   updates, account updates), then ``Query`` the exchange for positions, open
   orders and its paused/halted flags, so a restarted strategy starts from what
   it already holds and in the state the operator set;
4. ``on_start``, then warm the indicators from market-data history (orders are
   refused while warming; history bars never trade).

Commands: ``pause`` (no new orders, bars still consumed so indicators stay
warm), ``resume``, ``stop-and-close`` (pause, then Flatten at the exchange).
The exchange is the authority on paused/halted (persisted in its ledger): the
strategy takes them from the Query at start and from every AccountUpdate, and
sends no order while the exchange is paused or halted, whatever its own
``pause``/``resume`` said, so it never sends orders the exchange would reject.
A plugin exception is not caught: the actor exits 1 with the traceback in its
log and the supervisor restarts it (a strategy in an unknown state must not
trade); one that keeps crashing is disabled (``on_give_up = "disable"``, see
docs/ARCHITECTURE.md) while the rest of the system runs on.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from actors.base import Actor, CommandError, Role, UserError, main
from actors.strategies.base import Context, Strategy
from bus.messages import (
    AccountUpdate, Bar, BarBatch, CancelReply, EndOfData, Fill, Flatten, HistoryReply, HistoryRequest, InstrumentsReply,
    InstrumentsRequest, MdError, OrderAck, OrderReject, OrdersError, OrderUpdate, Progress, Query, QueryReply, Tick,
)
from bus.sockets import Port, Received

REQUEST_TIMEOUT_S = 5.0


class PluginError(UserError):
    """The configured strategy plugin cannot be loaded."""


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


class StrategyHost(Actor):
    name = "strategy"
    roles = frozenset({Role.ORDER_SENDER, Role.BACKTEST_FLOW})
    commands = {
        "pause": "send no new orders (bars are still consumed: indicators stay warm)",
        "resume": "send orders again",
        "stop-and-close": "pause, and ask the exchange to flatten",
    }

    def init(self) -> dict[str, Any]:
        sc = self.cfg.strategy
        self.spec = sc.plugin
        self.plugin = load_plugin(sc.plugin, dict(sc.params))
        self.log.info("plugin loaded", plugin=sc.plugin, params=dict(sc.params),
                      warmup_bars=self.plugin.warmup_bars)

        # Stable identity: market-data's backtest flow control keys Progress by it.
        ref = self.ref = self.open("md.ref", bind=False, identity=self.name)
        self.backtest = self.cfg.service.mode == "backtest"
        self.cur_fseq = 0  # fseq of the bar being handled
        self.reported = 0  # last Progress sent to the exchange
        rep = self.request(ref, InstrumentsRequest(), REQUEST_TIMEOUT_S, expect=(InstrumentsReply, MdError)).msg
        if isinstance(rep, MdError):
            raise RuntimeError(f"market-data refused the instrument request: {rep.code}: {rep.text}")
        instruments = rep.instruments
        known = {i.symbol for i in instruments}
        unknown = [s for s in sc.symbols if s not in known]
        if unknown:
            raise UserError(f"strategy.symbols {unknown} not in the instrument master ({len(known)} instruments)")
        self.symbols = set(sc.symbols) if sc.symbols else known

        # Subscribe before the Query: a fill published after the reply is then not missed.
        topics = [f"md.bar.{s}" for s in sorted(self.symbols)] if sc.symbols else ["md.bar."]
        topics += [f"md.tick.{s}" for s in sorted(self.symbols)] if sc.symbols else ["md.tick."]
        if self.backtest:
            topics.append("md.batch")
        self.md = self.open("md", bind=False, subscribe=[*topics, "md.eod"], handler=self._on_md)
        self.exec = self.open("exec", bind=False, subscribe=["exec.fill.", "exec.order.", "acct.update"],
                              handler=self._on_exec)
        self.orders = self.open("orders", bind=False, identity="strategy", handler=self._on_orders)

        self.paused = False  # by our own pause/resume commands
        self.exch_paused = self.exch_halted = False  # as the exchange last said
        self.bars_seen: dict[str, int] = {}
        self.hist_fseq: dict[str, int] = {}  # symbol -> fseq of the last history bar (overlap filter)
        self.eod: list[str] = []
        self.rejects = 0
        # Unique across restarts: pid and start time (a restart never reuses a cl_id).
        # A backtest starts from an empty ledger and is never restarted, so its ids
        # are fixed ("bt-1", ...) and fills.csv is byte-identical from run to run.
        prefix = "bt" if self.backtest else f"{os.getpid():x}{time.time_ns() // 1_000_000 % 36**6:x}"
        self.ctx_ = Context(instruments, send=self._send_order, cl_prefix=prefix, params=dict(sc.params),
                            can_trade=self._can_trade, log=self.log)
        self.plugin.bind(self.ctx_)

        q = self.request(self.orders, Query(what="all"), REQUEST_TIMEOUT_S, expect=(QueryReply, OrdersError)).msg
        if isinstance(q, OrdersError):
            raise RuntimeError(f"paper-exchange refused the position query: {q.code}: {q.text}")
        self.ctx_.seed(q)
        self.exch_paused, self.exch_halted = q.paused, q.halted
        held = {s: n for s, n in self.ctx_.positions.items() if n}
        self.log.info("position recovered", positions=held, open_orders=len(self.ctx_.orders),
                      exchange_paused=q.paused, exchange_halted=q.halted)

        self.plugin.on_start()
        warmed = self._warm_up(ref)
        return {"plugin": sc.plugin, "instruments": len(instruments), "symbols": len(self.symbols),
                "positions": len(held), "open_orders": len(self.ctx_.orders), "history_bars": warmed,
                "state": self._state()}

    def _warm_up(self, ref: Port) -> int:
        n = self.plugin.warmup_bars
        if n <= 0:
            return 0
        total = 0
        for sym in sorted(self.symbols):
            if self.ctx_.instruments[sym].kind == "option":
                continue
            rep = self.request(ref, HistoryRequest(symbol=sym, n=min(n, 100_000)), REQUEST_TIMEOUT_S,
                               expect=(HistoryReply, MdError)).msg
            if isinstance(rep, MdError):
                self.log.warning("no history", symbol=sym, code=rep.code, text=rep.text)
                continue
            for bar in rep.bars:
                self._bar(bar, history=True)
            total += len(rep.bars)
        return total

    # ---------------------------------------------------------------- gating
    def _can_trade(self, symbol: str) -> bool:
        return (not self.paused and not self.exch_paused and not self.exch_halted and not self._in_history
                and self.bars_seen.get(symbol, 0) >= self.plugin.warmup_bars)

    _in_history = False

    def _report(self, fseq: int) -> None:
        """Backtest: every bar up to fseq is handled and its orders are sent (one
        DEALER, so they reach the exchange before this)."""
        if fseq > self.reported:
            self.reported = fseq
            p = Progress(fseq=fseq)
            self.orders.send(p)
            self.ref.send(p)

    def _send_order(self, msg: Any) -> None:
        if self.backtest and self.cur_fseq - 1 > self.reported:
            # Tell the exchange which bar this order comes from: it may then
            # process bars up to cur_fseq, and fills this order from cur_fseq + 1.
            self.reported = self.cur_fseq - 1
            self.orders.send(Progress(fseq=self.reported))
        self.orders.send(msg)
        self.log.info("order sent", type=type(msg).__name__, **{k: getattr(msg, k) for k in ("cl_id", "symbol",
                      "side", "qty") if hasattr(msg, k)})

    # ------------------------------------------------------------------ input
    def _bar(self, bar: Bar, history: bool = False) -> None:
        if history:
            self.hist_fseq[bar.symbol] = bar.fseq
        else:
            h = self.hist_fseq.get(bar.symbol)
            if h is not None:
                if bar.fseq <= h:
                    return  # published before the history reply: already fed from history
                # Only the overlap is filtered: a restarted market-data starts its fseq at 1 again.
                del self.hist_fseq[bar.symbol]
        self.bars_seen[bar.symbol] = self.bars_seen.get(bar.symbol, 0) + 1
        self.cur_fseq = bar.fseq
        self._in_history = history
        try:
            self.plugin.on_bar(bar)
        finally:
            self._in_history = False

    def _on_md(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, BarBatch):
            symbols = self.symbols
            for b in msg.bars:
                if b.symbol in symbols:
                    self._bar(b)
            if msg.bars:
                self._report(msg.bars[-1].fseq)
        elif isinstance(msg, Bar):
            if msg.symbol in self.symbols:
                self._bar(msg)
        elif isinstance(msg, Tick):
            if msg.symbol in self.symbols:
                self.plugin.on_tick(msg)
        elif isinstance(msg, EndOfData):
            self.eod.append(msg.feed)
            if self.backtest:
                self._report(msg.last_fseq)
            self.log.info("end of data", feed=msg.feed, count=msg.count, last_fseq=msg.last_fseq)

    def _on_exec(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, Fill):
            if self.ctx_.apply_fill(msg):
                self.plugin.on_fill(msg)
        elif isinstance(msg, OrderUpdate):
            self.ctx_.apply_update(msg)
        elif isinstance(msg, AccountUpdate):
            if (msg.paused, msg.halted) != (self.exch_paused, self.exch_halted):
                self.exch_paused, self.exch_halted = msg.paused, msg.halted
                self.log.info("exchange trading state", paused=msg.paused, halted=msg.halted, state=self._state())

    def _on_orders(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, OrderReject):
            self.rejects += 1
            self.log.warning("order rejected", cl_id=msg.cl_id, code=msg.code, text=msg.text)
            if self.ctx_.apply_reject(msg):
                self.plugin.on_order_rejected(msg)
        elif isinstance(msg, OrdersError):
            self.log.error("exchange error reply", code=msg.code, text=msg.text)
        elif isinstance(msg, (OrderAck, CancelReply, QueryReply)):
            self.log.debug("exchange reply", type=type(msg).__name__)

    # --------------------------------------------------------------- control
    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "pause":
            self.paused = True
        elif cmd == "resume":
            self.paused = False
            # The exchange published its own resume before it answered (which is
            # when this command was sent): read it, so the reply says "trading".
            self.drain(self.exec, self._on_exec)
        elif cmd == "stop-and-close":
            self.paused = True
            self.orders.send(Flatten())
        else:
            raise CommandError(f"strategy does not handle command {cmd!r} (pause, resume, stop-and-close)")
        self.log.info("command", cmd=cmd, paused=self.paused)
        return {"state": self._state()}

    def _state(self) -> str:
        if self.exch_halted:
            return "halted"
        if self.paused or self.exch_paused:
            return "paused"
        w = self.plugin.warmup_bars
        if any(self.bars_seen.get(s, 0) < w for s in self.symbols if self.ctx_.instruments[s].kind != "option"):
            return "warming"
        return "trading"

    def status(self) -> dict[str, Any]:
        return {"state": self._state(), "plugin": self.spec,
                "positions": {s: n for s, n in self.ctx_.positions.items() if n},
                "open_orders": len(self.ctx_.orders), "orders_sent": self.ctx_.sent,
                "orders_suppressed": self.ctx_.suppressed, "rejects": self.rejects,
                "bars": sum(self.bars_seen.values()), "eod": len(self.eod)}

    def on_stop(self) -> None:
        if hasattr(self, "plugin"):
            self.plugin.on_stop()


if __name__ == "__main__":
    main(StrategyHost)

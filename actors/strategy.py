"""The strategy actor: the sockets around actors/strategy_host.py, which hosts the plugin
(see actors/strategies/base.py) and holds the rules.

init, in this order, before READY:
1. load the plugin ``strategy.plugin`` ("package.module:Class") with
   ``strategy.params``; any failure is an init error naming the plugin;
2. ask market-data (``md.ref``) for the instrument list -- never read the file;
3. subscribe to ``md`` (bars, ticks, quotes, end-of-data) and ``exec`` (fills, order
   updates, account updates), then ``Query`` the exchange for positions, open
   orders and its paused/halted flags, so a restarted strategy starts from what
   it already holds and in the state the operator set;
4. ``on_start``, then warm the indicators from market-data history (orders are
   refused while warming; history bars never trade).

Commands: ``pause``, ``resume``, ``stop-and-close`` (the host's). A plugin exception
is not caught: the actor exits 1 with the traceback in its log and the supervisor
restarts it (a strategy in an unknown state must not trade); one that keeps crashing
is disabled (``on_give_up = "disable"``, see docs/ARCHITECTURE.md) while the rest of
the system runs on.

Backtest under the actor kernel: the strategy tells the exchange which bar its orders
come from (``Progress(fseq = t - 1)`` on the orders socket before the first order it
sends while handling bar t) and reports ``Progress`` after each batch to the exchange and
to market-data's flow control (docs/ARCHITECTURE.md, "The actor kernel").
"""

from __future__ import annotations

import os
import time
from typing import Any

from actors.base import Actor, CommandError, Role, main
from actors import market_rules
from actors.strategy_host import Refused, StrategyHost, load_plugin
from bus.messages import (
    AccountUpdate, Bar, BarBatch, CancelReply, EndOfData, Fill, HistoryReply, HistoryRequest, InstrumentsReply,
    InstrumentsRequest, MdError, OrderAck, OrderReject, OrdersError, OrderUpdate, Progress, Query, QueryReply, Quote, Tick,
)
from bus.sockets import Port, Received

REQUEST_TIMEOUT_S = 5.0


class StrategyActor(Actor):
    name = "strategy"
    roles = frozenset({Role.ORDER_SENDER, Role.BACKTEST_FLOW})
    commands = {
        "pause": "send no new orders (bars are still consumed: indicators stay warm)",
        "resume": "send orders again",
        "stop-and-close": "pause, and ask the exchange to flatten",
    }

    def init(self) -> dict[str, Any]:
        sc = self.cfg.strategy
        self.backtest = self.cfg.service.mode == "backtest"
        # Stable identity: market-data's backtest flow control keys Progress by it.
        ref = self.ref = self.open("md.ref", bind=False, identity=self.name)
        self.reported = 0  # last Progress sent to the exchange
        self.host: StrategyHost | None = None
        # The plugin is loaded before anything is asked of the other actors: a bad
        # plugin is the user's error, said at once.
        plugin = load_plugin(sc.plugin, dict(sc.params))
        rep = self.request(ref, InstrumentsRequest(), REQUEST_TIMEOUT_S, expect=(InstrumentsReply, MdError)).msg
        if isinstance(rep, MdError):
            raise RuntimeError(f"market-data refused the instrument request: {rep.code}: {rep.text}")
        instruments = rep.instruments
        # Unique across restarts: pid and start time (a restart never reuses a cl_id).
        # A backtest starts from an empty ledger and is never restarted, so its ids
        # are fixed ("bt-1", ...) and fills.csv is byte-identical from run to run.
        prefix = "bt" if self.backtest else f"{os.getpid():x}{time.time_ns() // 1_000_000 % 36**6:x}"
        host = self.host = StrategyHost(sc, instruments, send=self._send_order, cl_prefix=prefix, log=self.log,
                                        plugin=plugin)
        if market_rules.wanted(self.cfg, instruments):  # [session] hours, option chains
            host.attach_market(market_rules.StrategyMarket(self.cfg, instruments))
            if not self.backtest:  # the session opens and closes on the wall clock
                self.every(1.0, lambda: host.market_clock(time.time_ns()))

        # Subscribe before the Query: a fill published after the reply is then not missed.
        syms = sorted(host.symbols)
        topics = [f"md.bar.{s}" for s in syms] if sc.symbols else ["md.bar."]
        topics += [f"md.tick.{s}" for s in syms] if sc.symbols else ["md.tick."]
        topics += [f"md.quote.{s}" for s in syms] if sc.symbols else ["md.quote."]
        if self.backtest:
            topics.append("md.batch")
        self.md = self.open("md", bind=False, subscribe=[*topics, "md.eod"], handler=self._on_md)
        self.exec = self.open("exec", bind=False, subscribe=["exec.fill.", "exec.order.", "acct.update"],
                              handler=self._on_exec)
        self.orders = self.open("orders", bind=False, identity="strategy", handler=self._on_orders)

        q = self.request(self.orders, Query(what="all"), REQUEST_TIMEOUT_S, expect=(QueryReply, OrdersError)).msg
        if isinstance(q, OrdersError):
            raise RuntimeError(f"paper-exchange refused the position query: {q.code}: {q.text}")
        host.seed(q)
        host.start()
        warmed = self._warm_up(ref)
        return {"plugin": sc.plugin, "instruments": len(instruments), "symbols": len(host.symbols),
                "positions": len(host.held()), "open_orders": len(host.context.orders), "history_bars": warmed,
                "state": host.state()}

    def _warm_up(self, ref: Port) -> int:
        host = self.host
        assert host is not None
        n = host.plugin.warmup_bars
        if n <= 0:
            return 0
        total = 0
        for sym in sorted(host.symbols):
            if host.context.instruments[sym].kind == "option":
                continue
            rep = self.request(ref, HistoryRequest(symbol=sym, n=min(n, 100_000)), REQUEST_TIMEOUT_S,
                               expect=(HistoryReply, MdError)).msg
            if isinstance(rep, MdError):
                self.log.warning("no history", symbol=sym, code=rep.code, text=rep.text)
                continue
            host.warm_up(rep.bars)
            total += len(rep.bars)
        return total

    # ------------------------------------------------------------ backtest flow
    def _report(self, fseq: int) -> None:
        """Backtest: every bar up to fseq is handled and its orders are sent (one
        DEALER, so they reach the exchange before this)."""
        if fseq > self.reported:
            self.reported = fseq
            p = Progress(fseq=fseq)
            self.orders.send(p)
            self.ref.send(p)

    def _send_order(self, msg: Any) -> None:
        cur = self.host.cur_fseq if self.host is not None else 0
        if self.backtest and cur - 1 > self.reported:
            # Tell the exchange which bar this order comes from: it may then
            # process bars up to cur, and fills this order from cur + 1.
            self.reported = cur - 1
            self.orders.send(Progress(fseq=self.reported))
        self.orders.send(msg)

    # ------------------------------------------------------------------ input
    def _on_md(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        host = self.host
        assert host is not None
        if isinstance(msg, BarBatch):
            on_bar = host.on_bar
            for b in msg.bars:
                on_bar(b)
            if msg.bars:
                self._report(msg.bars[-1].fseq)
        elif isinstance(msg, Bar):
            host.on_bar(msg)
        elif isinstance(msg, Tick):
            host.on_tick(msg)
        elif isinstance(msg, Quote):
            host.on_quote(msg)
        elif isinstance(msg, EndOfData):
            host.end_of_data(msg)
            if self.backtest:
                self._report(msg.last_fseq)

    def _on_exec(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        host = self.host
        assert host is not None
        if isinstance(msg, Fill):
            host.on_fill(msg)
        elif isinstance(msg, OrderUpdate):
            host.on_order_update(msg)
        elif isinstance(msg, AccountUpdate):
            host.on_account(msg)

    def _on_orders(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, OrderReject):
            assert self.host is not None
            self.host.on_reject(msg)
        elif isinstance(msg, OrdersError):
            self.log.error("exchange error reply", code=msg.code, text=msg.text)
        elif isinstance(msg, (OrderAck, CancelReply, QueryReply)):
            self.log.debug("exchange reply", type=type(msg).__name__)

    # --------------------------------------------------------------- control
    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.host is not None
        if cmd == "resume":
            # The exchange published its own resume before it answered (which is
            # when this command was sent): read it, so the reply says "trading".
            self.drain(self.exec, self._on_exec)
        try:
            return {"state": self.host.command(cmd)}
        except Refused as e:
            raise CommandError(str(e)) from None

    def status(self) -> dict[str, Any]:
        return self.host.status() if self.host is not None else {}

    def on_stop(self) -> None:
        if self.host is not None:
            self.host.stop()


if __name__ == "__main__":
    main(StrategyActor)

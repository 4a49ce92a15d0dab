"""The paper-exchange actor: the sockets around actors/exchange_core.py, which holds the
logic (order entry and risk, the fill model, accounting, the ledger; its docstring has
the rules).

Sockets: ROUTER "orders" (requests from strategies/monitors), PUB "exec" (fills on
exec.fill.<SYM>, order updates on exec.order.<SYM>, account on acct.update), SUB
"md" (bars, ticks, quotes, feed status, end-of-data), DEALER "md.ref" (instrument master, asked once in init).
Each request is decoded, handed to the core after the market data already queued (so an
order sent in reaction to bar N is matched from bar N+1 on), and answered; whatever the
core emits is published on "exec".

Backtest mode under the actor kernel (``service.mode = "backtest"``, ``service.kernel =
"actors"``), deterministic and lossless:
- bars are buffered and bar ``f`` is processed only once the strategy has
  reported ``Progress(fseq >= f - 1)`` on the orders socket, so every order it
  sent while handling bar ``f - 1`` is already in the book (one DEALER, FIFO);
- an order that arrives while the strategy's progress is ``g`` was decided on bar
  ``g + 1``: the exchange first processes that bar (it waits for it on md if it is
  still in flight), and the order may fill from bar ``g + 2`` on, never on the bar
  that produced it (the core's ``decision_bar``);
- after processing, the exchange reports its own Progress to market-data,
  which keeps at most a window of bars in flight (no PUB drop, ever);
- after EndOfData and the last bar: orders expire as at end of data, then
  fills.csv, trades.csv, equity.csv (one row per timestamp), summary.json and
  report.png are written and ``Finished`` goes to the supervisor.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

import msgspec
import zmq

from actors.base import Actor, CommandError, Role, main
from actors import market_rules
from actors.exchange_core import ExchangeCore, Refused
from actors.ledger import Ledger
from bus.codec import ProtocolError
from bus.faults import disk_error
from bus.messages import (
    AccountUpdate, Bar, BarBatch, CancelAll, CancelOrder, EndOfData, FeedStatus, Fill, Finished, Flatten, Instrument,
    InstrumentsReply, InstrumentsRequest, MdError, OrdersError, OrderUpdate, Progress, Query, Quote, SubmitOrder, Tick,
)
from bus.sockets import Port, Received, topic_for

MARK_PUBLISH_S = 0.25  # account updates for mark changes at most this often
INSTRUMENTS_TIMEOUT_S = 5.0
CATCH_UP_S = 5.0  # backtest: longest wait for the bar an order was decided on (it is already published)
TOPIC_ACCT = topic_for("acct.update")


def open_ledger(run_dir: str, run_id: str, cfg: Any) -> Ledger:
    """The run directory's ledger, this run recorded in it. A backtest runs in a directory
    of its own (actors/rundir.py), so its ledger is new; a ledger of the other mode is
    refused (LedgerModeError), never deleted."""
    ledger = Ledger(os.path.join(run_dir, "ledger.sqlite"))
    ledger.start_run(run_id, msgspec.json.encode(cfg).decode(), cfg.exchange.initial_cash, mode=cfg.service.mode)
    return ledger


class PaperExchange(Actor):
    name = "paper-exchange"
    roles = frozenset({Role.EXCHANGE, Role.BACKTEST_FLOW})
    commands = {
        "pause": "stop taking new orders (kept in the ledger: a restart stays paused)",
        "resume": "take orders again; refused while halted",
        "halt": "kill switch: cancel every open order and reject new ones",
        "unhalt": "lift the kill switch; trading stays paused until resume",
        "flatten": "close every position (symbol=SYM: that one) with market orders",
        "stop-and-close": "pause, then flatten",
        "cancel-all": "cancel every open order but the flatten orders (reason=TEXT)",
    }

    # ------------------------------------------------------------------ init
    def init(self) -> dict[str, Any]:
        # Stable identity: market-data's backtest flow control keys Progress by it.
        ref = self.ref = self.open("md.ref", bind=False, identity=self.name)
        rcv = self.request(ref, InstrumentsRequest(), INSTRUMENTS_TIMEOUT_S, expect=(InstrumentsReply, MdError))
        if isinstance(rcv.msg, MdError):
            raise RuntimeError(f"market-data refused the instrument list: {rcv.msg.code}: {rcv.msg.text}")
        instruments: list[Instrument] = rcv.msg.instruments

        self.backtest = self.cfg.service.mode == "backtest"
        self.ledger = open_ledger(self.run_dir, self.run_id, self.cfg)
        # Live on a feed whose time is the wall clock (not a replay of market time), like
        # the order times: a fill then never comes before its order.
        wall_clock = not self.backtest and self.cfg.market_data.feed != "replay"
        self.core = ExchangeCore(self.cfg.exchange, instruments, self.ledger, out_dir=self.run_dir, emit=self._publish,
                                 log=self.log, backtest=self.backtest, wall_clock=wall_clock)
        # Trading hours and option expiry ([session], options in the master): off without them.
        market_rules.attach(self.core, self.cfg, instruments)
        if self.core._timed and wall_clock:  # square-off and expiry on time even when no data flows
            self.every(1.0, self._market_clock)

        # Backtest flow control (see the module docstring).
        self.gate = 0  # strategy progress: every order from bars <= gate is in
        self.done_fseq = 0  # last bar processed
        self.pending: deque[Bar] = deque()
        self.eod: EndOfData | None = None
        self.finished = False
        self.core.decision_bar = self.gate + 1

        self.orders_port = self.open("orders", bind=True, handler=self._on_request)
        self.exec = self.open("exec", bind=True)
        self.md = self.open("md", bind=False, handler=self._on_md, subscribe=[b"md."])
        self.every(MARK_PUBLISH_S, self.core.publish_marks)
        self.every(max(self.cfg.exchange.export_every_ms, 50) / 1000.0, self.core.maybe_export)
        c = self.core
        self.log.info("rebuilt from ledger", orders=c.n_orders, fills=c.acct.n_fills, open_orders=c.n_open,
                      paused=c.paused, halted=c.halted, equity=round(c.acct.equity, 2))
        return {"instruments": len(c.instruments), **self.status()}

    # -------------------------------------------------------------- publishing
    def _market_clock(self) -> None:
        self.core.market_time(time.time_ns())
        if self.core.session is not None:
            self.core.session_clock()

    def _publish(self, msg: Any) -> None:
        """Everything the core emits goes out on exec, on the topic of its kind and symbol."""
        if isinstance(msg, Fill):
            self.exec.send(msg, topic=b"exec.fill." + msg.symbol.encode())
        elif isinstance(msg, OrderUpdate):
            self.exec.send(msg, topic=b"exec.order." + msg.order.symbol.encode())
        elif isinstance(msg, AccountUpdate):
            self.exec.send(msg, topic=TOPIC_ACCT)
        else:  # the core emits nothing else; a new kind must be routed here first
            raise TypeError(f"exchange core emitted {type(msg).__name__}")

    # -------------------------------------------------------------- requests
    def _reply(self, rcv: Received, msg: Any) -> None:
        self.orders_port.send(msg, to=rcv.ident, delim=rcv.delim)

    def on_bad_message(self, port: Port, err: ProtocolError) -> None:
        self._log_bad(port, err)
        if port is self.orders_port and err.ident is not None:
            self.orders_port.send(OrdersError(code="bad-request", text=str(err)[:4000]), to=err.ident,
                                  delim=err.delim)

    def _on_request(self, port: Port, rcv: Received) -> None:
        self._drain_md()
        m = rcv.msg
        core = self.core
        if isinstance(m, Progress):
            # One-way, no reply: the strategy's bar progress gates backtest bars.
            if m.fseq > self.gate:
                self.gate = m.fseq
                if self.backtest:
                    self._advance()
            return
        if self.backtest and isinstance(m, (SubmitOrder, Flatten)):
            self._catch_up()
        if isinstance(m, SubmitOrder):
            self._reply(rcv, core.submit(m))
            core.settle()  # after the ack: the client sees its order id before a fill at the close
        elif isinstance(m, CancelOrder):
            self._reply(rcv, core.cancel(m.cl_id))
        elif isinstance(m, CancelAll):
            self._reply(rcv, core.cancel_all(m.symbol))
        elif isinstance(m, Flatten):
            self._reply(rcv, core.flatten(m.symbol))
        elif isinstance(m, Query):
            self._reply(rcv, core.query(m.what))
        else:
            self._reply(rcv, OrdersError(code="bad-request", text=f"{type(m).__name__} is not a request"))

    # ------------------------------------------------------------ market data
    def _drain_md(self) -> None:
        """Process market data already queued, so orders see the latest prices first."""
        sock = self.md.sock
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # no poll syscall when idle
            try:
                rcv = self.md.recv(zmq.NOBLOCK)
            except ProtocolError as e:
                self.on_bad_message(self.md, e)
                continue
            except zmq.Again:
                return
            self._on_md(self.md, rcv)

    def _catch_up(self) -> None:
        """Backtest: an order from the strategy was decided on bar gate + 1; process that bar
        first (it was published before the strategy saw it, so it is on its way), so the
        order meets the prices of its own bar whatever the sockets' timing."""
        want = self.gate + 1
        deadline = time.monotonic() + CATCH_UP_S
        while self.gate and self.done_fseq < want and (self.eod is None or self.done_fseq < self.eod.last_fseq):
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.warning("bar of an order not received; order taken as is", want=want, done=self.done_fseq)
                return
            if self.md.sock.poll(int(left * 1000) + 1):
                self._drain_md()

    def _on_md(self, port: Port, rcv: Received) -> None:
        m = rcv.msg
        core = self.core
        if self.backtest:
            if isinstance(m, BarBatch):
                self.pending.extend(m.bars)
            elif isinstance(m, Bar):
                self.pending.append(m)
            elif isinstance(m, EndOfData):
                self.eod = m
            else:
                return
            self._advance()
            return
        if isinstance(m, Bar):
            core.on_bar(m)
        elif isinstance(m, Tick):
            core.on_tick(m)
        elif isinstance(m, Quote):
            core.on_quote(m)
        elif isinstance(m, FeedStatus):
            core.on_feed_status(m)
        elif isinstance(m, BarBatch):
            for b in m.bars:
                core.on_bar(b)
        elif isinstance(m, EndOfData):
            core.end_of_data(m)

    def _advance(self) -> None:
        """Backtest: process every buffered bar the strategy's progress allows."""
        pending, gate1 = self.pending, self.gate + 1
        core = self.core
        core.decision_bar = gate1  # what an order arriving now was decided on
        done = self.done_fseq
        ready = []
        while pending and pending[0].fseq <= gate1:
            ready.append(pending.popleft())
        if ready:
            core.on_bars(ready)  # one mark per symbol and batch where no order is open
            done = ready[-1].fseq
        if done != self.done_fseq:
            self.done_fseq = done
            self.ref.send(Progress(fseq=done), flags=zmq.NOBLOCK)
        if self.eod is not None and not pending and not self.finished and done >= self.eod.last_fseq:
            self._finish()

    def _finish(self) -> None:
        """Backtest complete: close out as at end of data, then write the results.

        The results (report.png especially) take seconds on a long run, so they
        are written on a worker thread while this loop keeps heartbeating; the
        Finished message goes out from the loop once the thread is done.
        """
        self.finished = True
        assert self.eod is not None
        self.core.end_of_data(self.eod)
        self._results: dict[str, Any] = {}
        self._results_thread = threading.Thread(target=self._write_results, daemon=True)
        self._results_thread.start()
        self.every(0.05, self._results_done)

    def _write_results(self) -> None:
        text, summary = "no bars", {}
        try:
            skipped = self.eod.rows_skipped if self.eod is not None else 0
            text, summary = self.core.write_results(title=f"paperbus backtest {self.run_id}", rows_skipped=skipped)
        except Exception as e:  # reported by the loop: the run must not hang on it
            self._results["error"] = f"{type(e).__name__}: {e}"
            self._results["disk"] = disk_error(e)
        self._results.update(text=text, summary=summary, fills=self.core.acct.n_fills)

    def _results_done(self) -> None:
        if self._results_thread.is_alive() or not self._results or self._results.get("sent"):
            return
        r = self._results
        r["sent"] = True
        if r.get("disk") is not None:
            raise r["disk"]  # a full or read-only disk: EXIT_DISK, not a plain crash
        if "error" in r:
            raise RuntimeError(f"writing backtest results failed: {r['error']}")
        self.log.info("backtest finished", bars=r["summary"].get("bars", 0), fills=r["fills"],
                      final_equity=round(self.core.acct.equity, 2))
        self.lifecycle.send(Finished(text=r["text"][:16000], summary=r["summary"]), flags=zmq.NOBLOCK)

    # --------------------------------------------------------------- control
    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.core.command(cmd, args)
        except Refused as e:
            raise CommandError(str(e)) from None

    def status(self) -> dict[str, Any]:
        return self.core.status()

    def on_stop(self) -> None:
        self.core.close()  # a disk error here ends the actor with EXIT_DISK (Actor.serve)


if __name__ == "__main__":
    main(PaperExchange)

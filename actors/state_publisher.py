"""state-publisher: the one authoritative view, served with the zguide Clone pattern.

Inputs: fills, order and account updates (exchange ``exec`` PUB), prices (``md``
PUB), actor state changes (supervisor ``events`` PUB); at start the instrument
master (``md.ref``) and the exchange's positions/orders/account (``orders`` Query).

Outputs:
- ``state`` PUB: every change of the view is ``Delta(state_seq, key, value)`` on
  ``state.delta``, state_seq +1 per delta; ``StateHeartbeat(state_seq)`` on
  ``state.hb`` when nothing was sent for ``state.heartbeat_ms``. Sends never
  block: a PUB drops for a subscriber whose queue is full, and that client sees
  the gap in state_seq and resyncs.
- ``state.snap`` ROUTER: ``SnapshotRequest`` -> ``Snapshot(state_seq, state)``
  where state_seq is the last delta the snapshot includes.
- ``<run-dir>/status.json``: the view, replaced atomically on change, at most
  every ``state.status_every_ms``.

Price updates arrive at market-data rates; the position/account/performance
deltas they cause are coalesced and published at most every ``COALESCE_S``.
Everything else is published once per poll round (a batch of messages).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import msgspec
import zmq

from actors.base import Actor, main
from actors import market_rules
from actors.state_view import KEYS, StateView
from bus.codec import ProtocolError
from bus.faults import disk_error
from bus.fileio import atomic_write
from bus.messages import (
    AccountUpdate, ActorEvent, Bar, BarBatch, Delta, EndOfData, FeedStatus, Fill, InstrumentsReply, InstrumentsRequest,
    OrderUpdate, Query, QueryReply, Snapshot, SnapshotRequest, StateError, StateHeartbeat, Tick,
)
from bus.sockets import Port, Received, topic_for

COALESCE_S = 0.1
STATUS_NAME = "status.json"
TOPIC_DELTA = topic_for("state.delta")
TOPIC_HB = topic_for("state.hb")
_json = msgspec.json.Encoder()


def write_status(path: str, state: dict[str, Any], state_seq: int) -> None:
    """status.json = the view plus the state_seq it reflects, replaced atomically."""
    now = time.time_ns()
    doc = {"state_seq": state_seq, "written_ns": now,
           "written_at": dt.datetime.fromtimestamp(now / 1e9, dt.timezone.utc).isoformat(timespec="milliseconds"),
           **state}
    atomic_write(path, _json.encode(doc) + b"\n", mode=0o600)


class StatePublisher(Actor):
    name = "state-publisher"

    def init(self) -> dict[str, Any]:
        scfg = self.cfg.state
        self.hb_state_s = scfg.heartbeat_ms / 1000.0
        self.status_every_s = scfg.status_every_ms / 1000.0
        self.status_path = os.path.join(self.run_dir, STATUS_NAME)
        self.view = StateView(self.run_id, scfg.last_trades, publisher={
            "name": self.name, "pid": os.getpid(), "heartbeat_ms": scfg.heartbeat_ms,
            "started_ns": time.time_ns()})
        # greeks and session (actors/market_rules.ViewMarket); live on the synthetic feed the
        # session runs on the wall clock, so _tick looks at it even when no data flows.
        self.wall_session = self.cfg.session is not None and self.cfg.market_data.feed != "replay"
        self.view.attach_market(market_rules.ViewMarket(self.cfg, wall_clock=self.wall_session))
        self.seq = 0
        self._published: dict[str, bytes] = {}  # key -> encoded value last published (drops no-op deltas)
        self._dirty: set[str] = set()  # published at the end of this poll round
        self._coalesced: set[str] = set()  # caused by prices: published at most every COALESCE_S
        self._last_send = time.monotonic()
        self._last_coalesce = 0.0
        self._status_dirty = True
        self._status_last = 0.0
        self._stats = {"snapshots": 0, "bad_requests": 0, "client_resyncs": 0, "client_missed": 0}
        timeout = min(5.0, self.cfg.actors[self.name].start_timeout / 2) if self.name in self.cfg.actors else 5.0

        # Bound first: every change from here on, including the initial ones, is a delta.
        self.pub = self.open("state", bind=True, sndhwm=scfg.pub_hwm)
        self.snap = self.open("state.snap", bind=True, handler=self._on_snap)
        self._publish(set(KEYS))

        # Subscribe before querying so no update after the query's answer is missed.
        self.exec = self.open("exec", bind=False, subscribe=[b"exec.", b"acct."], handler=self._on_exec)
        self.md = self.open("md", bind=False, subscribe=[b"md."], handler=self._on_md)
        self.events = self.open("events", bind=False, subscribe=[b"events."], handler=self._on_events)

        self.ref = self.open("md.ref", bind=False, identity=self.name, handler=self._on_ref)
        try:
            rep = self.request(self.ref, InstrumentsRequest(), timeout, expect=(InstrumentsReply,))
        except TimeoutError:
            raise RuntimeError(f"market-data did not answer the instruments request on md.ref within {timeout:g}s")
        self._changed(self.view.set_instruments(rep.msg))

        self.orders_port = self.open("orders", bind=False, identity=self.name, handler=self._on_orders)
        try:
            rep = self.request(self.orders_port, Query(what="all"), timeout, expect=(QueryReply,))
        except TimeoutError:
            raise RuntimeError(f"paper-exchange did not answer the query on orders within {timeout:g}s")
        self.drain(self.exec, self._on_exec)  # what was already queued predates the reply
        self._changed(self.view.apply(rep.msg))

        tick = max(0.01, min(COALESCE_S, self.status_every_s or COALESCE_S, self.hb_state_s / 2))
        self.every(tick, self._tick)
        self._write_status(time.monotonic())
        inst = self.view.instruments
        return {"instruments": inst["count"], "option_mappings": inst["option_mappings"],
                "positions": len(self.view.pos), "open_orders": len(self.view.orders)}

    # ---------------------------------------------------------------- inputs
    def _changed(self, keys: set[str], coalesce: bool = False) -> None:
        if not keys:
            return
        if coalesce:
            self._coalesced |= keys
        else:
            self._dirty |= keys
        if not self.running:
            # Before RUN the timers and work() are idle; the rare events then
            # (actor state changes) are published right away.
            self._publish(self._dirty | self._coalesced)
            self._dirty.clear()
            self._coalesced.clear()
            self._maybe_write_status(time.monotonic())

    def _on_exec(self, _port: Port, rcv: Received) -> None:
        if isinstance(rcv.msg, (Fill, OrderUpdate, AccountUpdate)):
            self._changed(self.view.apply(rcv.msg, rcv.env.ts))

    def _on_md(self, _port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, (Bar, Tick, BarBatch)):
            self._changed(self.view.apply(msg, rcv.env.ts), coalesce=True)
        elif isinstance(msg, (EndOfData, FeedStatus)):
            self._changed(self.view.apply(msg, rcv.env.ts))

    def _on_events(self, _port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if isinstance(msg, ActorEvent):
            prev = self.view.actors.get(msg.actor, {}).get("state")
            self._changed(self.view.apply(msg, rcv.env.ts))
            if msg.state == "running" and prev not in (None, "running") and msg.restarts > 0:
                # A restarted producer rebuilt its state: ask again rather than trust what we had.
                if msg.actor == "paper-exchange":
                    self.orders_port.send(Query(what="all"), flags=zmq.NOBLOCK)
                elif msg.actor == "market-data":
                    self.ref.send(InstrumentsRequest(), flags=zmq.NOBLOCK)

    def _on_orders(self, _port: Port, rcv: Received) -> None:
        if isinstance(rcv.msg, QueryReply):
            self._changed(self.view.apply(rcv.msg))

    def _on_ref(self, _port: Port, rcv: Received) -> None:
        if isinstance(rcv.msg, InstrumentsReply):
            self._changed(self.view.set_instruments(rcv.msg))

    def _on_snap(self, port: Port, rcv: Received) -> None:
        msg = rcv.msg
        if not isinstance(msg, SnapshotRequest):
            self._stats["bad_requests"] += 1
            port.send(StateError(code="unexpected-type", text=f"state.snap takes snapshot-request, got "
                                 f"{type(msg).__name__}"), to=rcv.ident, delim=rcv.delim, flags=zmq.NOBLOCK)
            return
        self._stats["snapshots"] += 1
        if msg.reason in ("gap", "restart") or msg.missed:
            self._stats["client_resyncs"] += 1
            self._stats["client_missed"] += msg.missed
        self._update_counters()
        # Publish everything pending first, so the snapshot is exactly the state at self.seq.
        self._publish(self._dirty | self._coalesced)
        self._dirty.clear()
        self._coalesced.clear()
        port.send(Snapshot(state_seq=self.seq, state=self._snapshot_raw()), to=rcv.ident, delim=rcv.delim,
                  flags=zmq.NOBLOCK)

    def on_bad_message(self, port: Port, err: ProtocolError) -> None:
        super().on_bad_message(port, err)
        if port is getattr(self, "snap", None) and err.ident is not None:
            self._stats["bad_requests"] += 1
            port.send(StateError(code="bad-request", text=str(err)[:4000]), to=err.ident, delim=err.delim,
                      flags=zmq.NOBLOCK)

    # --------------------------------------------------------------- outputs
    def _snapshot_raw(self) -> dict[str, Any]:
        return {k: msgspec.Raw(self._published[k]) for k in KEYS}

    def _publish(self, keys: set[str]) -> None:
        for key in sorted(keys):
            enc = msgspec.msgpack.encode(self.view.value(key))
            if self._published.get(key) == enc:
                continue
            self._published[key] = enc
            self.seq += 1
            self.pub.send(Delta(state_seq=self.seq, key=key, value=msgspec.Raw(enc)), topic=TOPIC_DELTA,
                          flags=zmq.NOBLOCK)
            self._last_send = time.monotonic()
            self._status_dirty = True

    def _update_counters(self) -> None:
        bad = {p.name: p.stats["bad"] for p in self._ports if p.stats["bad"]}
        self._coalesced |= self.view.set_counters({
            **self._stats, "bad_messages": bad,
            "send_failed": self.pub.stats["dropped"] + self.snap.stats["dropped"],
            "unroutable": self.snap.stats["unroutable"]})

    def work(self) -> bool:
        if self._dirty:
            self._publish(self._dirty)
            self._dirty.clear()
        return False

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_coalesce >= COALESCE_S:
            self._last_coalesce = now
            self._update_counters()
            if self.wall_session:
                self._coalesced.add("session")
            if self._coalesced:
                self._publish(self._coalesced)
                self._coalesced.clear()
        if now - self._last_send >= self.hb_state_s:
            self.pub.send(StateHeartbeat(state_seq=self.seq), topic=TOPIC_HB, flags=zmq.NOBLOCK)
            self._last_send = now
        self._maybe_write_status(now)

    def _maybe_write_status(self, now: float) -> None:
        if self._status_dirty and now - self._status_last >= self.status_every_s:
            self._write_status(now)

    def _write_status(self, now: float) -> None:
        try:
            write_status(self.status_path, {k: msgspec.msgpack.decode(self._published[k]) for k in KEYS}, self.seq)
        except OSError as e:
            if disk_error(e) is not None:
                # The run directory is full or read-only: the system stops in order
                # (Actor._disk_exit, EXIT_DISK) rather than run on with nothing recorded.
                raise
            self.log.error("cannot write status.json", error=str(e), path=self.status_path)
        self._status_dirty = False
        self._status_last = now

    def status(self) -> dict[str, Any]:
        return {"state_seq": self.seq, "snapshots": self._stats["snapshots"],
                "client_missed": self._stats["client_missed"]}

    def on_stop(self) -> None:
        self._update_counters()
        self._publish(self._dirty | self._coalesced)
        self._write_status(time.monotonic())


if __name__ == "__main__":
    main(StatePublisher)

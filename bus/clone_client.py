"""Client side of the state stream (zguide Clone pattern), used by monitors and tests.

    c = CloneClient(run_dir)
    while True:
        if c.step(0.25):          # True when the state changed
            show(c.state, c.seq)
        if c.stale: ...           # keep showing c.state, marked stale for c.age seconds

The algorithm: subscribe to ``state`` first, then ask ``state.snap`` for a
snapshot; deltas queued meanwhile with state_seq <= the snapshot's are dropped,
the rest applied in order. A delta that is not last+1, a heartbeat ahead of
us, or a message from another publisher process (a restarted state-publisher
starts again at 1) means we lost something: fetch a new snapshot. No message
for more than ``stale_heartbeats`` heartbeat periods means the publisher is
gone or we are cut off: the state is kept but marked stale, and the client
reconnects (endpoints re-read from <run-dir>/endpoints.json) by itself.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import zmq

from bus.codec import ProtocolError, Stamper
from bus.messages import Delta, Snapshot, SnapshotRequest, StateError, StateHeartbeat
from bus.liveness import RunGap
from bus.sockets import Endpoints, Port, open_port

DEFAULT_HB_S = 1.0  # until the first snapshot tells us the publisher's heartbeat period
RETRY_S = 0.5  # pause between reconnect attempts when nothing answers
PAUSED_S = 1.0  # this long between two looks at the socket: we were not running (SIGSTOP, suspend)


class CloneClient:
    def __init__(self, run_dir: str, *, name: str = "monitor", request_timeout: float = 2.0,
                 stale_heartbeats: int = 3, rcvhwm: int | None = None,
                 drop: Callable[[Delta], bool] | None = None, client_key: str | None = None):
        """``rcvhwm``: SUB queue limit (default from bus.sockets.SPECS).
        ``drop``: fault injection for tests; a delta it returns True for is treated as lost.
        ``client_key``: tcp: client secret certificate (default: the one in endpoints.json)."""
        self.rcvhwm = rcvhwm
        self.client_key = client_key
        self.run_dir = os.path.abspath(run_dir)
        self.request_timeout = request_timeout
        self.stale_heartbeats = stale_heartbeats
        self.drop = drop
        self.ctx = zmq.Context()
        self.stamper = Stamper(name, run="")
        self.sub: Port | None = None
        self.snap: Port | None = None
        self.state: dict[str, Any] | None = None  # last good state; kept while stale
        self.seq = 0  # state_seq the state reflects
        self.publisher: tuple[str, int] | None = None  # (src, pid) of the process the state came from
        self.last_msg: float | None = None  # monotonic time of the last message from the publisher
        self.last_hb_seq = -1  # state_seq of the last heartbeat (tests use it to know the stream is idle)
        self.last_ts = 0  # publisher's send time (envelope ts, ns) of the last snapshot or delta applied
        self.error = ""  # why we are not connected, for display
        self.stats = {"snapshots": 0, "resyncs": 0, "gaps": 0, "missed": 0, "reconnects": 0, "bad": 0,
                      "deltas": 0}
        self._req_deadline: float | None = None  # a snapshot request is outstanding until then
        self._need: tuple[str, int] | None = ("join", 0)  # snapshot wanted: (reason, deltas missed)
        self._next_connect = 0.0
        self._gap = RunGap(PAUSED_S)  # between two looks at the socket
        self._woke = 0.0  # when we last found we had not been running

    # ------------------------------------------------------------- properties
    @property
    def hb_s(self) -> float:
        try:
            return float(self.state["publisher"]["heartbeat_ms"]) / 1000.0  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return DEFAULT_HB_S

    @property
    def age(self) -> float | None:
        """Seconds since the last message from the publisher (None: never heard from it)."""
        return None if self.last_msg is None else time.monotonic() - self.last_msg

    @property
    def stale(self) -> bool:
        age = self.age
        return self.state is None or age is None or age > self.stale_heartbeats * self.hb_s

    @property
    def connected(self) -> bool:
        return self.sub is not None

    # ------------------------------------------------------------ connection
    def _open(self) -> None:
        eps = Endpoints.from_run_dir(self.run_dir, client_key=self.client_key)
        self.sub = open_port(self.ctx, eps, "state", bind=False, stamper=self.stamper,
                             subscribe=[b"state."], rcvhwm=self.rcvhwm)
        self.snap = open_port(self.ctx, eps, "state.snap", bind=False, stamper=self.stamper)

    def _close(self) -> None:
        for p in (self.sub, self.snap):
            if p is not None:
                p.close()
        self.sub = self.snap = None
        self._req_deadline = None

    def close(self) -> None:
        self._close()
        self.ctx.term()

    def __enter__(self) -> "CloneClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _reconnect(self, why: str) -> None:
        self.error = why
        self._close()
        self.stats["reconnects"] += 1
        self._next_connect = time.monotonic() + RETRY_S
        if self._need is None:
            self._need = ("stale", 0)

    def _resync(self, reason: str, missed: int = 0) -> None:
        self.stats["resyncs"] += 1
        if reason == "gap":
            self.stats["gaps"] += 1
            self.stats["missed"] += missed
        self._need = (reason, missed)

    # ------------------------------------------------------------------ loop
    def _look(self) -> float:
        """monotonic now; a long time since the last look means we were not running.

        So callers step() at least every PAUSED_S (monitor.py does, every 0.25 s):
        one that steps more rarely looks freshly woken at every step, and
        publisher silence shorter than one step is then never judged.
        """
        now = time.monotonic()
        if self._gap.gap(now):
            self._woke = now
        return now

    def step(self, timeout: float) -> bool:
        """Handle the stream for up to ``timeout`` seconds; True if the state changed."""
        deadline = time.monotonic() + timeout
        changed = False
        while True:
            now = self._look()
            if self.sub is None and now >= self._next_connect:
                try:
                    self._open()
                    self.error = ""
                except (OSError, ValueError, zmq.ZMQError) as e:
                    self.error = f"cannot connect: {e}"
                    self._next_connect = now + RETRY_S
            if self.sub is not None:
                if self._req_deadline is not None and now > self._req_deadline:
                    self._reconnect(f"no snapshot reply within {self.request_timeout:g}s")
                    continue
                if self._req_deadline is None and self._need is not None:
                    reason, missed = self._need
                    assert self.snap is not None
                    self.snap.send(SnapshotRequest(reason=reason, missed=missed))
                    self._req_deadline = now + self.request_timeout
            left = deadline - now
            if left <= 0:
                return changed
            if self.sub is None:
                time.sleep(min(left, max(0.0, self._next_connect - now)) + 0.001)
                continue
            wait = min(left, 0.1)
            if self._req_deadline is not None:
                # While a snapshot is outstanding the SUB queue is left alone: it
                # holds the deltas that come after the snapshot.
                assert self.snap is not None
                if self.snap.sock.poll(int(wait * 1000) + 1):
                    changed |= self._on_snap_reply()
            elif self.sub.sock.poll(int(wait * 1000) + 1):
                changed |= self._drain_sub()
            elif self.stale and self.state is not None and self._look() - self._woke >= self.hb_s:
                # Judged only after finding the queue empty, and not within a
                # heartbeat period of our own pause (looked at after the poll: the
                # stop may have hit inside it): a SIGSTOP stops zmq's I/O thread
                # too, so right after it the queue looks empty while the kernel
                # still holds what was sent meanwhile. A client that was itself
                # paused first reads what is queued (and finds its gap).
                self._reconnect(f"no message for {self.age:.1f}s")

    def _on_snap_reply(self) -> bool:
        assert self.snap is not None
        try:
            rcv = self.snap.recv(zmq.NOBLOCK)
        except zmq.Again:
            return False
        except ProtocolError as e:
            self.stats["bad"] += 1
            self.error = f"bad snapshot reply: {e}"
            return False
        msg = rcv.msg
        if isinstance(msg, StateError):
            self.error = f"snapshot refused: {msg.code}: {msg.text}"
            return False
        if not isinstance(msg, Snapshot):
            return False
        self.state = dict(msg.state)
        self.seq = msg.state_seq
        self.last_ts = rcv.env.ts
        self.publisher = (rcv.env.src, rcv.env.pid)
        self.last_msg = time.monotonic()
        self.stats["snapshots"] += 1
        self._req_deadline = None
        self._need = None
        self.error = ""
        return True

    def _drain_sub(self) -> bool:
        assert self.sub is not None
        changed = False
        for _ in range(10_000):
            try:
                rcv = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ProtocolError:
                self.stats["bad"] += 1
                continue
            if (rcv.env.src, rcv.env.pid) != self.publisher:
                self._resync("restart")  # a new publisher process: its seq started again
                break
            self.last_msg = time.monotonic()
            msg = rcv.msg
            if isinstance(msg, Delta):
                if msg.state_seq <= self.seq:
                    continue  # already in the snapshot
                if self.drop is not None and self.drop(msg):
                    continue
                if msg.state_seq != self.seq + 1:
                    self._resync("gap", msg.state_seq - self.seq - 1)
                    break
                assert self.state is not None
                self.state[msg.key] = msg.value
                self.seq = msg.state_seq
                self.last_ts = rcv.env.ts
                self.stats["deltas"] += 1
                changed = True
            elif isinstance(msg, StateHeartbeat):
                self.last_hb_seq = msg.state_seq
                if msg.state_seq > self.seq:  # older ones were queued before our snapshot
                    self._resync("gap", msg.state_seq - self.seq)
                    break
        return changed

    def wait_synced(self, timeout: float) -> bool:
        """Block until a first snapshot arrived (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while self.state is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.step(min(left, 0.1))
        return True

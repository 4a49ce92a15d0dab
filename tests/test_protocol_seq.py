"""Envelope ``seq``: every PUB stream counts on its own, so a gap means a loss.

docs/PROTOCOL.md promises that a subscriber of a whole stream that sees ``seq``
jump from n to m > n + 1 (same sender pid) lost exactly m - n - 1 messages. That
holds only if nothing else the process sends (replies on its ROUTER, heartbeats
on its lifecycle DEALER) consumes the stream's numbers: bus.sockets.open_port
gives every socket its own counter.
"""

from __future__ import annotations

import signal
import time

import pytest
import zmq

from bus.codec import Stamper
from bus.messages import (
    CtlRequest, Delta, HistoryRequest, InstrumentsRequest, Query, Snapshot, SnapshotRequest,
)
from bus.sockets import Endpoints, open_port
from tests.sup_util import start_supervisor

DEFAULT = "config/default.toml"
FAST = ["market_data.rate_hz=50", "strategy.params={ fast = 2, slow = 4, qty = 10 }"]


def gaps(seqs: list[int]) -> list[tuple[int, int]]:
    """(after, before) for every jump in a stream's seq; asserts the stream never goes back."""
    out = []
    for a, b in zip(seqs, seqs[1:]):
        assert b > a, f"seq went from {a} to {b}"
        if b != a + 1:
            out.append((a, b))
    return out


def recv_until(port, pred, timeout: float, into: list):
    """Receive on ``port`` into ``into`` until ``pred(into)``; a deadline, never a sleep."""
    deadline = time.monotonic() + timeout
    while not pred(into):
        left = deadline - time.monotonic()
        assert left > 0, f"{port.name}: timed out after {timeout}s with {len(into)} messages"
        if port.sock.poll(int(left * 1000) + 1):
            into.append(port.recv())


def test_a_gap_appears_exactly_where_a_slow_subscriber_lost_messages(run_dir):
    """One process publishes on a PUB and answers requests on a ROUTER of the same
    channel (as the state-publisher does). A subscriber that keeps up sees seq
    1..N with no gap although replies went out in between; a subscriber that stops
    reading past the high-water mark sees gaps, and the seqs missing from its
    stream are exactly the messages it did not receive."""
    eps = Endpoints(run_dir)
    ctx = zmq.Context()
    actor = Stamper("state-publisher", "r1")
    try:
        pub = open_port(ctx, eps, "state", bind=True, stamper=actor, sndhwm=1000)
        snap = open_port(ctx, eps, "state.snap", bind=True, stamper=actor)
        client = Stamper("client", "")
        fast = open_port(ctx, eps, "state", bind=False, stamper=client, subscribe=[b""], rcvhwm=1000)
        slow = open_port(ctx, eps, "state", bind=False, stamper=client, subscribe=[b""], rcvhwm=10)
        dealer = open_port(ctx, eps, "state.snap", bind=False, stamper=client)

        # Both subscriptions have reached the PUB once a probe gets through to each.
        probe = 0
        seen_fast, seen_slow = [], []
        while not (seen_fast and seen_slow):
            probe += 1
            assert probe < 500, "subscribers never joined"
            pub.send(Delta(state_seq=probe, key="probe", value=None), topic=b"state.delta", flags=zmq.NOBLOCK)
            for port, seen in ((fast, seen_fast), (slow, seen_slow)):
                if port.sock.poll(10):
                    seen.append(port.recv())
        for port, seen in ((fast, seen_fast), (slow, seen_slow)):
            while port.sock.poll(0):
                seen.append(port.recv())

        # Each message carries its publish index in the body (state_seq), independent of the envelope.
        body = "x" * 1000
        n, block, replies = probe, 50, []
        for _ in range(100):
            for _ in range(block):
                n += 1
                pub.send(Delta(state_seq=n, key="k", value=body), topic=b"state.delta", flags=zmq.NOBLOCK)
            recv_until(fast, lambda got: got[-1].msg.state_seq == n, 10, seen_fast)
            # A request answered on the ROUTER between blocks, from the same process.
            dealer.send(SnapshotRequest(reason="join"))
            req = snap.recv() if snap.sock.poll(5000) else pytest.fail("no request reached the ROUTER")
            snap.send(Snapshot(state_seq=n, state={}), to=req.ident)
            want = len(replies) + 1
            recv_until(dealer, lambda got: len(got) == want, 5, replies)
        # The slow subscriber reads what it kept, then gets a tail once there is room again.
        tail = n
        got_tail = False
        while not got_tail:
            while slow.sock.poll(0):
                seen_slow.append(slow.recv())
            tail += 1
            assert tail < n + 200, "the slow subscriber never got a message again"
            pub.send(Delta(state_seq=tail, key="tail", value=None), topic=b"state.delta", flags=zmq.NOBLOCK)
            recv_until(fast, lambda got: got[-1].msg.state_seq == tail, 10, seen_fast)
            if slow.sock.poll(100):
                seen_slow.append(slow.recv())
                got_tail = seen_slow[-1].msg.state_seq > n

        # Envelope seq of the PUB is the publish index: replies did not consume numbers.
        assert [r.env.seq for r in seen_fast] == [r.msg.state_seq for r in seen_fast]
        assert gaps([r.env.seq for r in seen_fast]) == [] and seen_fast[-1].env.seq == tail
        assert [r.env.seq for r in replies] == list(range(1, 101))  # the ROUTER's own count

        assert [r.env.seq for r in seen_slow] == [r.msg.state_seq for r in seen_slow]
        slow_seqs = [r.env.seq for r in seen_slow]
        holes = {s for a, b in gaps(slow_seqs) for s in range(a + 1, b)}
        lost = {r.msg.state_seq for r in seen_fast} - {r.msg.state_seq for r in seen_slow}
        lost = {s for s in lost if slow_seqs[0] < s < slow_seqs[-1]}
        assert lost, "the slow subscriber lost nothing: the test did not exercise the high-water mark"
        assert holes == lost
    finally:
        ctx.destroy(linger=0)


def test_every_pub_stream_of_the_running_system_is_contiguous(procs, run_dir):
    """The real system, with requests fired at the ROUTERs of the very processes
    whose PUB streams are watched: state, md, events and exec stay gap-free."""
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=FAST, timeout=30)
    eps = Endpoints.from_run_dir(run_dir)
    ctx = zmq.Context()
    me = Stamper("seq-test", "")
    streams = {name: [] for name in ("state", "md", "events", "exec")}
    try:
        subs = {name: open_port(ctx, eps, name, bind=False, stamper=me, subscribe=[b""], rcvhwm=1_000_000)
                for name in streams}
        asks = {
            "control": [CtlRequest(cmd="status")],
            "md.ref": [InstrumentsRequest(), HistoryRequest(symbol="SYN1", n=5)],
            "orders": [Query(what="all")],
            "state.snap": [SnapshotRequest(reason="join")],
        }
        dealers = {name: open_port(ctx, eps, name, bind=False, stamper=me) for name in asks}
        poller = zmq.Poller()
        for port in (*subs.values(), *dealers.values()):
            poller.register(port.sock, zmq.POLLIN)
        answered = {name: 0 for name in asks}
        pending = dict.fromkeys(asks, 0)
        deadline = time.monotonic() + 60

        def enough():
            return (all(n >= 40 for n in answered.values()) and len(streams["events"]) >= 4
                    and len(streams["exec"]) >= 3 and len(streams["md"]) >= 200 and len(streams["state"]) >= 20)

        while not enough():
            assert time.monotonic() < deadline, (
                f"not enough traffic: answered {answered}, streams { {k: len(v) for k, v in streams.items()} }")
            for name, port in dealers.items():
                if pending[name] == 0:  # one request in flight per ROUTER, sent again as soon as answered
                    for m in asks[name]:
                        port.send(m)
                    pending[name] = len(asks[name])
            for sock, _ in poller.poll(200):
                for name, port in subs.items():
                    if port.sock is sock:
                        streams[name].append(port.recv(zmq.NOBLOCK).env)
                for name, port in dealers.items():
                    if port.sock is sock:
                        port.recv(zmq.NOBLOCK)
                        pending[name] -= 1
                        answered[name] += 1
        for name, envs in streams.items():
            by_pid: dict[int, list[int]] = {}
            for e in envs:
                by_pid.setdefault(e.pid, []).append(e.seq)
            for pid, seqs in by_pid.items():
                assert gaps(seqs) == [], f"{name} (pid {pid}): seq jumps {gaps(seqs)[:5]} with no message lost"
    finally:
        ctx.destroy(linger=0)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0

"""Bad bytes against every ROUTER the running system binds: nothing dies, nothing changes.

The whole system runs (real supervisor, four actors); trading is paused so the
ledger must stay exactly as it is. hypothesis then throws garbage, wrong frame
counts, types from other channels and valid types with invalid values at
control, orders, md.ref, state.snap and lifecycle. Each case gets an error reply
or is dropped and counted; afterwards every process is the same one, still
running, and the ledger is unchanged. Below ZeroMQ, raw bytes go straight at
every socket file the system binds (PUB endpoints included), and XSUB peers send
garbage subscription frames to every PUB.

A few hundred cases in ``make test``; the long run sets the count:
    PAPERBUS_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz_sockets.py
"""

import math
import os
import socket
import sqlite3
import subprocess
import time

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from bus.messages import SCHEMA_VERSION
from bus.sockets import Endpoints
from scripts import testkit
from scripts.ctl import request
from tests.harness import Procs, wait_for
from tests.sup_util import field, status

EXAMPLES = int(os.environ.get("PAPERBUS_FUZZ_EXAMPLES", "300"))
pytestmark = pytest.mark.timeout(180 + EXAMPLES // 10)

ROUTERS = ["control", "orders", "md.ref", "state.snap", "lifecycle"]
# Valid requests that legitimately change state are not bad input: leave them out.
SAFE_TYPES = ["submit", "cancel", "query", "ctl", "instruments-request", "history-request", "snapshot-request",
              "bar", "fill", "ready", "heartbeat", "launch-missiles", ""]
CTL_CHANGING = {"pause", "resume", "stop-and-close", "halt", "restart", "shutdown"}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    import shutil
    import tempfile

    run_dir = tempfile.mkdtemp(prefix="pbf-", dir="/tmp")
    procs = Procs()
    ctx = zmq.Context()
    try:
        p = testkit.start_supervisor(run_dir, None, ["market_data.rate_hz=50", "exchange.fill_on=close",
                                                     "strategy.params={ fast = 2, slow = 4, qty = 10 }"],
                                     spawn=procs.spawn, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: field(run_dir, "actors", "paper-exchange", "status", "fills", default=0) >= 1, 30, "a fill")
        assert request(run_dir, "pause", timeout=3).ok
        # paused: no new orders; market orders fill at once, so nothing stays open
        wait_for(lambda: field(run_dir, "actors", "paper-exchange", "status", "open_orders") == 0
                 and field(run_dir, "actors", "strategy", "status", "state") == "paused", 10, "quiet")
        # Taken before any fuzz case: the final test compares against these.
        before = ledger_state(run_dir)
        pids = {n: a["pid"] for n, a in status(run_dir)["actors"].items()}
        yield {"run_dir": run_dir, "proc": p, "ctx": ctx, "eps": Endpoints.from_run_dir(run_dir),
               "before": before, "pids": pids}
    finally:
        # destroy, not term: a failed test may leave fuzz sockets open, and term()
        # would block on them before the supervisor below is stopped.
        _socks.clear()
        ctx.destroy(linger=0)
        for q in procs.popens:  # the supervisor, if it started
            q.send_signal(2)
            try:
                q.wait(20)
            except subprocess.TimeoutExpired:
                pass
        left = procs.cleanup()
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not left, f"left processes: {left}"


def ledger_state(run_dir):
    db = sqlite3.connect(f"file:{os.path.join(run_dir, 'ledger.sqlite')}?mode=ro", uri=True)
    try:
        return (db.execute("select count(*), coalesce(max(fill_id), 0) from fills").fetchone(),
                db.execute("select count(*), coalesce(max(order_id), 0) from orders").fetchone(),
                db.execute("select symbol, qty from positions order by symbol").fetchall())
    finally:
        db.close()


def envelope(msg):
    return msgspec.msgpack.encode({"v": SCHEMA_VERSION, "src": "fuzz", "pid": 1, "run": "", "seq": 1, "ts": 1,
                                   "msg": msg})


values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                   st.sampled_from([math.nan, math.inf, -1, 0, "GOOG", "SYN1", "x" * 5000]))
# "extra" is a field no message has: receivers ignore unknown fields (schema
# evolution), so it makes nothing invalid by itself; the other values do.
bad_msgs = st.fixed_dictionaries(
    {"type": st.sampled_from(SAFE_TYPES)},
    optional={"cl_id": values, "symbol": values, "side": st.sampled_from(["buy", "sell", "hold", 1]),
              "qty": values, "price": values, "order_type": values, "cmd": values, "arg": values, "n": values,
              "what": values, "info": values, "extra": values},
).filter(lambda m: not (m["type"] == "ctl" and m.get("cmd") in CTL_CHANGING))
payloads = st.one_of(
    st.binary(max_size=300).map(lambda b: [b]),  # raw garbage
    st.lists(st.binary(max_size=50), min_size=2, max_size=4),  # wrong frame counts
    bad_msgs.map(lambda m: [envelope(m)]),  # right shape, wrong content
    bad_msgs.map(lambda m: [envelope(m)[:-3]]),  # truncated
    st.integers(min_value=2, max_value=99).map(lambda v: [msgspec.msgpack.encode(
        {"v": v, "src": "f", "pid": 1, "run": "", "seq": 1, "ts": 1, "msg": {"type": "query"}})]),  # wrong version
    st.just([b"\x00" * (2 << 20)]),  # over MAXMSGSIZE: dropped inside libzmq
)

_socks: dict = {}


def sock_for(system, name, kind=zmq.DEALER):
    s = _socks.get((name, kind))
    if s is None:
        s = system["ctx"].socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if kind == zmq.DEALER:
            s.setsockopt(zmq.IDENTITY, f"fuzz-{name}".encode())  # never an actor's identity
        s.connect(system["eps"][name])
        _socks[(name, kind)] = s
    return s


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(name=st.sampled_from(ROUTERS), frames=payloads)
def test_fuzz_routers(system, name, frames):
    s = sock_for(system, name)
    s.send_multipart(frames)
    while s.poll(0):  # replies are errors or nothing; drain without waiting
        s.recv_multipart()


# ZMTP 3 greeting (signature, version 3.0, mechanism NULL): lets garbage reach the frame parser.
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31


def test_fuzz_raw_bytes_at_every_socket_file(system):
    """Bytes below ZeroMQ: every bound ipc endpoint, PUB ones included, meets a raw stream socket."""
    eps = system["eps"].as_dict()
    files = {n: a[len("ipc://"):] for n, a in eps.items() if a.startswith("ipc://")}
    assert set(files) >= {"control", "lifecycle", "events", "md", "md.ref", "orders", "exec", "state", "state.snap"}

    @settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.sampled_from(sorted(files)), greet=st.booleans(), data=st.binary(min_size=1, max_size=2000))
    def case(name, greet, data):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(files[name])
            try:
                s.sendall((GREETING + data) if greet else data)
            except OSError:  # the peer may hang up first: libzmq closes on a bad greeting
                pass

    case()


def test_fuzz_garbage_subscriptions_at_every_pub(system):
    """An XSUB peer can send any frame upstream; a PUB must shrug it off."""
    pubs = ["events", "md", "exec", "state"]

    @settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.sampled_from(pubs), frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    def case(name, frames):
        s = sock_for(system, name, zmq.XSUB)
        s.send_multipart(frames)

    case()


def test_every_router_answers_a_request_with_fields_it_does_not_know(system):
    """A newer peer adds fields (envelope and message): this build ignores them and answers."""
    asks = {"control": ({"type": "ctl", "id": "e1", "cmd": "status", "priority": 9}, "ctl-reply"),
            "orders": ({"type": "query", "what": "account", "include_closed": True}, "query-reply"),
            "md.ref": ({"type": "instruments-request", "venue": "x"}, "instruments-reply"),
            "state.snap": ({"type": "snapshot-request", "reason": "join", "compress": "zstd"}, "snapshot")}
    for name, (msg, want) in asks.items():
        s = system["ctx"].socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(system["eps"][name])
        try:
            s.send(msgspec.msgpack.encode({"v": SCHEMA_VERSION, "src": "newer", "pid": 1, "run": "", "seq": 1,
                                           "ts": 1, "trace": "abc", "msg": msg}))
            assert s.poll(5000), f"{name}: no reply"
            reply = msgspec.msgpack.decode(s.recv())["msg"]
            assert reply["type"] == want, f"{name}: {reply}"
            assert reply.get("ok", True)
        finally:
            s.close()


def test_after_fuzzing_nothing_died_and_the_ledger_is_unchanged(system):
    run_dir = system["run_dir"]
    before, pids = system["before"], system["pids"]
    # One more burst of every kind at every socket, then check replies and survivors.
    for name in ROUTERS:
        s = sock_for(system, name)
        for frames in ([b"\xc1garbage"], [b"a", b"b", b"c"], [envelope({"type": "submit", "qty": -1})]):
            s.send_multipart(frames)
    # the ROUTERs that answer clients reply with an error message to garbage
    for name in ("control", "orders", "md.ref", "state.snap"):
        s = sock_for(system, name)
        assert s.poll(2000), f"{name}: no error reply"
        while s.poll(200):
            s.recv_multipart()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # let anything in flight land before comparing
        st_ = status(run_dir)
        if st_ and all(a["state"] == "running" for a in st_["actors"].values()):
            break
    after = status(run_dir)
    assert system["proc"].poll() is None
    assert {n: a["pid"] for n, a in after["actors"].items()} == pids
    assert all(a["state"] == "running" and a["restarts"] == 0 for a in after["actors"].values())
    assert ledger_state(run_dir) == before
    # What was dropped was counted, and the count is visible in ctl status.
    assert after["bad_messages"] > 0, "supervisor: bad input not counted"
    for name in ("market-data", "paper-exchange", "state-publisher"):
        wait_for(lambda: field(run_dir, "actors", name, "status", "bad_messages", default=0) > 0, 5,
                 f"{name} to report its count of bad messages")
    for s in _socks.values():
        s.close()
    _socks.clear()

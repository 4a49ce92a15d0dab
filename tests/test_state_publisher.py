"""The real state-publisher process, with the test playing market-data, the exchange and the supervisor.

Clone pattern: a late joiner equals the live state; a lost delta triggers a
resync; a stalled subscriber does not stall the publisher and its losses are
counted; status.json is never seen half-written; monitor --once / --json work
against the running publisher.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time

import pytest
import zmq

import config as config_mod
from actors.state_publisher import write_status
from bus import messages as m
from bus.clone_client import CloneClient
from bus.codec import ProtocolError, Stamper
from bus.fileio import atomic_write
from bus.sockets import Endpoints, open_port, topic_for
from tests.harness import PY, ROOT, FakeSupervisor, actor_cmd, wait_for

pytestmark = pytest.mark.timeout(60)

NAME = "state-publisher"
RUN_ID = "test-run"
INSTRUMENTS = [m.Instrument(symbol="GOOG", kind="equity", tick_size=0.01),
               m.Instrument(symbol="ES", kind="future", tick_size=0.25, multiplier=50.0),
               m.Instrument(symbol="GOOG_C100", kind="option", tick_size=0.01, underlying="GOOG", strike=100.0,
                            expiry="2030-01-18", right="C")]
OPEN_ORDER = m.OrderInfo(order_id=1, cl_id="c1", symbol="GOOG", side="buy", qty=5, order_type="limit", price=95.0)
START_ACCOUNT = m.AccountInfo(cash=999_000.0, equity=1_000_000.0, initial_cash=1_000_000.0)
START_POSITIONS = [m.PositionInfo(symbol="GOOG", qty=10, avg_price=100.0, mark=100.0)]


class Producers:
    """The test's side: market-data and exchange endpoints, the supervisor's events PUB."""

    def __init__(self, run_dir: str, cfg: config_mod.Config):
        self.ctx = zmq.Context()
        eps = Endpoints.from_config(run_dir, cfg.bus)
        atomic_write(os.path.join(run_dir, "endpoints.json"), json.dumps(eps.as_dict()).encode())
        md, ex, sup = Stamper("market-data", RUN_ID), Stamper("paper-exchange", RUN_ID), Stamper("supervisor", RUN_ID)
        self.md = open_port(self.ctx, eps, "md", bind=True, stamper=md)
        self.exec = open_port(self.ctx, eps, "exec", bind=True, stamper=ex)
        self.events = open_port(self.ctx, eps, "events", bind=True, stamper=sup)
        self._ref = open_port(self.ctx, eps, "md.ref", bind=True, stamper=md)
        self._orders = open_port(self.ctx, eps, "orders", bind=True, stamper=ex)
        self.queries = 0
        self._stop = threading.Event()
        # The ROUTERs are served by their own thread (it alone touches them) while
        # the publisher blocks on its requests in init.
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._ref.sock, zmq.POLLIN)
        poller.register(self._orders.sock, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                port = self._ref if sock is self._ref.sock else self._orders
                try:
                    r = port.recv()
                except ProtocolError:
                    continue
                if isinstance(r.msg, m.InstrumentsRequest):
                    port.send(m.InstrumentsReply(instruments=INSTRUMENTS, option_mappings=2), to=r.ident)
                elif isinstance(r.msg, m.Query):
                    self.queries += 1
                    port.send(m.QueryReply(positions=START_POSITIONS, orders=[OPEN_ORDER], account=START_ACCOUNT),
                              to=r.ident)

    def bar(self, sym: str, ts: int, close: float) -> None:
        self.md.send(m.Bar(symbol=sym, ts=ts, open=close, high=close, low=close, close=close),
                     topic=topic_for("md.bar", sym))

    def fill(self, i: int, realized: float = 0.0) -> None:
        self.exec.send(m.Fill(fill_id=i, order_id=100 + i, cl_id=f"f{i}", symbol="GOOG", side="buy", qty=1,
                              price=100.0, ts=i, position=10, realized=realized), topic=topic_for("exec.fill", "GOOG"))

    def account(self, cash: float, positions: list[m.PositionInfo], realized: float = 0.0) -> None:
        self.exec.send(m.AccountUpdate(account=m.AccountInfo(cash=cash, equity=0.0, initial_cash=1_000_000.0,
                                                             realized=realized), positions=positions),
                       topic=topic_for("acct.update"))

    def order(self, info: m.OrderInfo) -> None:
        self.exec.send(m.OrderUpdate(order=info), topic=topic_for("exec.order", info.symbol))

    def actor(self, name: str, state: str = "running", detail: str = "") -> None:
        self.events.send(m.ActorEvent(actor=name, state=state, pid=1234, detail=detail),
                         topic=topic_for("events", "actor"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for p in (self.md, self.exec, self.events, self._ref, self._orders):
            p.close()
        self.ctx.term()


class System:
    def __init__(self, run_dir: str, procs, sets: list[str]):
        self.run_dir = run_dir
        self.cfg = config_mod.load(None, ["state.heartbeat_ms=100", "state.status_every_ms=50", *sets])
        self.sup = FakeSupervisor(run_dir, self.cfg, run_id=RUN_ID)
        self.prod = Producers(run_dir, self.cfg)
        self.clients: list[CloneClient] = []
        path = self.sup.write_config()
        self.proc = procs.spawn(actor_cmd("actors.state_publisher", run_dir, path, extra=["--run-id", RUN_ID]))
        self.ready = self.sup.wait_msg(NAME, m.Ready, 15)
        self.sup.run(NAME)

    def client(self, **kw) -> CloneClient:
        c = CloneClient(self.run_dir, **kw)
        self.clients.append(c)
        return c

    def until(self, pred, timeout: float, what: str, step: list[CloneClient] | None = None):
        """Keep the supervisor heartbeating and the clients stepping until ``pred()``."""
        def pump() -> None:
            self.sup.pump(0.005)
            for c in (self.clients if step is None else step):
                c.step(0.005)

        return wait_for(pred, timeout, what, step=pump)

    def idle_and_equal(self, a: CloneClient, b: CloneClient) -> bool:
        """Both clients saw a heartbeat for the seq they are at: the stream is idle there."""
        return a.seq == b.seq == a.last_hb_seq == b.last_hb_seq and a.state is not None

    def see_actor(self, c: CloneClient, name: str, detail: str) -> None:
        # Re-sent until seen: the publisher's SUB may still be joining the PUB.
        def seen():
            if ((c.state or {}).get("actors", {}).get(name) or {}).get("detail") == detail:
                return True
            self.prod.actor(name, detail=detail)
            return False
        self.until(seen, 10, f"actor event {name}/{detail} in the view")

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.sup.stop(NAME)
            try:
                self.sup.wait_msg(NAME, m.Stopped, 5)
            except AssertionError:
                pass
            self.proc.wait(10)
        self.prod.close()
        self.sup.close()


@pytest.fixture
def make_system(run_dir, procs):
    made = []

    def make(*sets: str) -> System:
        s = System(run_dir, procs, list(sets))
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()
        assert s.proc.returncode == 0


def test_late_joiner_equals_live_state_and_status_file(make_system):
    s = make_system()
    assert s.ready.info == {"instruments": 3, "option_mappings": 2, "positions": 1, "open_orders": 1}
    a = s.client(name="early")
    assert a.wait_synced(5)
    assert a.state["run_id"] == RUN_ID and a.state["instruments"]["option_mappings"] == 2
    assert a.state["orders"]["1"]["price"] == 95.0 and a.state["positions"]["GOOG"]["qty"] == 10
    s.see_actor(a, "market-data", "up")
    for i, name in enumerate(["paper-exchange", "strategy"]):
        s.prod.actor(name, detail=f"n{i}")
    # buy 10 more GOOG @ 100, then GOOG trades at 110 and ES at 4000 (not held)
    s.prod.fill(1)
    s.prod.account(998_000.0, [m.PositionInfo(symbol="GOOG", qty=20, avg_price=100.0, mark=100.0)])
    s.prod.order(m.OrderInfo(order_id=1, cl_id="c1", symbol="GOOG", side="buy", qty=5, status="cancelled"))
    for k in range(1, 50):
        s.prod.bar("GOOG", k * 60 * 10**9, 100.0 + k * 10 / 49)
        s.prod.bar("ES", k * 60 * 10**9, 4000.0)
    s.prod.fill(2, realized=25.0)
    s.until(lambda: a.state["performance"]["fills"] == 2 and a.state["market"]["updates"] == 98, 10,
            "the early client to see every update")
    b = s.client(name="late")
    assert b.wait_synced(5)
    s.until(lambda: s.idle_and_equal(a, b), 10, "both clients idle at the same seq")
    assert a.state == b.state
    acct = a.state["account"]
    # equity = 998000 + 20 * 110; Total MTM = 20 * (110 - 100)
    assert acct["equity"] == 1_000_200.0 and acct["unrealized"] == 200.0
    assert a.state["positions"]["GOOG"]["last"] == 110.0 and a.state["orders"] == {}
    perf = a.state["performance"]
    assert perf["trades"] == 1 and perf["win_rate"] == 1.0 and perf["total_return"] == pytest.approx(0.0002)
    assert set(a.state["actors"]) == {"market-data", "paper-exchange", "strategy"}
    assert b.stats["snapshots"] == 1 and b.stats["resyncs"] == 0
    # status.json catches up with the stream and holds the same view
    status = os.path.join(s.run_dir, "status.json")

    def status_at_seq():
        with open(status, "rb") as f:
            doc = json.load(f)
        return doc if doc["state_seq"] == a.seq else None
    doc = s.until(status_at_seq, 10, "status.json at the clients' seq")
    assert {k: v for k, v in doc.items() if k not in ("state_seq", "written_ns", "written_at")} == a.state


def test_lost_delta_triggers_resync_and_is_counted(make_system):
    s = make_system()
    ref = s.client(name="ref")
    assert ref.wait_synced(5)
    s.see_actor(ref, "strategy", "warmup")
    dropped = []

    def drop_one(d: m.Delta) -> bool:
        if not dropped:
            dropped.append(d.state_seq)
            return True
        return False
    c = s.client(name="lossy", drop=drop_one)
    assert c.wait_synced(5)
    for i in range(5):
        s.prod.actor("strategy", detail=f"d{i}")
    s.until(lambda: dropped and c.stats["gaps"] >= 1 and c.stats["snapshots"] >= 2 and s.idle_and_equal(c, ref),
            10, "the lossy client to resync")
    assert c.state == ref.state and c.state["actors"]["strategy"]["detail"] == "d4"
    # the client said why it asked again: the loss is visible in the publisher's view
    s.until(lambda: ref.state["counters"].get("client_resyncs", 0) >= 1, 5, "resync counted")
    assert ref.state["counters"]["client_missed"] >= 1


def test_bad_snapshot_request_gets_an_error_reply(make_system):
    s = make_system()
    eps = Endpoints.from_run_dir(s.run_dir)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(eps["state.snap"])
    try:
        sock.send(b"\xc1garbage")
        s.until(lambda: sock.poll(0), 5, "an error reply", step=[])
        from bus.codec import codec
        err = codec("state").decode(sock.recv()).msg
        assert isinstance(err, m.StateError) and err.code == "bad-request" and "malformed msgpack" in err.text
        c = s.client()
        assert c.wait_synced(5)
        s.until(lambda: c.state["counters"].get("bad_requests") == 1, 5, "bad request counted")
    finally:
        sock.close()
        ctx.term()


def test_stalled_subscriber_does_not_stall_the_publisher(make_system):
    s = make_system("state.pub_hwm=20")
    live = s.client(name="live")
    assert live.wait_synced(5)
    stalled = s.client(name="stalled", rcvhwm=10)
    assert stalled.wait_synced(5)
    seq0 = live.seq
    # Each fill changes "trades" (~10 KB once it holds 50 fills): far more than the
    # stalled client's queue and socket buffers hold.
    n = 0
    while live.seq < seq0 + 600:
        for _ in range(5):
            n += 1
            s.prod.fill(n)
        s.until(lambda: live.state["performance"]["fills"] == n, 10, "the live client to keep up", step=[live])
    # While one client is stalled, snapshots are still served at once.
    fresh = s.client(name="fresh")
    assert fresh.wait_synced(5) and fresh.seq >= seq0 + 600
    # The stalled client wakes up: it finds the gap, resyncs and reports what it missed.
    s.until(lambda: stalled.stats["gaps"] >= 1 and s.idle_and_equal(stalled, live), 15, "the stalled client to resync")
    assert stalled.state["performance"]["fills"] == n
    s.until(lambda: live.state["counters"].get("client_missed", 0) >= 100, 5, "the loss counted by the publisher")


def test_status_file_is_never_seen_partial(tmp_path):
    # tmpfs when there is one: this is about atomicity, not about the disk's fsync speed.
    d = tempfile.mkdtemp(dir="/dev/shm") if os.path.isdir("/dev/shm") else str(tmp_path)
    path = os.path.join(d, "status.json")
    small = {"trades": []}
    big = {"trades": [{"fill_id": i, "symbol": "GOOG", "price": 100.0 + i} for i in range(300)]}
    write_status(path, small, 0)
    stop = threading.Event()
    seen = {"reads": 0, "bad": [], "seqs": set()}

    def reader():
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    data = f.read()
                doc = json.loads(data)
                # the content belongs to the seq it claims: never a mix of two writes
                assert len(doc["trades"]) == (300 if doc["state_seq"] % 2 else 0)
                seen["seqs"].add(doc["state_seq"])
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                seen["bad"].append(repr(e)[:200])
            seen["reads"] += 1
    t = threading.Thread(target=reader)
    t.start()
    try:
        for seq in range(1, 3001):
            write_status(path, big if seq % 2 else small, seq)
    finally:
        stop.set()
        t.join(10)
    try:
        assert not seen["bad"], seen["bad"][:3]
        assert seen["reads"] > 100 and len(seen["seqs"]) > 10
        assert [f for f in os.listdir(d) if f != "status.json"] == []  # no temp files left behind
    finally:
        if d.startswith("/dev/shm"):
            import shutil
            shutil.rmtree(d, ignore_errors=True)


def _run_monitor(s: System, procs, *args: str, timeout: float = 15) -> tuple[int, str, str]:
    p = procs.spawn([PY, "scripts/monitor.py", "--run-dir", s.run_dir, *args], cwd=ROOT, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env={"COLUMNS": "160"})
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda f=f, b=b: b.append(f.read())) for f, b in ((p.stdout, out),
                                                                                        (p.stderr, err))]
    for r in readers:
        r.start()
    n = 0

    def done():
        nonlocal n
        n += 1
        if n % 20 == 0:
            s.prod.bar("GOOG", (1000 + n) * 10**9, 100.0 + n / 100)  # something to report for --json
        return p.poll() is not None
    s.until(done, timeout, f"monitor {' '.join(args)} to exit")
    for r in readers:
        r.join(5)
    return p.returncode, out[0].decode(), err[0].decode()


def test_monitor_once_and_json(make_system, procs, tmp_path):
    s = make_system()
    code, out, err = _run_monitor(s, procs, "--once")
    assert code == 0, err
    assert RUN_ID in out and "GOOG" in out and "performance" in out and "open orders" in out
    code, out, err = _run_monitor(s, procs, "--once", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["run_id"] == RUN_ID and doc["stale"] is False and doc["state"]["orders"]["1"]["qty"] == 5
    code, out, err = _run_monitor(s, procs, "--json", "--count", "3")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 3 and all(x["run_id"] == RUN_ID for x in lines)
    seqs = [x["state_seq"] for x in lines]
    assert seqs == sorted(seqs) and seqs[-1] > seqs[0]


def test_monitor_once_fails_clearly_when_nothing_answers(procs, tmp_path):
    d = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
    try:
        eps = Endpoints(d).as_dict()
        atomic_write(os.path.join(d, "endpoints.json"), json.dumps(eps).encode())
        t0 = time.monotonic()
        p = procs.spawn([PY, "scripts/monitor.py", "--run-dir", d, "--once"], cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=15)
        assert p.returncode == 1
        assert b"no state from a state-publisher" in err and b"within 3s" in err
        assert time.monotonic() - t0 < 10
        p = procs.spawn([PY, "scripts/monitor.py", "--run-dir", os.path.join(d, "nope"), "--once"], cwd=ROOT,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=15)
        assert p.returncode == 1 and b"no run directory" in err
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def _doc_client_code() -> str:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert "## Monitor client (Clone pattern)" in text, "no 'Monitor client (Clone pattern)' section"
    section = text.split("## Monitor client (Clone pattern)", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_twenty_line_client_works(make_system, procs):
    code = _doc_client_code()
    assert len(code.strip().splitlines()) <= 25
    s = make_system()
    p = procs.spawn([PY, "-u", "-c", code, s.run_dir], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    t = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, b"")), daemon=True)
    t.start()
    k = 0

    def got_equity():
        nonlocal k
        k += 1
        if k % 10 == 0:
            s.prod.bar("GOOG", k * 10**9, 100.0 + k / 10)  # GOOG is held: account deltas follow
        return any(b"account equity" in x for x in lines)
    s.until(got_equity, 10, "the documented client to print an account delta")
    p.kill()
    p.wait(5)
    t.join(5)
    seq, key, _, eq = lines[-1].split()
    assert int(seq) > 0 and float(eq) > 0

"""A paperbus client written from docs/PROTOCOL.md alone: pyzmq, msgpack and the stdlib.

    python -I tests/conformance_client.py RUN_DIR

It imports nothing of the project (tests/test_protocol_conformance.py runs it
isolated, and checks its imports). It walks through what the document promises
against a running system and exits 0 with one JSON line on stdout (what it
checked, the status and the snapshot it got), or 1 with the broken promise on
stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

V = 3  # the schema version this client was written for
ME = f"conformance-{os.getpid()}"
BIG = 1 << 53


class Broken(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Broken(what)


class Client:
    def __init__(self, run_dir: str):
        with open(os.path.join(run_dir, "endpoints.json")) as f:
            self.ep = json.load(f)
        self.ctx = zmq.Context()
        self.seq = 0
        self.checked: list[str] = []
        self.streams: dict[str, list[dict]] = {}  # endpoint -> envelopes received (whole stream)
        self.subs: dict[str, zmq.Socket] = {}
        self.poller = zmq.Poller()

    def ok(self, what: str) -> None:
        self.checked.append(what)

    # ----------------------------------------------------------- wire
    def pack(self, msg: dict, **extra) -> bytes:
        self.seq += 1
        env = {"v": V, "src": ME, "pid": os.getpid(), "run": "", "seq": self.seq, "ts": time.time_ns(), "msg": msg}
        env.update(extra)
        return msgpack.packb(env)

    @staticmethod
    def unpack(data: bytes) -> dict:
        env = msgpack.unpackb(data, raw=False)
        check(isinstance(env, dict) and {"v", "src", "pid", "run", "seq", "ts", "msg"} <= set(env),
              f"a payload is not an envelope: {env!r:.200}")
        check(env["v"] == V, f"schema version {env['v']}, expected {V}")
        return env

    def socket(self, kind: int, name: str, identity: bytes | None = None) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            s.setsockopt(zmq.IDENTITY, identity)
        s.connect(self.ep[name])
        return s

    def subscribe(self, name: str, prefix: bytes = b"") -> None:
        s = self.socket(zmq.SUB, name)
        s.setsockopt(zmq.RCVHWM, 0)  # no limit: this client must not drop (it checks seq)
        s.setsockopt(zmq.SUBSCRIBE, prefix)
        self.subs[name] = s
        self.streams[name] = []
        self.poller.register(s, zmq.POLLIN)

    def pump(self, timeout_ms: int = 0) -> None:
        """Receive whatever the SUB sockets have; wait at most timeout_ms for the first."""
        for s, _ in self.poller.poll(timeout_ms):
            for name, sub in self.subs.items():
                if sub is s:
                    while True:
                        try:
                            topic, payload = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        env = self.unpack(payload)
                        env["topic"] = topic.decode()
                        self.streams[name].append(env)

    def wait(self, pred, timeout: float, what: str):
        """Pump until ``pred()`` is truthy; Broken(what) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise Broken(f"timed out after {timeout}s waiting for {what}")
            self.pump(int(min(left, 0.02) * 1000) + 1)  # short slices: replies arrive on other sockets

    def recv_reply(self, s: zmq.Socket, timeout: float, what: str) -> dict:
        frames = self.wait(lambda: s.poll(0) and s.recv_multipart(), timeout, what)
        check(len(frames) == 1, f"{what}: {len(frames)} frames in a reply")  # a REQ socket strips the delimiter
        return self.unpack(frames[0])["msg"]

    def request(self, s: zmq.Socket, msg: dict, what: str, timeout: float = 5.0, **extra) -> dict:
        s.send(self.pack(msg, **extra))
        return self.recv_reply(s, timeout, what)

    def seen(self, name: str, pred) -> list[dict]:
        return [e["msg"] for e in self.streams[name] if pred(e["msg"])]

    # ----------------------------------------------------------- the walk
    def run(self) -> dict:
        # --- control: a plain REQ socket, as in the doc's example
        ctl = self.socket(zmq.REQ, "control")
        rep = self.request(ctl, {"type": "ctl", "id": "s1", "cmd": "status"}, "ctl status")
        check(rep["type"] == "ctl-reply" and rep["ok"] and rep["id"] == "s1", f"ctl status: {rep}")
        status = rep["data"]
        for key in ("run_id", "previous_run_id", "previous_clean", "pid", "since", "phase", "bad_messages",
                    "run_dir", "uptime_s", "log_write_errors", "actors"):
            check(key in status, f"ctl status has no documented key {key!r}")
        check(status["phase"] == "running", f"phase {status['phase']}")
        for name in ("market-data", "paper-exchange", "state-publisher", "strategy"):
            a = status["actors"].get(name)
            check(a is not None and a["state"] == "running", f"actor {name}: {a}")
            for key in ("state", "pid", "restarts", "uptime_s", "heartbeat_age_s", "info", "status"):
                check(key in a, f"ctl status: actor {name} has no documented key {key!r}")
        self.ok("ctl status over REQ, with the documented keys")
        rep = self.request(ctl, {"type": "ctl", "id": "s2", "cmd": "status", "urgency": "high"}, "ctl status+",
                           trace="added by a newer peer")
        check(rep["ok"] and rep["id"] == "s2", f"a ctl with unknown fields was not answered: {rep}")
        self.ok("unknown fields are ignored (ctl)")
        rep = self.request(ctl, {"type": "ctl", "id": "s3", "cmd": "status", "arg": "x" * (80 << 10)}, "big ctl")
        check(not rep["ok"] and "oversized" in rep["error"], f"a ctl over the 64 KiB payload limit: {rep}")
        self.ok("a control payload over its decoder limit gets an error reply")

        # --- subscribe to whole streams first (Clone pattern step 1), then wait until they flow
        for name in ("md", "exec", "events"):
            self.subscribe(name)
        self.subscribe("state", b"state.")
        self.wait(lambda: all(self.streams[n] for n in ("md", "exec", "state")), 15, "md, exec and state to flow")

        # --- state snapshot
        snap = self.socket(zmq.DEALER, "state.snap")
        rep = self.request(snap, {"type": "snapshot-request", "reason": "join"}, "snapshot")
        check(rep["type"] == "snapshot" and isinstance(rep["state"], dict), f"snapshot: {rep!r:.200}")
        view = rep["state"]
        check(view["run_id"] == status["run_id"], "the view's run_id is not the supervisor's")
        self.ok("snapshot")

        # --- instruments
        ref = self.socket(zmq.DEALER, "md.ref")
        rep = self.request(ref, {"type": "instruments-request"}, "instruments")
        check(rep["type"] == "instruments-reply" and rep["instruments"], f"instruments: {rep!r:.200}")
        inst = rep["instruments"][0]
        sym, tick, lot = inst["symbol"], inst["tick_size"], inst["lot_size"]
        if float(lot).is_integer():  # lot_size is a number (0.00001 BTC); a whole step goes out as a whole qty
            lot = int(lot)
        rep = self.request(ref, {"type": "history-request", "symbol": "NO-SUCH"}, "history-request without n")
        check(rep["type"] == "md-error" and rep["code"] == "bad-request" and "`n`" in rep["text"],
              f"a history-request without its required n: {rep}")
        rep = self.request(ref, {"type": "history-request", "symbol": "NO-SUCH", "n": 1}, "unknown history")
        check(rep["type"] == "md-error" and rep["code"] == "unknown-symbol", f"history of an unknown symbol: {rep}")
        self.ok("md.ref instruments, history errors with their codes")

        # --- order entry on our own DEALER identity
        orders = self.socket(zmq.DEALER, "orders", identity=ME.encode())
        tag = uuid.uuid4().hex[:8]
        last = self.wait(lambda: [m for m in self.seen("md", lambda m: m.get("symbol") == sym and m["type"] == "bar")],
                         10, f"a bar of {sym}")[-1]["close"]
        limit_px = round(max(tick, round(last * 0.5 / tick) * tick), 10)  # far below: rests

        rep = self.request(orders, {"type": "submit", "cl_id": f"{ME}-{tag}-L", "symbol": sym, "side": "buy",
                                    "qty": lot, "order_type": "limit", "price": limit_px}, "limit submit")
        check(rep["type"] == "ack" and rep["cl_id"] == f"{ME}-{tag}-L" and not rep["duplicate"], f"limit: {rep}")
        limit_id = rep["order_id"]
        upd = self.wait(lambda: self.seen("exec", lambda m: m["type"] == "order-update"
                                          and m["order"]["cl_id"] == f"{ME}-{tag}-L"), 5, "the limit's order-update")
        check(upd[0]["reason"] == "accepted" and upd[0]["order"]["status"] == "new", f"limit update: {upd[0]}")
        self.ok("limit submit: ack, then order-update accepted on exec")

        mkt = {"type": "submit", "cl_id": f"{ME}-{tag}-M", "symbol": sym, "side": "buy", "qty": lot,
               "order_type": "market"}
        rep = self.request(orders, mkt, "market submit")
        check(rep["type"] == "ack", f"market: {rep}")
        mkt_id = rep["order_id"]
        fill = self.wait(lambda: self.seen("exec", lambda m: m["type"] == "fill" and m["cl_id"] == mkt["cl_id"]),
                         15, "the market order's fill")[0]
        check(fill["order_id"] == mkt_id and fill["qty"] == lot and fill["side"] == "buy", f"fill: {fill}")
        check(isinstance(fill["price"], float) and isinstance(fill["position"], int), f"fill types: {fill}")
        self.wait(lambda: self.seen("exec", lambda m: m["type"] == "order-update" and m["order"]["cl_id"]
                                    == mkt["cl_id"] and m["reason"] == "filled"), 5, "order-update filled")
        rep = self.request(orders, mkt, "market submit again")
        check(rep["type"] == "ack" and rep["duplicate"] and rep["order_id"] == mkt_id, f"retried submit: {rep}")
        self.ok("market submit: ack, fill and order-update on exec; a retry is acked as a duplicate")

        rep = self.request(orders, {"type": "query", "what": "all", "since_id": 7}, "query", trace="newer")
        check(rep["type"] == "query-reply" and isinstance(rep["account"], dict), f"query: {rep!r:.200}")
        mine = [o for o in rep["orders"] if o["cl_id"] == f"{ME}-{tag}-L"]
        check(len(mine) == 1 and mine[0]["order_id"] == limit_id and mine[0]["price"] == limit_px,
              f"the open limit order is not in the query-reply: {mine}")
        check(any(p["symbol"] == sym for p in rep["positions"]), "no position after a fill")
        self.ok("query-reply lists our open order (query sent with unknown fields)")

        # --- refusals, each with its code
        bad = {"type": "submit", "cl_id": f"{ME}-{tag}-B", "side": "buy", "qty": lot}
        rep = self.request(orders, {**bad, "symbol": "NO-SUCH", "order_type": "market"}, "unknown symbol")
        check(rep["type"] == "reject" and rep["code"] == "unknown-instrument", f"unknown instrument: {rep}")
        rep = self.request(orders, {**bad, "symbol": sym, "order_type": "limit"}, "limit without price")
        check(rep["type"] == "reject" and rep["code"] == "bad-request" and "price" in rep["text"],
              f"a limit without a price: {rep}")
        rep = self.request(orders, {**bad, "symbol": sym, "order_type": "market", "price": limit_px},
                           "market with price")
        check(rep["type"] == "reject" and rep["code"] == "bad-request", f"a market order with a price: {rep}")
        rep = self.request(orders, {**bad, "cl_id": f"{ME}-{tag}-N", "symbol": sym}, "submit without order_type")
        check(rep["type"] == "error" and rep["code"] == "bad-request" and "order_type" in rep["text"],
              f"a submit without order_type was not refused naming it: {rep}")
        rep = self.request(orders, {**mkt, "qty": 2 * lot}, "reused cl_id")
        check(rep["type"] == "reject" and rep["code"] == "duplicate-client-order-id", f"reused cl_id: {rep}")
        self.ok("rejects and errors carry their documented codes; no order_type, no order")

        # --- replies come in request order on one DEALER
        batch = [{"type": "query", "what": "account"}, {"type": "cancel", "cl_id": f"{ME}-{tag}-none"},
                 {"type": "cancel-all", "symbol": "NO-SUCH"}, {"type": "query", "what": "orders"}]
        for msg in batch:
            orders.send(self.pack(msg))
        got = [self.recv_reply(orders, 5, f"reply {i}")["type"] for i in range(len(batch))]
        check(got == ["query-reply", "reject", "cancel-reply", "query-reply"], f"replies out of order: {got}")
        self.ok("replies on one DEALER come in request order")

        rep = self.request(orders, {"type": "cancel", "cl_id": f"{ME}-{tag}-L"}, "cancel")
        check(rep["type"] == "cancel-reply" and rep["cancelled"] == [limit_id], f"cancel: {rep}")
        upd = self.wait(lambda: self.seen("exec", lambda m: m["type"] == "order-update" and m["order"]["cl_id"]
                                          == f"{ME}-{tag}-L" and m["order"]["status"] == "cancelled"), 5,
                        "the cancel's order-update")
        check(upd[0]["reason"] == "cancel", f"cancel update: {upd[0]}")
        rep = self.request(orders, {"type": "cancel", "cl_id": f"{ME}-{tag}-L"}, "cancel again")
        check(rep["type"] == "cancel-reply" and rep["cancelled"] == [], f"a second cancel: {rep}")
        self.ok("cancel: cancel-reply and order-update cancel; a retried cancel is harmless")

        # --- an oversized frame: the connection is dropped, no reply; the socket reconnects by itself
        big = self.ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        mon = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)  # before connect: sees it
        big.connect(self.ep["orders"])
        self.wait(lambda: mon.poll(0) and recv_monitor_message(mon)["event"] == zmq.EVENT_CONNECTED, 5,
                  "the connection")
        big.send(self.pack({"type": "query", "what": "x" * (2 << 20)}))
        self.wait(lambda: mon.poll(0) and recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED, 5,
                  "the system to drop the connection of an oversized frame")
        self.wait(lambda: mon.poll(0) and recv_monitor_message(mon)["event"] == zmq.EVENT_CONNECTED, 5,
                  "the socket to reconnect")
        rep = self.request(big, {"type": "query", "what": "account"}, "query after reconnect")
        check(rep["type"] == "query-reply", f"the first reply after an oversized frame: {rep!r:.200}")
        big.disable_monitor()
        mon.close()
        big.close()
        self.ok("an oversized frame: connection dropped, no reply, reconnects, next request answered")

        # --- the state view follows: our fill reached the trades
        def our_trade():
            self.pump(0)
            return any(m["type"] == "delta" and m["key"] == "trades" and any(t["cl_id"] == mkt["cl_id"]
                       for t in m["value"]) for m in (e["msg"] for e in self.streams["state"]))
        self.wait(our_trade, 10, "our fill in a trades delta")
        rep = self.request(snap, {"type": "snapshot-request", "reason": "join"}, "second snapshot")
        view = rep["state"]
        self.ok("our fill reaches the state view")

        # --- the submit without order_type left no trace: nothing was accepted, nothing filled
        never = self.seen("exec", lambda m: (m.get("cl_id") or m.get("order", {}).get("cl_id")) == f"{ME}-{tag}-N")
        check(never == [], f"a submit without order_type made an order: {never}")
        rep = self.request(orders, {"type": "query", "what": "orders"}, "query orders")
        check(all(o["cl_id"] != f"{ME}-{tag}-N" for o in rep["orders"]), "a submit without order_type is open")
        self.ok("a submit without order_type made no order and no fill")

        # --- integers: ns times beyond 2^53 decode exactly
        now = time.time_ns()
        for name, envs in self.streams.items():
            for e in envs:
                check(isinstance(e["ts"], int) and BIG < e["ts"] and abs(e["ts"] - now) < 600 * 10**9,
                      f"{name}: envelope ts {e['ts']!r} is not a 64-bit ns time")
        check(isinstance(fill["ts"], int) and fill["ts"] > BIG, f"fill ts {fill['ts']!r}")
        self.ok("64-bit ns times")

        # --- seq: every whole stream is contiguous per sender pid
        self.pump(100)
        counts = {}
        for name, envs in self.streams.items():
            by_pid: dict[int, list[int]] = {}
            for e in envs:
                by_pid.setdefault(e["pid"], []).append(e["seq"])
            for pid, seqs in by_pid.items():
                jumps = [(a, b) for a, b in zip(seqs, seqs[1:]) if b != a + 1]
                check(not jumps, f"{name} (pid {pid}): seq jumps {jumps[:5]} though nothing was dropped")
            counts[name] = len(envs)
        self.ok("seq contiguous on md, exec, state, events")
        return {"checked": self.checked, "status": status, "state": view, "messages": counts}

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: conformance_client.py RUN_DIR", file=sys.stderr)
        return 2
    c = Client(sys.argv[1])
    try:
        report = c.run()
    except Broken as e:
        print(f"conformance: {e} (after: {', '.join(c.checked) or 'nothing'})", file=sys.stderr)
        return 1
    finally:
        c.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Supervisor SIGKILLed mid-run, started again on the same run directory.

Each round: the system trades on the synthetic feed with a resting limit order
of ours in the book; the supervisor is SIGKILLed while orders and fills are in
motion. Then: every actor of the old run is gone (PDEATHSIG + orphan guard)
before anything new starts; the ledger is intact (integrity_check, positions ==
replay of fills, no overfill); the new supervisor gets a new run_id linked to
the old one (run.json, status and the ledger's runs table); the exchange
rebuilds exactly the books the ledger held at the crash (positions, cash, open
orders — from its "ledger resumed" log line and a Query); the strategy recovers
its position; and trading continues with fill ids that carry on from the old
ones.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import zmq

from bus.codec import Stamper
from bus.messages import OrderAck, Query, QueryReply, SubmitOrder
from bus.sockets import Endpoints, open_port
from tests.harness import wait_for
from scripts.testkit import read_ledger
from tests.sup_util import field, log_events, start_supervisor, status_now, wait_gone

ROUNDS = int(os.environ.get("PAPERBUS_CRASH_ROUNDS", "3"))
pytestmark = pytest.mark.timeout(120 + 40 * ROUNDS)
SETS = ["market_data.rate_hz=50", "exchange.fill_on=close", "strategy.params={ fast = 2, slow = 4, qty = 10 }",
        "supervisor.heartbeat_ms=100"]


def start(procs, run_dir):
    return start_supervisor(procs, run_dir, config="config/default.toml", sets=SETS, timeout=30)


def fills(run_dir: str) -> int:
    # The exchange's status arrives with its heartbeats: empty for a moment after a start.
    return field(run_dir, "actors", "paper-exchange", "status", "fills", default=-1)


def ledger_snapshot(run_dir: str) -> dict:
    """What the books are, from the ledger alone (read-only), its invariants checked (scripts/testkit.py)."""
    bad: list[str] = []
    led = read_ledger(os.path.join(run_dir, "ledger.sqlite"), bad)
    assert bad == [], bad
    return {"fills": len(led.fills), "last_fill_id": max(led.fills, default=0), "positions": led.held(),
            "cash": round(led.acct.cash, 2), "open_orders": sorted(led.orders[i]["cl_id"] for i in led.open_ids),
            "runs": led.runs}


def exchange_port(ctx, run_dir):
    return open_port(ctx, Endpoints.from_run_dir(run_dir), "orders", bind=False,
                     stamper=Stamper("test-crash", "test"))


def ask(port, msg, timeout=10.0):
    port.send(msg)
    assert port.sock.poll(int(timeout * 1000)), f"no reply to {type(msg).__name__}"
    return port.recv().msg


def test_supervisor_sigkill_then_restart_resumes_from_the_ledger(procs, run_dir):
    ctx = zmq.Context()
    try:
        sup = start(procs, run_dir)
        first = status_now(run_dir)
        first_run = first["run_id"]
        assert first["previous_run_id"] is None
        prev_run, prev_snap = first_run, None
        for rnd in range(ROUNDS):
            fills_before = wait_for(lambda: fills(run_dir) + 1, 10, "exchange status") - 1
            # Our own resting order: far below the market, it stays open across the crash.
            port = exchange_port(ctx, run_dir)
            reply = ask(port, SubmitOrder(cl_id=f"resting-{rnd}", symbol="SYN1", side="buy", qty=5,
                                          order_type="limit", price=1.0))
            assert isinstance(reply, OrderAck), reply
            port.close()
            # Mid-run: the strategy is trading (more fills since the restart).
            wait_for(lambda: fills(run_dir) >= fills_before + 3,
                     30, "fills in motion")
            old = status_now(run_dir)
            old_pids = [a["pid"] for a in old["actors"].values()]
            sup.send_signal(signal.SIGKILL)
            sup.wait(10)
            # Nothing of the old run survives, before anything new starts.
            wait_gone(old_pids, 5.0)
            snap = ledger_snapshot(run_dir)
            if prev_snap is not None:
                assert snap["fills"] >= prev_snap["fills"] and snap["last_fill_id"] >= prev_snap["last_fill_id"]
            assert snap["open_orders"].count(f"resting-{rnd}") == 1
            rec = json.loads(open(os.path.join(run_dir, "run.json")).read())
            assert rec["run_id"] == old["run_id"] and "ended" not in rec

            sup = start(procs, run_dir)
            new = status_now(run_dir)
            assert new["run_id"] != old["run_id"]
            assert new["previous_run_id"] == old["run_id"] and new["previous_clean"] is False
            assert not set(old_pids) & {a["pid"] for a in new["actors"].values()}
            # The exchange rebuilt exactly what the ledger held at the crash.
            resumed = [e for e in log_events(run_dir, "paper-exchange")
                       if e.get("event") == "ledger resumed" and e.get("run_id") == new["run_id"]]
            assert resumed, "exchange did not log its rebuild"
            r = resumed[0]
            assert r["previous_run_id"] == old["run_id"]
            assert r["fills"] == snap["fills"] and r["open_orders"] == len(snap["open_orders"])
            assert r["cash"] == pytest.approx(snap["cash"], abs=0.01)
            assert r["positions"] == snap["positions"]
            # Our resting orders are still in the book, under their own cl_ids.
            port = exchange_port(ctx, run_dir)
            q = ask(port, Query(what="orders"))
            port.close()
            assert isinstance(q, QueryReply)
            resting = {o.cl_id for o in q.orders if o.cl_id.startswith("resting-")}
            assert resting == {f"resting-{i}" for i in range(rnd + 1)}
            # The ledger links the runs.
            runs = ledger_snapshot(run_dir)["runs"]
            assert runs[-1] == {"run_id": new["run_id"], "previous_run_id": old["run_id"]}
            # The strategy recovered its position before trading.
            wait_for(lambda: any(e.get("event") == "position recovered" and e.get("run_id") == new["run_id"]
                                 for e in log_events(run_dir, "strategy")), 10, "strategy recovery")
            # Trading continues: new fills, ids carrying on from the old run.
            wait_for(lambda: fills(run_dir) > snap["fills"],
                     30, "trading resumed")
            prev_run, prev_snap = new["run_id"], snap
        # A clean stop is recorded as such; the next start sees a clean predecessor.
        sup.send_signal(signal.SIGINT)
        assert sup.wait(20) == 0
        rec = json.loads(open(os.path.join(run_dir, "run.json")).read())
        assert rec["run_id"] == prev_run and rec["ended"] and rec["exit_code"] == 0
        assert first_run != prev_run
    finally:
        ctx.destroy(linger=0)

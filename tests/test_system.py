"""The whole system: real supervisor, the four real actors, real sockets, real SQLite."""

import csv
import json
import os
import signal
import sqlite3

import pytest

from scripts.ctl import request
from tests.harness import wait_for
from tests.sup_util import log_events, start_supervisor, status

pytestmark = pytest.mark.timeout(120)

DEFAULT = "config/default.toml"
FAST = ["market_data.rate_hz=40", "strategy.params={ fast = 2, slow = 4, qty = 10 }", "exchange.export_every_ms=0"]


def info(run_dir, actor):
    st = status(run_dir) or {"actors": {}}
    return st["actors"].get(actor, {}).get("status", {})


def ctl_ok(run_dir, cmd, arg=""):
    rep = request(run_dir, cmd, arg, timeout=3.0)
    assert rep.ok, f"{cmd}: {rep.error}"
    return rep.data


def test_default_config_starts_with_no_data_files(procs, run_dir):
    """What `make run` does: built-in defaults, synthetic feed, no files needed."""
    p = start_supervisor(procs, run_dir, config=DEFAULT)
    st = status(run_dir)
    assert list(st["actors"]) == ["market-data", "paper-exchange", "state-publisher", "strategy"]
    assert st["actors"]["market-data"]["info"]["instruments"] == 2
    starts = [e["actor"] for e in log_events(run_dir) if e["event"] == "actor started"]
    assert starts == ["market-data", "paper-exchange", "state-publisher", "strategy"]
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0


def test_trade_pause_stop_and_close_shutdown(procs, run_dir):
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=FAST)
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= 3, 60, "the strategy trades")

    # pause: market data keeps flowing, the strategy sends nothing
    ctl_ok(run_dir, "pause")
    # status rides on heartbeats: wait for one sent after the pause took effect
    wait_for(lambda: info(run_dir, "strategy").get("state") == "paused", 5, "strategy reports paused")
    sent = info(run_dir, "strategy")["orders_sent"]
    fseq = info(run_dir, "market-data")["fseq"]
    wait_for(lambda: info(run_dir, "market-data")["fseq"] >= fseq + 60, 30, "60 more bars while paused")
    bars = info(run_dir, "strategy")["bars"]
    wait_for(lambda: info(run_dir, "strategy")["bars"] >= bars + 20, 30, "strategy keeps consuming bars")
    assert info(run_dir, "strategy")["orders_sent"] == sent
    assert info(run_dir, "strategy")["state"] == "paused"

    # stop-and-close: flat everywhere
    ctl_ok(run_dir, "stop-and-close")
    wait_for(lambda: not info(run_dir, "strategy").get("positions"), 30, "positions flat")

    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0

    # the ledger, fills.csv and the published fills agree
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    n_fills = db.execute("select count(*) from fills").fetchone()[0]
    db.close()
    with open(os.path.join(run_dir, "fills.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_fills >= 3
    net = {}
    for r in rows:
        q = int(r["qty"]) * (1 if r["side"] == "buy" else -1)
        net[r["symbol"]] = net.get(r["symbol"], 0) + q
    assert all(v == 0 for v in net.values()), net

    # status.json was written atomically by the state-publisher and is valid
    with open(os.path.join(run_dir, "status.json")) as f:
        view = json.load(f)
    assert view["run_id"] == status_run_id(run_dir)


def status_run_id(run_dir):
    return next(e["run_id"] for e in log_events(run_dir) if e["event"] == "supervisor started")


def test_exchange_kill_restarts_strategy_and_recovers_position(procs, run_dir):
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=FAST)
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= 2, 60, "some fills")
    st = status(run_dir)
    ex_pid, strat_pid = st["actors"]["paper-exchange"]["pid"], st["actors"]["strategy"]["pid"]
    os.kill(ex_pid, signal.SIGKILL)

    def recovered():
        s = status(run_dir)
        a = s and s["actors"]
        return (a and a["paper-exchange"]["state"] == "running" and a["paper-exchange"]["pid"] != ex_pid
                and a["strategy"]["state"] == "running" and a["strategy"]["pid"] != strat_pid)
    wait_for(recovered, 30, "exchange and strategy restarted together")
    # the rebuilt exchange still has its fills, and the new strategy learned its position from it
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= 2, 10, "fills rebuilt from the ledger")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0


def test_live_fill_and_order_times_are_wall_clock(procs, run_dir):
    """Live time is wall-clock time: a fill is never stamped before the order it fills,
    and both are within seconds of now (before, fills carried a simulated market time)."""
    import time
    t0 = time.time_ns()
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=[
        "market_data.rate_hz=50", "strategy.plugin=actors.strategies.pingpong:PingPong", "strategy.params={ qty = 1 }"])
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= 10, 30, "10 fills")
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0
    t1 = time.time_ns()
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    rows = db.execute("SELECT f.ts, o.ts FROM fills f JOIN orders o USING (order_id)").fetchall()
    db.close()
    assert len(rows) >= 10
    assert all(t0 <= o <= f <= t1 for f, o in rows), [(f, o) for f, o in rows if not t0 <= o <= f <= t1][:3]

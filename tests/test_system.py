"""The whole system: real supervisor, the four real actors, real sockets, real SQLite."""

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

from scripts.ctl import request
from tests.harness import ROOT, wait_for
from tests.sup_util import field, log_events, start_supervisor, status, status_now

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


# ------------------------------------------------------ every state is shown, and survives restarts
# PingPong trades on every bar: a strategy that forgot a pause would send orders at once.
PING = ["market_data.rate_hz=40", "strategy.plugin=actors.strategies.pingpong:PingPong", "strategy.params={ qty = 1 }",
        "exchange.export_every_ms=0"]


def restart(run_dir, actor, also=()):
    """`ctl restart ACTOR`; returns once it (and ``also``, restarted with it) runs under a new pid."""
    st = status_now(run_dir)
    old = {a: st["actors"][a]["pid"] for a in (actor, *also)}
    ctl_ok(run_dir, "restart", actor)

    def back():
        s = status(run_dir)
        return s and all(s["actors"][a]["state"] == "running" and s["actors"][a]["pid"] not in (pid, None)
                         for a, pid in old.items())
    wait_for(back, 30, f"{actor} restarted")


def strategy_after_bars(run_dir, n=40):
    """The restarted strategy's own status once it has handled ``n`` live bars (the
    supervisor forgets a dead incarnation's status, so this is the new one's)."""
    return wait_for(lambda: info(run_dir, "strategy").get("bars", 0) >= n and info(run_dir, "strategy"), 30,
                    f"the strategy to handle {n} bars")


def status_json(run_dir):
    with open(os.path.join(run_dir, "status.json")) as f:
        return json.load(f)


def monitor_screen(view):
    from rich.console import Console

    from scripts.monitor import render
    con = Console(width=80, height=24, record=True, color_system=None)
    con.print(render(view, view["state_seq"], False, None))
    return con.export_text()


def ctl_text(run_dir, *args):
    r = subprocess.run([sys.executable, "scripts/ctl.py", "--run-dir", run_dir, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=15)
    return r.returncode, r.stdout, r.stderr


def start_trading(procs, run_dir):
    """The system with PingPong, once it has traded."""
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=PING)
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= 2, 60, "the strategy trades")
    return p


def assert_idle(st, state):
    """The strategy is in ``state`` and has sent nothing, so the exchange rejected nothing."""
    assert st["state"] == state and st["orders_sent"] == 0 and st["rejects"] == 0, st


def test_pause_survives_a_strategy_restart(procs, run_dir):
    p = start_trading(procs, run_dir)
    ctl_ok(run_dir, "pause")
    restart(run_dir, "strategy")
    st = strategy_after_bars(run_dir)
    # it consumed bars that PingPong trades on, and sent nothing the exchange would reject
    assert_idle(st, "paused")
    assert st["orders_suppressed"] >= 10  # it wanted to trade
    assert status_now(run_dir)["actors"]["strategy"]["info"]["state"] == "paused"  # it knew from its READY on
    assert info(run_dir, "paper-exchange")["paused"] is True
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0


def test_halt_survives_strategy_and_exchange_restarts(procs, run_dir):
    p = start_trading(procs, run_dir)
    ctl_ok(run_dir, "halt")
    restart(run_dir, "strategy")
    st = strategy_after_bars(run_dir)
    assert_idle(st, "halted")
    restart(run_dir, "paper-exchange", also=["strategy"])  # restart_with: the strategy restarts too
    wait_for(lambda: info(run_dir, "paper-exchange").get("halted") is True, 10, "the exchange reports halted")
    st = strategy_after_bars(run_dir)
    assert_idle(st, "halted")
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0
    # a new supervisor on the same run directory: still halted, everywhere
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=PING)
    st = strategy_after_bars(run_dir)
    assert_idle(st, "halted")
    assert info(run_dir, "paper-exchange")["halted"] is True
    run_id = status_now(run_dir)["run_id"]
    wait_for(lambda: (v := status_json(run_dir))["run_id"] == run_id and v["trading"]["state"] == "halted", 10,
             "this run's status.json says halted")
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0


def test_resume_does_not_lift_a_halt_unhalt_does(procs, run_dir):
    p = start_trading(procs, run_dir)
    ctl_ok(run_dir, "halt")
    code, out, err = ctl_text(run_dir, "resume")
    assert code == 1 and err.strip() == (
        "ctl: resume failed: paper-exchange: trading is halted (kill switch): resume does not lift a halt; "
        "`ctl unhalt` does (trading then stays paused until `ctl resume`)")
    rep = request(run_dir, "resume", timeout=3.0)
    assert not rep.ok and rep.data["actors"]["strategy"] == {"ok": False, "skipped": "not sent: paper-exchange refused"}
    wait_for(lambda: info(run_dir, "strategy").get("state") == "halted", 10, "the strategy sees the halt")
    bars = info(run_dir, "strategy")["bars"]
    strategy_after_bars(run_dir, bars + 20)  # heartbeats since: the refused resume changed nothing
    assert info(run_dir, "paper-exchange")["halted"] is True and info(run_dir, "strategy")["state"] == "halted"

    code, out, err = ctl_text(run_dir, "unhalt")
    assert code == 0 and "paper-exchange: halt lifted; trading stays paused until `ctl resume`" in out, (out, err)
    lifted = [e for e in log_events(run_dir, "paper-exchange") if e["event"].startswith("halt lifted")]
    assert len(lifted) == 1 and lifted[0]["level"] == "warning"
    wait_for(lambda: info(run_dir, "paper-exchange").get("halted") is False
             and info(run_dir, "paper-exchange").get("paused") is True, 10, "halt lifted, still paused")
    wait_for(lambda: info(run_dir, "strategy").get("state") == "paused", 10, "the strategy sees it paused")
    code, out, err = ctl_text(run_dir, "unhalt")
    assert code == 1 and "paper-exchange: trading is not halted: there is no halt to lift" in err

    fills, rejects = info(run_dir, "paper-exchange")["fills"], info(run_dir, "strategy")["rejects"]
    ctl_ok(run_dir, "resume")  # the exchange first: the strategy never trades into a pause
    wait_for(lambda: info(run_dir, "paper-exchange").get("fills", 0) >= fills + 2, 30, "trading again")
    assert info(run_dir, "strategy")["rejects"] == rejects
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0


def test_status_json_ctl_status_and_monitor_show_paused_and_halted(procs, run_dir):
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=FAST)
    view = wait_for(lambda: (v := status_json(run_dir))["trading"]["state"] == "trading" and v, 30, "trading")
    assert "trading active" in monitor_screen(view)
    for cmd, flag, shown, ctl_shows in (("pause", "paused", "PAUSED", "trading  PAUSED (`ctl resume`)"),
                                        ("halt", "halted", "HALTED (kill switch)",
                                         "trading  HALTED (kill switch; `ctl unhalt` lifts it)")):
        ctl_ok(run_dir, cmd)
        view = wait_for(lambda: (v := status_json(run_dir))["trading"][flag] and v, 10, f"status.json {flag}")
        assert view["trading"]["state"] == flag and view["trading"]["known"] is True
        screen = monitor_screen(view)
        assert shown in screen and "running, " + flag in screen, screen
        wait_for(lambda: ctl_shows in ctl_text(run_dir, "status")[1], 10, f"ctl status shows {flag}")
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0


def start_boom(procs, run_dir, max_restarts, *sets):
    """A strategy that raises in on_bar while its fuse file exists (tests/fixtures/boom_strategy.py)."""
    fuse = os.path.join(run_dir, "fuse")
    open(fuse, "w").close()
    p = start_supervisor(procs, run_dir, config=DEFAULT, wait_running=False, sets=[
        "market_data.rate_hz=20", "strategy.plugin=tests.fixtures.boom_strategy:Boom",
        f'strategy.params={{ fuse = "{fuse}" }}', 'strategy.symbols=["SYN1"]', f"supervisor.max_restarts={max_restarts}",
        "supervisor.backoff_initial_ms=50", *sets])
    return p, fuse


def test_crash_looping_strategy_is_disabled_and_the_rest_runs_on(procs, run_dir):
    p, fuse = start_boom(procs, run_dir, 2)
    st = wait_for(lambda: (s := status(run_dir)) and s["actors"]["strategy"]["state"] == "failed" and s, 60,
                  "the strategy disabled")
    strat = st["actors"]["strategy"]
    assert strat["restarts"] == 2 and strat["pid"] is None
    assert strat["detail"].startswith("exit code 1: ValueError: boom: on_bar exploded on purpose "
                                      "(at tests/fixtures/boom_strategy.py:32 in on_bar); disabled: "
                                      "restart intensity exceeded (3 restarts within 60s, max_restarts=2)")
    assert p.poll() is None and st["phase"] == "running"
    for a in ("market-data", "paper-exchange", "state-publisher"):
        assert st["actors"][a]["state"] == "running" and st["actors"][a]["restarts"] == 0, a
    # its resting orders (one per incarnation) are cancelled at the exchange, its position is kept
    view = wait_for(lambda: (v := status_json(run_dir))["orders"] == {}
                    and v["actors"]["strategy"]["state"] == "failed" and v, 15, "orders cancelled in the view")
    assert view["positions"]["SYN1"]["qty"] == 10
    assert view["trading"]["strategy"] == "failed" and "restart intensity exceeded" in view["trading"]["strategy_detail"]
    wait_for(lambda: info(run_dir, "paper-exchange").get("open_orders") == 0, 10, "no open order at the exchange")
    assert "strategy failed: exit code 1: ValueError: boom" in monitor_screen(view)
    code, out, _ = ctl_text(run_dir, "status")
    assert code == 0 and re.search(r"^strategy\s+failed\s", out, re.M) and "ValueError: boom" in out
    assert "strategy FAILED (`ctl restart strategy`)" in out
    # the feed and the books keep running
    fseq = info(run_dir, "market-data")["fseq"]
    wait_for(lambda: info(run_dir, "market-data").get("fseq", 0) >= fseq + 20, 15, "the feed goes on")
    ev = [e for e in log_events(run_dir) if e["event"] == "actor disabled: restart intensity exceeded"]
    assert len(ev) == 1 and ev[0]["level"] == "error"

    # the operator pauses meanwhile: that is not an error, the strategy will read it when it starts
    rep = request(run_dir, "pause", timeout=3.0)
    assert rep.ok and rep.data["actors"]["strategy"] == {
        "ok": True, "skipped": "strategy is disabled (failed); `ctl restart strategy` re-enables it"}
    # the bug fixed, `ctl restart strategy` brings it back, paused as the operator left it
    os.unlink(fuse)
    code, out, err = ctl_text(run_dir, "restart", "strategy")
    assert code == 0 and "strategy re-enabled" in out, (out, err)
    wait_for(lambda: (field(run_dir, "actors", "strategy") or {}).get("state") == "running", 30, "strategy back")
    st = strategy_after_bars(run_dir, 20)
    assert st["positions"] == {"SYN1": 10} and st["state"] == "paused"
    ctl_ok(run_dir, "resume")
    wait_for(lambda: info(run_dir, "strategy").get("state") == "trading", 10, "the strategy trading")
    wait_for(lambda: status_json(run_dir)["trading"]["state"] == "trading", 10, "the view shows it trading")
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0


def test_flatten_on_disable_closes_the_disabled_strategys_positions(procs, run_dir):
    p, _fuse = start_boom(procs, run_dir, 1, "actors.strategy.flatten_on_disable=true")
    wait_for(lambda: (field(run_dir, "actors", "strategy") or {}).get("state") == "failed", 60, "strategy disabled")
    view = wait_for(lambda: (v := status_json(run_dir))["orders"] == {} and not v["positions"]
                    and v["trading"]["strategy"] == "failed" and v, 15, "flat, no open order")
    assert view["trading"]["state"] == "failed" and view["trading"]["paused"] is False
    assert any(e["event"] == "supervisor command done" and e["what"] == "disable strategy"
               for e in log_events(run_dir))
    ctl_ok(run_dir, "shutdown")
    assert p.wait(30) == 0
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    fills = db.execute("SELECT cl_id, side, qty FROM fills ORDER BY fill_id").fetchall()
    db.close()
    # the position it held was closed by the exchange's own flatten order
    assert fills[0][1:] == ("buy", 10) and fills[-1][0].startswith("flatten-") and fills[-1][1:] == ("sell", 10)

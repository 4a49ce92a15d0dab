"""The web dashboard's model (scripts/dashboard_model.py), by hand: no socket, no process."""

from __future__ import annotations

import json
import os
import stat

import pytest

from scripts import dashboard_model as m


def view(equity=1000.0, last=None, trades=(), **extra):
    s = {"run_id": "R1", "account": {"known": True, "equity": equity, "cash": 900.0, "unrealized": 1.5},
         "positions": {"BTC/USD": {"qty": 0.001, "avg_price": 100.0, "last": last or 101.0, "mtm": 0.001}},
         "market": {"last": {"BTC/USD": last or 101.0}}, "trades": list(trades)}
    s.update(extra)
    return s


# ------------------------------------------------------------------- page state
def test_first_state_pushes_every_key_then_only_what_changed():
    p = m.Page()
    first = p.update(view(), 5, 1000.0, now_s=10.0)
    assert first["t"] == "upd" and first["seq"] == 5 and first["pub_ms"] == 1000.0
    assert set(first["keys"]) == {"run_id", "account", "positions", "market", "trades"}
    assert first["pts"]["eq"] == [10.0, 1000.0] and first["pts"]["px"] == {"BTC/USD": [10.0, 101.0]}
    assert p.update(view(), 6, 1001.0, now_s=11.0) is None  # nothing the page shows changed
    upd = p.update(view(equity=1002.0), 7, 1002.0, now_s=12.0)
    assert list(upd["keys"]) == ["account"] and upd["pts"] == {"eq": [12.0, 1002.0]}


def test_unknown_keys_and_fractional_quantities_pass_through_and_gone_keys_are_said():
    p = m.Page()
    p.update(view(feed={"SYN1": {"status": "up"}}), 1, None, now_s=1.0)
    assert p.state["feed"] == {"SYN1": {"status": "up"}} and p.state["positions"]["BTC/USD"]["qty"] == 0.001
    upd = p.update(view(), 2, None, now_s=2.0)
    assert upd["gone"] == ["feed"] and "feed" not in p.state
    assert "feed" not in p.hello()["state"]


def test_a_new_publisher_that_knows_no_account_yet_keeps_the_last_figures():
    p = m.Page()
    p.update(view(equity=1234.0), 9, None, now_s=1.0)
    fresh = view(equity=0.0)
    fresh["account"] = {"known": False, "equity": 0.0, "cash": 0.0, "unrealized": 0.0}
    fresh["positions"] = {}
    upd = p.update(fresh, 1, None, now_s=2.0)
    assert upd is None or not {"account", "positions"} & set(upd["keys"])
    assert p.state["account"]["equity"] == 1234.0 and "BTC/USD" in p.state["positions"]
    upd = p.update(view(equity=1240.0), 2, None, now_s=3.0)  # the exchange reported: live figures again
    assert upd["keys"]["account"]["equity"] == 1240.0


def test_series_are_bounded_and_a_fast_feed_replaces_the_last_point():
    p = m.Page()
    for i in range(m.SERIES_MAX + 50):
        p.update(view(equity=1000.0 + i), i + 1, None, now_s=float(i))
    assert len(p.equity) == m.SERIES_MAX and p.equity[-1] == (float(m.SERIES_MAX + 49), 1000.0 + m.SERIES_MAX + 49)
    n = len(p.equity)
    p.update(view(equity=5.0), 10_000, None, now_s=m.SERIES_MAX + 49 + m.SAMPLE_MIN_S / 2)
    assert len(p.equity) == n and p.equity[-1][1] == 5.0


def test_fill_markers_only_for_new_fills():
    p = m.Page()
    t1 = {"fill_id": 1, "symbol": "S", "side": "buy", "price": 10.0, "qty": 1, "at_ns": 2_000_000_000}
    t2 = {"fill_id": 2, "symbol": "S", "side": "sell", "price": 11.0, "qty": 1, "at_ns": 3_000_000_000}
    first = p.update(view(trades=[t1]), 1, None, now_s=1.0)
    assert [f["fill_id"] for f in first["pts"]["fills"]] == [1] and first["pts"]["fills"][0]["t"] == 2.0
    second = p.update(view(trades=[t1, t2]), 2, None, now_s=2.0)
    assert [f["fill_id"] for f in second["pts"]["fills"]] == [2]
    assert [f["fill_id"] for f in p.hello()["series"]["fills"]] == [1, 2]


def test_link_pushes_only_changes_and_keeps_the_last_values():
    p = m.Page()
    p.update(view(equity=1234.5), 3, None, now_s=1.0)
    up = p.set_link(True, False, 1000, "", 1000.0)
    assert up["t"] == "link" and up["stale"] is False and up["last_msg_ms"] is None
    assert p.set_link(True, False, 2000, "", 1000.0) is None  # still live: nothing to say
    down = p.set_link(False, True, 5000, "no message for 3.1s", 1000.0)
    assert down["stale"] is True and down["last_msg_ms"] == 5000 and down["error"] == "no message for 3.1s"
    assert p.set_link(False, True, 5000, "no message for 3.1s", 1000.0) is None
    assert p.hello()["state"]["account"]["equity"] == 1234.5  # the last good values, never zeros


def test_status_pushed_when_it_changes():
    p = m.Page()
    assert p.set_status(None, "no supervisor running")["error"] == "no supervisor running"
    assert p.set_status(None, "no supervisor running") is None
    assert p.set_status({"phase": "running"})["status"] == {"phase": "running"}


# --------------------------------------------------------------------- controls
def test_check_control_accepts_the_page_commands_and_refuses_anything_else():
    assert m.check_control({"cmd": "pause"}) == ("pause", "")
    assert m.check_control({"cmd": "restart", "arg": "strategy"}, ["strategy", "market-data"]) == ("restart", "strategy")
    assert m.check_control({"cmd": "start", "arg": "default"}, configs=["default"]) == ("start", "default")
    bad = [({"cmd": "rm -rf"}, "unknown command 'rm -rf'"), ("pause", "JSON object"),
           ({"cmd": "pause", "arg": "x"}, "pause takes no argument"),
           ({"cmd": "restart", "arg": "nope"}, "restart: unknown actor 'nope'; one of: strategy"),
           ({"cmd": "start", "arg": "../../etc/passwd"}, "start: unknown config"),
           ({"cmd": "halt", "arg": 3}, "arg must be a string")]
    for body, want in bad:
        with pytest.raises(m.BadRequest, match=want.replace("(", r"\(")):
            m.check_control(body, ["strategy"], ["default"])


# ------------------------------------------------------------------------- runs
def _live_dir(d, run_ids):
    os.makedirs(d)
    with open(os.path.join(d, "runs.jsonl"), "w") as f:
        for i, rid in enumerate(run_ids):
            f.write(json.dumps({"run_id": rid, "mode": "live", "start": f"2025-01-0{i + 1}T00:00:00+00:00"}) + "\n")
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"run_id": run_ids[-1], "mode": "live"}, f)


def _backtest(base, rid, start):
    d = os.path.join(base, rid)
    os.makedirs(d)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"run_id": rid, "mode": "backtest"}, f)
    with open(os.path.join(d, "runs.jsonl"), "w") as f:
        f.write(json.dumps({"run_id": rid, "mode": "backtest", "start": start}) + "\n")
    for name in ("ledger.sqlite", "summary.json"):
        with open(os.path.join(d, name), "w") as f:
            f.write("{}")
    return d


def test_runs_of_both_directories_and_a_delete_plan_that_names_what_goes(tmp_path):
    live, bt = str(tmp_path / "run"), str(tmp_path / "run-backtest")
    _live_dir(live, ["L1", "L2"])
    os.makedirs(bt)
    b1 = _backtest(bt, "B1", "2025-02-01T00:00:00+00:00")
    b2 = _backtest(bt, "B2", "2025-02-02T00:00:00+00:00")
    rows = m.run_rows([live, bt, str(tmp_path / "missing")], current={"B2"}, running={"B2"})
    assert [r["run_id"] for r in rows] == ["B2", "B1", "L2", "L1"]  # newest first
    by = {r["run_id"]: r for r in rows}
    assert by["B1"]["deletable"] and not by["B2"]["deletable"] and by["B2"]["keep"] == "the current run"
    assert by["B2"]["running"] and not by["B1"]["running"]
    assert not by["L1"]["deletable"] and "ledger" in by["L1"]["keep"]
    plan = m.delete_plan(rows, ["B1"])
    assert plan["runs"] == [{"run_id": "B1", "dir": b1, "files": ["ledger.sqlite", "run.json", "runs.jsonl",
                                                                   "summary.json"]}]
    assert "ledger.sqlite" in plan["text"] and b1 in plan["text"]
    for ids, want in ((["L1"], "live runs share"), (["B2"], "the current run"), (["X"], "no run 'X'"),
                      ([], "non-empty list"), ("B1", "non-empty list")):
        with pytest.raises(m.BadRequest, match=want):
            m.delete_plan(rows, ids)
    # A file that appeared after the confirmation: the confirmed plan no longer says what goes.
    with open(os.path.join(b1, "new.csv"), "w") as f:
        f.write("x")
    with pytest.raises(m.BadRequest, match="changed since the confirmation"):
        m.delete_runs(plan, m.run_rows([live, bt], {"B2"}, {"B2"}))
    assert os.path.isdir(b1)
    plan = m.delete_plan(m.run_rows([live, bt], {"B2"}, {"B2"}), ["B1"])
    assert m.delete_runs(plan, m.run_rows([live, bt], {"B2"}, {"B2"})) == ["B1"]
    assert not os.path.exists(b1) and os.path.isdir(b2) and os.path.exists(os.path.join(live, "runs.jsonl"))


# ------------------------------------------------------------------------- logs
def test_log_tail_filters_by_process_and_level(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "supervisor.jsonl").write_text(
        json.dumps({"event": "a", "level": "info", "timestamp": "2025-01-01T00:00:01"}) + "\n"
        + json.dumps({"event": "b", "level": "error", "timestamp": "2025-01-01T00:00:03"}) + "\n")
    (logs / "strategy.jsonl").write_text(
        json.dumps({"event": "c", "level": "warning", "timestamp": "2025-01-01T00:00:02"}) + "\n{\"half")
    out = m.log_tail(str(tmp_path))
    assert out["processes"] == ["strategy", "supervisor"] and [e["event"] for e in out["events"]] == ["a", "c", "b"]
    assert [e["event"] for e in m.log_tail(str(tmp_path), level="warning")["events"]] == ["c", "b"]
    assert [e["event"] for e in m.log_tail(str(tmp_path), process="strategy")["events"]] == ["c"]
    assert [e["event"] for e in m.log_tail(str(tmp_path), n=1)["events"]] == ["b"]
    for kw, want in (({"level": "loud"}, "unknown level"), ({"process": "../x"}, "bad process"), ({"n": 0}, "1..5000")):
        with pytest.raises(m.BadRequest, match=want):
            m.log_tail(str(tmp_path), **kw)
    assert m.log_tail(str(tmp_path / "none")) == {"processes": [], "events": []}


# -------------------------------------------------------------------- backtests
def test_backtest_result_equity_drawdown_and_trades(tmp_path):
    (tmp_path / "equity.csv").write_text("ts,time,equity\n1000000000,x,100\n2000000000,x,120\n3000000000,x,90\n")
    (tmp_path / "trades.csv").write_text("symbol,qty,pnl\nGOOG,100,-10.5\nGOOG,0.5,3\n")
    (tmp_path / "summary.json").write_text(json.dumps({"fills": 2}))
    r = m.backtest_result(str(tmp_path))
    assert r["summary"] == {"fills": 2} and r["columns"] == ["symbol", "qty", "pnl"]
    assert r["equity"] == [[1.0, 100.0, 0.0], [2.0, 120.0, 0.0], [3.0, 90.0, -0.25]]
    assert r["trades"] == [{"symbol": "GOOG", "qty": 100, "pnl": -10.5}, {"symbol": "GOOG", "qty": 0.5, "pnl": 3}]


def test_progress_and_backtest_params():
    assert m.parse_progress(b"\r[###   ] 1,024/2,148 bars  5 bars/s\r[####] 2,048/2,148 bars") == (2048, 2148)
    assert m.parse_progress(b"nothing") is None
    assert m.backtest_sets({"strategy.params": "{ fast = 5 }", "exchange.slippage_bps": 2}) == [
        "strategy.params={ fast = 5 }", "exchange.slippage_bps=2"]
    for params, want in (({"service.run_dir": "/"}, "not in \\[service\\]"), ({"x": 1}, "bad key"),
                         ({"a.b": "1\n2"}, "one line"), ([1], "params must be")):
        with pytest.raises(m.BadRequest, match=want):
            m.backtest_sets(params)


# --------------------------------------------------------------------- security
def test_guard_host_token_and_cross_site_posts():
    g = m.Guard("127.0.0.1", 8765, None, csrf="s3cret")
    assert g.host_ok("127.0.0.1:8765") and g.host_ok("localhost:8765")
    assert not g.host_ok("evil.example:8765") and not g.host_ok(None)  # DNS rebinding
    assert g.token_ok(None)
    good = {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765", "x-csrf-token": "s3cret",
            "sec-fetch-site": "same-origin"}
    assert g.post_ok(good) is None
    assert "cross-site" in g.post_ok({**good, "origin": "http://evil.example"})
    assert "cross-site" in g.post_ok({**good, "sec-fetch-site": "cross-site"})
    assert "X-CSRF-Token" in g.post_ok({**good, "x-csrf-token": "guess"})
    assert "X-CSRF-Token" in g.post_ok({"host": "127.0.0.1:8765"})
    t = m.Guard("0.0.0.0", 8765, "tok")
    assert t.host_ok("anything:1") and t.token_ok("tok") and not t.token_ok("tok2") and not t.token_ok(None)


def test_token_made_once_and_private(tmp_path):
    path = str(tmp_path / "sub" / "dashboard.token")
    tok, made = m.load_or_make_token(path)
    assert made and len(tok) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert m.load_or_make_token(path) == (tok, False)


def test_only_new_trades_are_pushed_and_the_list_keeps_the_views_length():
    p = m.Page()

    def tr(i):
        return {"fill_id": i, "symbol": "S", "side": "buy", "price": 1.0, "qty": 1, "at_ns": i}

    p.update(view(trades=[tr(1), tr(2), tr(3)]), 1, None, now_s=1.0)
    page = list(p.state["trades"])
    upd = p.update(view(trades=[tr(2), tr(3), tr(4), tr(5)][-3:]), 2, None, now_s=2.0)  # bounded at 3
    assert "trades" not in upd["keys"] and upd["trades_add"] == [tr(4), tr(5)] and upd["trades_len"] == 3
    page = (page + upd["trades_add"])[-upd["trades_len"]:]  # what the page does
    assert page == p.state["trades"] == [tr(3), tr(4), tr(5)]
    assert m._appended([tr(1)], [tr(9)]) == [tr(9)]  # nothing in common: all of it

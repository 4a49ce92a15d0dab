"""What an operator reads: the monitor's screen (scripts/monitor.py render()) and
`ctl status` (scripts/ctl.py render_status()), from plain state dicts."""

from __future__ import annotations

import re
import time

import pytest
from rich.console import Console

from scripts.ctl import render_status
from scripts.monitor import render

pytestmark = pytest.mark.timeout(20)

NOW = time.time_ns()
ACTORS = ("market-data", "paper-exchange", "state-publisher", "strategy")
FAILED = ("exit code 1: ValueError: boom: on_bar exploded on purpose; disabled: restart intensity exceeded "
          "(3 restarts within 60s, max_restarts=2); `ctl restart strategy` re-enables it")


def view(npos=6, norders=5, ntrades=30, **trading):
    """A state-publisher view (the shape of status.json) with some of everything."""
    t = {"state": "trading", "known": True, "paused": False, "halted": False, "flattening": False,
         "strategy": "running", "strategy_detail": ""}
    t.update(trading)
    actors = {n: {"state": "running", "pid": 1000 + i, "restarts": 0, "detail": "", "since_ns": NOW - 10**9}
              for i, n in enumerate(ACTORS)}
    if t["strategy"] == "failed":
        actors["strategy"].update(state="failed", restarts=3, detail=FAILED)
    return {
        "run_id": "20250101T120000-abcdef", "trading": t, "actors": actors,
        "account": {"known": True, "cash": 987_654.32, "equity": 1_001_234.56, "initial_cash": 1_000_000.0,
                    "realized": 1_234.5, "unrealized": -321.09, "fees": 45.6, "gross_exposure": 250_000.0},
        "positions": {f"SYM{i}": {"qty": -50 * i if i % 2 else 100 * i, "avg_price": 101.2345, "last": 102.5,
                                  "mtm": 12_345.67, "market_value": 1_234_567.89} for i in range(1, npos + 1)},
        "orders": {str(i): {"cl_id": f"1a2b3c-{i}", "symbol": "SYM1", "side": "buy", "qty": 10, "filled": 0,
                            "type": "limit", "price": 99.5, "status": "new"} for i in range(1, norders + 1)},
        # market time runs ahead of the wall clock (synthetic bars): 2031, while at_ns is now
        "trades": [{"fill_id": i, "symbol": "SYM1", "side": "buy", "qty": 10, "price": 100.25, "fee": 0.5,
                    "realized": 0.0, "position": 10, "ts": 1_924_000_000 * 10**9, "at_ns": NOW - i * 10**6}
                   for i in range(ntrades)],
        "performance": {"total_return": 0.0012, "max_drawdown": 0.0034, "sharpe": 1.23, "win_rate": 0.55,
                        "trades": 20, "fills": 40, "complete": True},
        "instruments": {"count": 6, "option_mappings": 0}, "counters": {"snapshots": 1},
    }


def screen(state, stale=False, age=None, error=""):
    con = Console(width=80, height=24, record=True, color_system=None)
    con.print(render(state, 42, stale, age, error, now_ns=NOW))
    return con.export_text().rstrip("\n").split("\n")


@pytest.mark.parametrize("npos", [3, 6, 12])
def test_monitor_fits_80x24_account_actors_and_positions_first(npos):
    lines = screen(view(npos=npos))
    assert len(lines) <= 24 and max(len(x) for x in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "equity 1,001,234.56" in text and "realized" in text and "gross exposure 250,000.00" in text
    assert all(re.search(rf"^{a}\s+running", text, re.M) for a in ACTORS)
    shown = [i for i in range(1, npos + 1) if re.search(rf"^SYM{i}\s", text, re.M)]
    if len(shown) < npos:  # what does not fit is counted, not silently dropped
        assert f"{npos - len(shown)} more" in text and len(shown) >= 5
    else:
        assert "open orders" in text and "performance" in text  # the rest as space allows


def test_monitor_fits_80x24_with_every_extra_line_at_once():
    state = view(npos=14, state="failed", strategy="failed", strategy_detail=FAILED, halted=True)
    lines = screen(state, stale=True, age=9.0, error="no heartbeat from the state-publisher for 9.0s")
    assert len(lines) <= 24 and max(len(x) for x in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "STALE 9.0s" in text and "HALTED" in text and "strategy failed: exit code 1" in text
    assert "SYM1 " in text and "more" in text


def test_monitor_times_are_wall_clock_dates_in_one_named_zone():
    text = "\n".join(screen(view(npos=1, norders=0)))
    zone = time.strftime("%Z", time.localtime(NOW / 1e9))
    today = time.strftime("%Y-%m-%d", time.localtime(NOW / 1e9))
    assert re.search(rf"{today} \d\d:\d\d:\d\d {zone}", text.splitlines()[0])  # the header names the zone
    stamps = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)
    assert len(stamps) >= 6 and all(s.startswith(today) for s in stamps)  # trades at wall-clock, not 2031


@pytest.mark.parametrize("trading,needles", [
    ({"state": "paused", "paused": True}, ["PAUSED", "paper-exchange  running, paused", "`ctl resume`"]),
    ({"state": "halted", "halted": True, "paused": True}, ["HALTED (kill switch)", "running, halted",
                                                          "`ctl unhalt`"]),
    ({"state": "flattening", "flattening": True, "paused": True}, ["FLATTENING", "running, flattening"]),
    ({"state": "failed", "strategy": "failed", "strategy_detail": FAILED},
     ["STRATEGY FAILED", "strategy        FAILED", "strategy failed: exit code 1: ValueError: boom"]),
    ({"state": "unknown", "known": False}, ["not reported by the exchange yet"]),
])
def test_monitor_shows_every_trading_state(trading, needles):
    lines = screen(view(**trading))
    text = "\n".join(lines)
    assert len(lines) <= 24
    for n in needles:
        assert n in text, f"{n!r} not on screen:\n{text}"
    assert "trading active" not in text


def test_monitor_shows_stale_with_its_age():
    text = "\n".join(screen(view(), stale=True, age=3.25, error="no heartbeat"))
    assert "STALE 3.2s" in text and "stale: no heartbeat" in text and "live" not in text.splitlines()[0]


def status_reply(**exchange):
    actors = {}
    for i, n in enumerate(ACTORS):
        actors[n] = {"state": "running", "pid": 2000 + i, "restarts": 0, "uptime_s": 12.5, "heartbeat_age_s": 0.1,
                     "info": {"instruments": 2}, "status": {}}
    actors["paper-exchange"]["status"] = {"orders": 120, "fills": 118, "bars": 4567, "open_orders": 2,
                                          "paused": False, "halted": False, "flattening": False,
                                          "equity": 1_000_123.45, "previous_run_id": "20250101T110000-123456",
                                          **exchange}
    actors["strategy"].update(state="failed", pid=None, uptime_s=None, heartbeat_age_s=None, restarts=3,
                              detail=FAILED)
    return {"run_id": "20250101T120000-abcdef", "pid": 1999, "phase": "running", "uptime_s": 12.6,
            "since": "2025-01-01T12:00:00", "actors": actors}


def test_ctl_status_wraps_long_info_instead_of_cutting_it():
    data = status_reply(paused=True)
    text = render_status(data, width=80)
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= 80, text
    flat = " ".join(x.strip() for x in lines)
    # every field of the exchange's info is there whole (it used to end at "paused=True, hal")
    for field in ("orders=120", "paused=True", "halted=False", "flattening=False", "equity=1000123.45",
                  "previous_run_id=20250101T110000-123456"):
        assert field in flat, field
    assert "trading  PAUSED (`ctl resume`); strategy FAILED (`ctl restart strategy`)" in text
    assert re.search(r"^strategy\s+failed\s", text, re.M) and "ValueError: boom" in flat
    # --wide: one line per actor, nothing cut
    wide = render_status(data, width=None).splitlines()
    ex = next(x for x in wide if x.startswith("paper-exchange"))
    assert "previous_run_id=20250101T110000-123456" in ex and len(ex) > 80
    st = next(x for x in wide if x.startswith("strategy"))
    assert "ValueError: boom" in st and "`ctl restart strategy` re-enables it" in st


def test_ctl_status_says_halted_and_how_to_lift_it():
    text = render_status(status_reply(halted=True, paused=True), width=80)
    assert "HALTED (kill switch; `ctl unhalt` lifts it)" in text


def test_monitor_prints_fractional_quantities_whole_and_never_rounds_them_to_cents():
    v = view(npos=2, norders=1, ntrades=1)
    v["positions"]["SYM1"]["qty"] = 0.015  # 0.015 BTC: not "0.01" or "0.02"
    v["positions"]["SYM2"]["qty"] = 1200
    v["trades"][0].update(qty=0.005, position=0.015)
    v["orders"]["1"].update(qty=0.123, filled=0)
    text = "\n".join(screen(v))
    assert re.search(r"^SYM1\s+0\.015\s", text, re.M) and re.search(r"^SYM2\s+1,200\s", text, re.M)
    assert " 0.123 " in text and " 0.005 " in text


def test_monitor_shows_a_stale_feed_prominently_and_still_fits():
    feed = {"known": True, "feed": "ccxt:binance", "state": "stale", "since_ns": NOW - 5 * 10**9,
            "last_data_ns": NOW - 6 * 10**9, "detail": "no data from ETH/USDT for over 10 s", "symbols": ["ETH/USDT"]}
    lines = screen({**view(npos=14), "feed": feed})
    assert len(lines) <= 24 and max(len(x) for x in lines) <= 80, "\n".join(lines)
    line = next(x for x in lines if x.startswith("feed "))
    assert "ccxt:binance" in line and " STALE " in line and "ETH/USDT" in line
    ok = next(x for x in screen({**view(), "feed": {**feed, "state": "ok", "detail": "", "symbols": []}})
              if x.startswith("feed "))
    assert "ok" in ok and "STALE" not in ok
    assert not any(x.startswith("feed ") for x in screen(view()))  # no feed-status yet: no line

"""config/options-intraday.toml live: the synthetic feed prices the generated option chain,
the strategy buys an option, the state view carries its greeks and the session; with the
market closed nothing is published."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal

import pytest

from tests.harness import wait_for
from tests.sup_util import start_supervisor, status

pytestmark = pytest.mark.timeout(120)
CONFIG = "config/options-intraday.toml"
FAST = ["market_data.rate_hz=10", "exchange.export_every_ms=0",
        'strategy.params={ underlying = "SYN1", range_bars = 5, qty = 1, max_trades = 1000 }']


def view(run_dir):
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def info(run_dir, actor):
    st = status(run_dir) or {"actors": {}}
    return st["actors"].get(actor, {}).get("status", {})


def test_live_options_trade_with_greeks_in_the_view(procs, run_dir):
    now = dt.datetime.now(dt.timezone.utc)
    if now.time() < dt.time(0, 6) or now.time() > dt.time(23, 44):
        pytest.skip("the demo session is closed in the minutes around midnight UTC")
    p = start_supervisor(procs, run_dir, config=CONFIG, sets=FAST)
    st = status(run_dir)
    # 9 strikes x 2 rights x 3 expiries on SYN1, mapped to it
    assert st["actors"]["market-data"]["info"]["option_mappings"] == 54
    held = wait_for(lambda: {s: g for s, g in view(run_dir).get("greeks", {}).get("positions", {}).items()},
                    60, "an option position with greeks in the view")
    sym, g = next(iter(held.items()))
    assert sym.startswith("SYN1-") and g["underlying"] == "SYN1"
    assert g["iv_source"] == "price" and 0 < abs(g["option"]["delta"]) < 1
    v = view(run_dir)
    assert v["greeks"]["portfolio"]["delta"]["SYN1"] != 0
    assert v["session"]["configured"] and v["session"]["state"] == "open"
    assert v["session"]["next_state"] == "square-off"
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0


def test_a_closed_market_publishes_nothing(procs, run_dir):
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).strftime("%a")
    p = start_supervisor(procs, run_dir, config=CONFIG, sets=[*FAST, f'session.days=["{tomorrow}"]'])
    wait_for(lambda: view(run_dir).get("session", {}).get("state") == "closed", 30, "the view says closed")
    wait_for(lambda: "dropped_out_of_session" in info(run_dir, "market-data"), 30, "market-data status")
    wait_for(lambda: info(run_dir, "market-data")["dropped_out_of_session"] >= 20, 30, "bars held back")
    assert info(run_dir, "market-data")["fseq"] == 0  # not one bar or quote published
    assert view(run_dir)["session"]["next_state"] == "pre-open"
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0

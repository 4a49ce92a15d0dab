"""The options example end to end: config/options-backtest.toml over the shipped sample
(data/sample/options_intraday.csv), through the supervisor's command line, under both
kernels: square-off at 15:50 New York on both sides of the March DST change, cash
settlement of the options held through their expiry."""

from __future__ import annotations

import csv
import os

import pytest

from scripts import testkit

pytestmark = pytest.mark.timeout(180)
CONFIG = os.path.join(testkit.ROOT, "config", "options-backtest.toml")


def fills(run_dir):
    with open(os.path.join(run_dir, "latest", "fills.csv"), newline="") as f:
        return list(csv.DictReader(f))


def run(procs, run_dir, *sets):
    rc, out, err = testkit.run_backtest(run_dir, sets, config=CONFIG, spawn=procs.spawn, timeout=150)
    assert rc == 0, err[-3000:]
    return out


def test_square_off_across_dst_and_the_same_fills_under_both_kernels(procs, run_dir):
    run(procs, run_dir)
    rows = fills(run_dir)
    first = open(os.path.join(run_dir, "latest", "fills.csv"), "rb").read()
    squared = [(r["time"], r["symbol"]) for r in rows if r["cl_id"].startswith("square-off-")]
    # 15:50 New York: 20:50 UTC before the change (EST), 19:50 UTC after it (EDT)
    assert [t for t, _ in squared] == ["2026-03-05T20:50:00Z", "2026-03-06T20:50:00Z", "2026-03-09T19:50:00Z",
                                       "2026-03-10T19:50:00Z"]
    # every entry is an option of the nearest live expiry: the expired ones left the chain
    entries = [r["symbol"] for r in rows if r["cl_id"].startswith("bt-")]
    assert [s.split("-")[1] for s in entries] == ["260306", "260306", "260309", "260313"]
    run(procs, run_dir, "service.kernel=actors")
    assert open(os.path.join(run_dir, "latest", "fills.csv"), "rb").read() == first


def test_options_held_through_expiry_settle_in_cash(procs, run_dir):
    run(procs, run_dir, 'session.square_off=""')
    rows = fills(run_dir)
    settled = {r["symbol"]: r for r in rows if r["cl_id"].startswith("expiry-")}
    # 16:00 New York on each expiry day; in the money at intrinsic, out of the money at 0, no fee
    assert settled["UND-260306-C-100"]["time"] == "2026-03-06T21:00:00Z"
    assert float(settled["UND-260306-C-100"]["price"]) > 0
    assert float(settled["UND-260306-P-100"]["price"]) == 0.0
    assert settled["UND-260309-P-102"]["time"] == "2026-03-09T20:00:00Z"
    assert all(float(r["fee"]) == 0.0 and r["position"] == "0" for r in settled.values())
    # the option still live at the end of the data is not settled
    assert "UND-260313-P-100" not in settled

"""Chaos: scripts/chaos.py kills actors at random (seeded) while the system trades and checks
after every recovery that nothing is lost (see its docstring). Here the short version
(30 kills) runs end to end, its checks are shown to catch tampered data, and Ctrl+C
is shown to shut everything down."""

import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time

import pytest

from bus.messages import Fill
from scripts.chaos import view_diff
from supervisor import lock_holder
from tests.harness import Procs
from scripts.testkit import check_published, read_ledger

pytestmark = pytest.mark.timeout(240)

KILLS = 30


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    """One short chaos run shared by the tests below: (exit code, summary, run dir, output)."""
    # Module-scoped (the run is shared), so it has its own Procs and leak check.
    run_dir = tempfile.mkdtemp(prefix="pb-", dir="/tmp")  # short: ipc paths
    summary = str(tmp_path_factory.mktemp("chaos") / "summary.json")
    procs = Procs()
    try:
        p = procs.python("scripts/chaos.py", "--kills", str(KILLS), "--seed", "1", "--run-dir", run_dir,
                         "--summary-json", summary, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = p.communicate(timeout=200)
        assert os.path.exists(summary), f"chaos.py wrote no summary (exit {p.returncode}): {out.decode()[-4000:]}"
        with open(summary) as f:
            s = json.load(f)
        yield p.returncode, s, run_dir, out.decode()
    finally:
        left = procs.cleanup()
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not left, f"chaos left processes running: {left}"


def test_thirty_kills_nothing_lost(chaos_run):
    rc, s, _, out = chaos_run
    assert rc == 0, out[-4000:]
    assert s["violations"] == []
    assert s["kills"] == KILLS and s["recoveries"] == KILLS, out[-4000:]
    # The seeded run exercises both signals on every actor kind, so no path is skipped.
    assert set(s["by_signal"]) == {"SIGKILL", "SIGSTOP"}
    assert set(s["by_actor"]) == {"market-data", "paper-exchange", "state-publisher", "strategy"}
    assert s["by_actor"]["paper-exchange"] >= 2  # the restart_with path
    # Not vacuous: fills flowed and every one seen on exec was checked against the ledger.
    assert s["fills_published"] >= 2 * KILLS
    assert s["fills_checked"] == s["fills_published"]
    assert s["ledger_fills"] >= s["fills_published"]
    assert s["recover_p50_ms"] is not None and s["recover_max_ms"] >= s["recover_p50_ms"]
    assert "violations   0" in out


def _tampered(run_dir, dst, sql):
    """A copy of the run's ledger at ``dst`` with ``sql`` applied (the original stays as it was)."""
    src = os.path.join(run_dir, "ledger.sqlite")
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    if sql:
        with sqlite3.connect(dst) as b:
            b.execute("PRAGMA foreign_keys=OFF")
            b.execute(sql)
    return dst


@pytest.mark.parametrize("sql, expect", [
    ("DELETE FROM fills WHERE fill_id = (SELECT MAX(fill_id) / 2 FROM fills)", "its fills sum to"),
    ("UPDATE positions SET qty = qty + 10 WHERE symbol = 'SYN1'", "replay of fills gives"),
    ("UPDATE fills SET price = price + 0.01 WHERE fill_id = 3", "gives"),
    ("UPDATE orders SET filled = qty + 10 WHERE order_id = 2", "its fills sum to"),
    ("UPDATE orders SET status = 'new' WHERE order_id = 2", "has status new with 10 of 10 filled"),
])
def test_ledger_checks_catch_tampering(chaos_run, tmp_path, sql, expect):
    _, _, run_dir, _ = chaos_run
    clean: list[str] = []
    read_ledger(_tampered(run_dir, str(tmp_path / "clean.sqlite"), None), clean)
    assert clean == []
    bad: list[str] = []
    read_ledger(_tampered(run_dir, str(tmp_path / "bad.sqlite"), sql), bad)
    assert bad and any(expect in v for v in bad), bad


def test_published_and_view_checks_catch_differences(chaos_run, tmp_path):
    _, _, run_dir, _ = chaos_run
    led = read_ledger(_tampered(run_dir, str(tmp_path / "clean.sqlite"), None), [])
    rows = list(led.fills.values())
    published = {r["fill_id"]: Fill(fill_id=r["fill_id"], order_id=r["order_id"], cl_id=r["cl_id"],
                                    symbol=r["symbol"], side=r["side"], qty=r["qty"], price=r["price"], fee=r["fee"])
                 for r in rows}
    v: list[str] = []
    assert check_published(published, led, v) == len(rows) and v == []
    f = rows[0]
    published[f["fill_id"]] = Fill(fill_id=f["fill_id"], order_id=f["order_id"], cl_id=f["cl_id"],
                                   symbol=f["symbol"], side=f["side"], qty=f["qty"] + 1, price=f["price"])
    published[10**9] = Fill(fill_id=10**9, order_id=1, cl_id="x", symbol="SYN1", side="buy", qty=1, price=1.0)
    check_published(published, led, v)
    assert any("differs from the ledger in qty" in x for x in v) and any("not in the ledger" in x for x in v), v

    acct = led.acct
    state = {"positions": {s: {"qty": p.qty, "avg_price": p.avg_price, "realized": p.realized, "fees": p.fees}
                           for s, p in acct.positions.items() if p.qty},
             "account": {"known": True, "cash": round(acct.cash, 6), "realized": acct.realized, "fees": acct.fees},
             "orders": {str(i): {} for i in led.open_ids}}
    assert view_diff(state, led) == []
    state["account"]["cash"] += 0.01
    state["orders"]["999999"] = {}
    diff = view_diff(state, led)
    assert any(d.startswith("account.cash") for d in diff) and any(d.startswith("open orders") for d in diff), diff


def test_ctrl_c_shuts_everything_down(procs, run_dir):
    # Started with SIGINT ignored, as a `cmd &` of a non-interactive shell is (CI, scripts):
    # Ctrl+C / kill -INT must still stop it in order.
    p = procs.python("scripts/chaos.py", "--minutes", "5", "--seed", "7", "--run-dir", run_dir,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    # Wait for the first completed kill round on the script's output (a pipe, with a deadline).
    buf = b""
    deadline = time.monotonic() + 60
    while b"kill   1:" not in buf:
        left = deadline - time.monotonic()
        assert left > 0 and p.poll() is None, buf.decode()
        if select.select([p.stdout], [], [], left)[0]:
            chunk = os.read(p.stdout.fileno(), 65536)
            assert chunk, buf.decode()
            buf += chunk
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    text = (buf + out).decode()
    assert p.returncode == 130, text
    assert "stopped early: interrupted" in text and "violations   0" in text, text
    assert lock_holder(run_dir) is None  # the supervisor is gone
    # procs' teardown then proves the supervisor and all four actors are gone.
    assert procs.leftovers() == [], "processes survived chaos.py's shutdown"


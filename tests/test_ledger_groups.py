"""The ledger's group transactions (backtests): a refused order insert costs the group nothing;
a write of several statements that fails is not kept in part."""

from __future__ import annotations

import sqlite3

import pytest

from actors.ledger import Ledger
from bus.messages import OrderInfo


def order(oid: int, cl_id: str) -> OrderInfo:
    return OrderInfo(order_id=oid, cl_id=cl_id, symbol="AAA", side="buy", qty=1, order_type="market", ts=1)


def fill(fid: int, oid: int, qty: int = 1) -> tuple:
    return (fid, oid, f"c{oid}", "AAA", "buy", qty, 10.0, 0.0, 1, 1.0, qty, 0.0)


def test_a_reused_cl_id_in_a_group_keeps_the_group_and_sqlites_message(tmp_path):
    led = Ledger(str(tmp_path / "ledger.sqlite"))
    led.start_run("r", "{}", 1000.0, mode="backtest")
    led.group_commits()
    led.insert_order(order(1, "c1"), None)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: orders.cl_id"):
        led.insert_order(order(2, "c1"), None)
    led.insert_order(order(3, "c3"), None)
    led.flush()
    assert [r["order_id"] for r in led.open_orders()] == [1, 3]
    led.close()


def test_a_fill_that_fails_a_constraint_leaves_no_part_of_itself(tmp_path):
    """record_fill is three statements: a constraint failing in the second must not keep the
    first (a fill without its order's update) in the group transaction."""
    path = str(tmp_path / "ledger.sqlite")
    led = Ledger(path)
    led.start_run("r", "{}", 1000.0, mode="backtest")
    led.insert_order(order(1, "c1"), None)  # committed before the group starts
    led.group_commits()
    led.record_fill(fill(1, 1), (1, "filled", 1, "filled"), ("AAA", 1, 10.0, 0.0, 0.0))
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL constraint failed: positions.avg_price"):
        # the fill row and the order update go in, then the position breaks NOT NULL
        led.record_fill(fill(2, 1), (1, "filled", 1, "filled"), ("AAA", 2, None, 0.0, 0.0))
    led.flush()  # nothing left to commit: the group was rolled back whole, not kept with half a fill
    led.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT fill_id FROM fills").fetchall() == []
    db.close()

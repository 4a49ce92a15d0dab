"""The ledger's invariants, checked one way by scripts/chaos.py and by the crash and disk tests.

``read_ledger`` opens ``ledger.sqlite`` read-only in one read transaction (a
consistent snapshot even while the exchange writes) and reports every broken
invariant as a sentence in ``violations``:

- ``PRAGMA integrity_check`` is ok;
- each fill's ``position``/``realized`` equals a replay of the fills table
  through ``actors.accounting.Account``, and the positions table equals the
  replay (qty, avg price, realized, fees);
- per order: sum(fill qty) == filled <= qty, status "filled" exactly when
  filled == qty, and every fill matches its order (cl_id, symbol, side);
- no cl_id is used twice.

``check_published`` adds: every Fill seen on the exec stream is in the ledger,
field for field.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Any

from actors.accounting import Account
from bus.messages import Fill

OPEN = ("new", "partially-filled")  # actors/exchange_core.py OPEN
FILL_FIELDS = ("order_id", "cl_id", "symbol", "side", "qty", "price", "fee")


@dataclass
class LedgerState:
    fills: dict[int, sqlite3.Row]  # fill_id -> row, in fill_id order
    orders: dict[int, sqlite3.Row]  # order_id -> row
    acct: Account  # the replay of every fill
    open_ids: set[int]  # order_ids still open (new, partially-filled)
    runs: list[dict[str, Any]]  # runs table: run_id, previous_run_id, in order

    @property
    def open_orders(self) -> int:
        return len(self.open_ids)

    def held(self) -> dict[str, int]:
        """Non-flat positions of the replay: symbol -> qty."""
        return {s: p.qty for s, p in self.acct.positions.items() if p.qty}


def close_enough(a: float, b: float, tol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=tol)


def read_ledger(path: str, violations: list[str]) -> LedgerState:
    """Check the ledger's invariants (appending to ``violations``) and return its replay."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("BEGIN")  # one read transaction: a consistent snapshot of every table
        ic = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if ic != ["ok"]:
            violations.append(f"ledger integrity_check: {ic[:5]}")
        initial = float(db.execute("SELECT value FROM meta WHERE key = 'initial_cash'").fetchone()[0])
        orders = {r["order_id"]: r for r in db.execute("SELECT * FROM orders")}
        fills = {r["fill_id"]: r for r in db.execute("SELECT * FROM fills ORDER BY fill_id")}
        table = {r["symbol"]: r for r in db.execute("SELECT * FROM positions")}
        dups = db.execute("SELECT cl_id, COUNT(*) FROM orders GROUP BY cl_id HAVING COUNT(*) > 1").fetchall()
        runs = [dict(r) for r in db.execute("SELECT run_id, previous_run_id FROM runs ORDER BY id")]
        db.execute("COMMIT")
    finally:
        db.close()
    for cl_id, n in dups:
        violations.append(f"ledger: cl_id {cl_id!r} used by {n} orders")
    acct = Account(initial)
    per_order: dict[int, int] = {}
    for fid, f in fills.items():
        res = acct.apply_fill(f["symbol"], f["side"], f["qty"], f["price"], f["fee"], f["ts"], f["multiplier"])
        if res.position != f["position"] or not close_enough(res.realized, f["realized"]):
            violations.append(f"ledger: fill {fid} records position {f['position']} realized {f['realized']}, "
                              f"replay gives {res.position} {res.realized}")
        per_order[f["order_id"]] = per_order.get(f["order_id"], 0) + f["qty"]
        o = orders.get(f["order_id"])
        if o is None:
            violations.append(f"ledger: fill {fid} references missing order {f['order_id']}")
        elif (o["cl_id"], o["symbol"], o["side"]) != (f["cl_id"], f["symbol"], f["side"]):
            violations.append(f"ledger: fill {fid} ({f['cl_id']} {f['symbol']} {f['side']}) does not match order "
                              f"{o['order_id']} ({o['cl_id']} {o['symbol']} {o['side']})")
    for oid, o in orders.items():
        got = per_order.get(oid, 0)
        if got != o["filled"] or o["filled"] > o["qty"]:
            violations.append(f"ledger: order {oid} ({o['cl_id']}) qty {o['qty']} filled {o['filled']}, "
                              f"its fills sum to {got}")
        if (o["status"] == "filled") != (o["filled"] == o["qty"]):
            violations.append(f"ledger: order {oid} ({o['cl_id']}) has status {o['status']} with "
                              f"{o['filled']} of {o['qty']} filled")
    for sym in sorted(set(table) | set(acct.positions)):
        t, p = table.get(sym), acct.positions.get(sym)
        if t is None or p is None:
            violations.append(f"ledger: positions table has {sym} {'missing' if t is None else 'without fills'}")
            continue
        if t["qty"] != p.qty or not all(close_enough(t[k], getattr(p, k)) for k in ("avg_price", "realized", "fees")):
            violations.append(f"ledger: positions[{sym}] = qty {t['qty']} avg {t['avg_price']} realized "
                              f"{t['realized']} fees {t['fees']}; replay of fills gives qty {p.qty} avg "
                              f"{p.avg_price} realized {p.realized} fees {p.fees}")
    open_ids = {oid for oid, o in orders.items() if o["status"] in OPEN}
    return LedgerState(fills, orders, acct, open_ids, runs)


def check_published(published: dict[int, Fill], led: LedgerState, violations: list[str]) -> int:
    """Every fill seen on exec is in the ledger, field for field. Returns how many were checked."""
    for fid, f in published.items():
        r = led.fills.get(fid)
        if r is None:
            violations.append(f"published fill {fid} ({f.symbol} {f.side} {f.qty} @ {f.price}) is not in the ledger")
            continue
        bad = [k for k in FILL_FIELDS if getattr(f, k) != r[k]]
        if bad:
            violations.append(f"published fill {fid} differs from the ledger in {', '.join(bad)}: "
                              f"{[getattr(f, k) for k in bad]} vs {[r[k] for k in bad]}")
    return len(published)

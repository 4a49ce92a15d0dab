"""fills.csv and trades.csv, for people, from the ledger: ISO-8601 UTC times beside the ns
columns, prices to the tick size's decimals, money to the instrument's precision
(report.decimals) and quantities to the lot size's decimals (bus/quantity.py: "10" for
whole-unit instruments, "0.015" for a 0.001 step); the ledger keeps the exact values.

Both are made from the ledger's fills as they are read, in chunks, and written
atomically (bus.fileio.atomic_write), so neither needs a long run's history in memory:
trades.csv by replaying the fills through a fresh account (actors/accounting.py), which
makes the same round trips the exchange's account made. Rows are formatted as
csv.writer would (a field is quoted only when it holds a comma, a quote or a line
break).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from actors import report
from actors.accounting import Account
from bus.fileio import atomic_write
from bus.quantity import fmt

ROWS = 10_000  # rows per chunk written
DAY_NS = 86_400 * 10**9
FILLS_HEADER = "fill_id,order_id,cl_id,symbol,side,qty,price,fee,ts,time,multiplier,position,realized\n"
TRADES_HEADER = "symbol,side,qty,entry_ts,entry_time,entry_price,exit_ts,exit_time,exit_price,pnl,fees,net_pnl\n"
Decimals = Callable[[str], "tuple[int, int]"]  # symbol -> (price decimals, money decimals)
QtyDecimals = Callable[[str], int]  # symbol -> quantity decimals (its lot size's)


def _whole(_symbol: str) -> int:
    return 0


def write_fills_csv(path: str, ledger: Any, decimals: Decimals, qty_decimals: QtyDecimals = _whole) -> None:
    atomic_write(path, _fills(ledger, _cached(decimals), _cached(qty_decimals)))


def write_trades_csv(path: str, ledger: Any, decimals: Decimals, initial_cash: float,
                     qty_decimals: QtyDecimals = _whole) -> None:
    atomic_write(path, _trades(ledger, _cached(decimals), initial_cash, _cached(qty_decimals)))


def _fills(ledger: Any, dec: Decimals, qdec: QtyDecimals = _whole) -> Iterator[bytes]:
    yield FILLS_HEADER.encode()
    iso = _Iso()
    rows: list[str] = []
    for r in ledger.iter_fills():  # FILL_COLS order (actors/ledger.py)
        pd, md = dec(r[3])
        qd = qdec(r[3])
        ts = r[8]
        rows.append(f"{r[0]},{r[1]},{_csv(r[2])},{_csv(r[3])},{r[4]},{fmt(r[5], qd)},{r[6]:.{pd}f},{r[7]:.{md}f},"
                    f"{ts},{iso(ts)},{r[9]!r},{fmt(r[10], qd)},{r[11]:.{md}f}\n")
        if len(rows) >= ROWS:
            yield "".join(rows).encode()
            rows = []
    yield "".join(rows).encode()


def _trades(ledger: Any, dec: Decimals, initial_cash: float, qdec: QtyDecimals = _whole) -> Iterator[bytes]:
    yield TRADES_HEADER.encode()
    iso = _Iso()
    acct = Account(initial_cash, keep_trips=False)
    rows: list[str] = []
    for r in ledger.iter_fills():
        for t in acct.apply_fill(r[3], r[4], r[5], r[6], r[7], r[8], r[9]).trips:
            pd, md = dec(t.symbol)
            rows.append(f"{_csv(t.symbol)},{t.side},{fmt(t.qty, qdec(t.symbol))},{t.entry_ts},{iso(t.entry_ts)},{t.entry_price:.{pd}f},"
                        f"{t.exit_ts},{iso(t.exit_ts)},{t.exit_price:.{pd}f},{t.pnl:.{md}f},{t.fees:.{md}f},"
                        f"{t.net:.{md}f}\n")
        if len(rows) >= ROWS:
            yield "".join(rows).encode()
            rows = []
    yield "".join(rows).encode()


def _cached(decimals: Any) -> Any:
    cache: dict[str, Any] = {}

    def dec(symbol: str) -> Any:
        d = cache.get(symbol)
        if d is None:
            d = cache[symbol] = decimals(symbol)
        return d
    return dec


def _csv(v: str) -> str:
    """A field as csv.writer writes it: quoted when it holds a comma, a quote or a line break."""
    if "," in v or '"' in v or "\n" in v or "\r" in v:
        return '"' + v.replace('"', '""') + '"'
    return v


class _Iso:
    """report.iso with the date part cached per UTC day: an export formats a time per row."""

    def __init__(self) -> None:
        self.day = -1
        self.prefix = ""

    def __call__(self, ts: int) -> str:
        day, ns = divmod(ts, DAY_NS)
        if day != self.day:
            self.day, self.prefix = day, report.iso(day * DAY_NS)[:11]
        s, sub = divmod(ns, 10**9)
        h, rest = divmod(s, 3600)
        m, sec = divmod(rest, 60)
        us = sub // 1000
        if us:
            return f"{self.prefix}{h:02d}:{m:02d}:{sec:02d}.{us:06d}Z"
        return f"{self.prefix}{h:02d}:{m:02d}:{sec:02d}Z"

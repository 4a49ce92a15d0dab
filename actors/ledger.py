"""The exchange's ledger: SQLite (WAL) at ``<run-dir>/ledger.sqlite``, the source of truth.

Tables:
  runs(id, run_id, start, end, config,        one row per exchange process start; previous_run_id
       previous_run_id, first_fill_id,        links a new supervisor run to the one before it;
       end_equity)                            first_fill_id / end_equity let `ctl runs` say what
                                              each run traded and how it ended
  meta(key, value)                            initial_cash, mode (live | backtest: a ledger
                                              belongs to one, actors/rundir.py), paused, halted
  orders(order_id, cl_id UNIQUE, ...)         every accepted order and its current status
  fills(fill_id, order_id, ...)               every fill, with the multiplier it was booked at
  positions(symbol, qty, avg_price, ...)      derived; written in the fill's transaction and
                                              cross-checked against a replay of fills on start
  events(id, ts, kind, detail)                what the exchange did on its own and why
                                              (kind "liquidation": the equity and margin figures)

Quantities (orders.qty/filled, fills.qty/position, positions.qty) are NUMERIC: whole units
are stored as integers, fractional ones (0.015 BTC) as REAL, each read back as the same
int or float it was written as (bus/quantity.py makes the exact sums). Ledgers written
before fractional quantities declared these columns INTEGER; SQLite's INTEGER affinity
stores a fraction as REAL just the same, so they open, keep their figures and take
fractional fills with no migration.

Every state change is one transaction: a fill, its order's new status and the
position it produces commit together (``record_fill``), before the caller
publishes anything. WAL with synchronous=NORMAL: a commit is in the WAL file
(the OS page cache) when ``COMMIT`` returns, so it survives SIGKILL of the
process; only an OS crash or power cut can lose the last transactions. A transaction that
fails (a full or read-only disk: bus.faults.DiskError) is rolled back whole, COMMIT included.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterator

from bus.faults import disk_error, inject

GROUP_WRITES = 4096  # writes per transaction after group_commits()

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER,
    config TEXT NOT NULL,
    previous_run_id TEXT,
    first_fill_id INTEGER,
    end_equity REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY,
    cl_id TEXT NOT NULL UNIQUE,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    qty NUMERIC NOT NULL CHECK (qty > 0),
    filled NUMERIC NOT NULL DEFAULT 0,
    order_type TEXT NOT NULL,
    price REAL,
    tif TEXT NOT NULL,
    status TEXT NOT NULL,
    ts INTEGER NOT NULL,
    day INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    fill_id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    cl_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty NUMERIC NOT NULL CHECK (qty > 0),
    price REAL NOT NULL,
    fee REAL NOT NULL,
    ts INTEGER NOT NULL,
    multiplier REAL NOT NULL,
    position NUMERIC NOT NULL,
    realized REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    symbol TEXT PRIMARY KEY,
    qty NUMERIC NOT NULL,
    avg_price REAL NOT NULL,
    realized REAL NOT NULL,
    fees REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

ORDER_COLS = ("order_id", "cl_id", "symbol", "side", "qty", "filled", "order_type", "price", "tif", "status", "ts",
              "day", "reason")
FILL_COLS = ("fill_id", "order_id", "cl_id", "symbol", "side", "qty", "price", "fee", "ts", "multiplier", "position",
             "realized")


INSERT_FILL = f"INSERT INTO fills({', '.join(FILL_COLS)}) VALUES ({', '.join('?' * len(FILL_COLS))})"


class _Kept(Exception):
    """txn(): an order insert failed on a constraint inside a group transaction, which stays;
    ``args[0]`` is SQLite's own error."""


class LedgerModeError(RuntimeError):
    """A live run on a backtest ledger, or the other way round."""


class Ledger:
    def __init__(self, path: str):
        self.path = path
        self._grouped = False  # group_commits(): many writes per transaction
        self._pending = 0  # writes in the open group transaction
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{path}: cannot switch the ledger to WAL mode (got {mode})")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            with self.txn():
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                # Ledgers written before these columns existed gain them.
                cols = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
                for col, typ in (("previous_run_id", "TEXT"), ("first_fill_id", "INTEGER"), ("end_equity", "REAL")):
                    if col not in cols:
                        self.db.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
        except sqlite3.Error as e:
            err = disk_error(e, "opening", path)
            if err is None:
                raise
            raise err from e
        self.run_row: int | None = None
        self.previous_run_id: str | None = None

    @contextmanager
    def txn(self, point: str = "ledger") -> Iterator[sqlite3.Connection]:
        """One transaction. On any failure, COMMIT's own included, it is rolled back: nothing of it
        stays. A full or read-only disk raises bus.faults.DiskError naming the ledger file.
        ``point`` names the write for the PAPERBUS_FAULT test hook. After ``group_commits()``
        the write joins the open group transaction instead (committed every GROUP_WRITES
        writes and at ``flush()``)."""
        try:
            if self._grouped:
                if not self.db.in_transaction:
                    self.db.execute("BEGIN IMMEDIATE")
                inject(point, self.path)  # the test hook fails the group as a full disk would
                try:
                    yield self.db
                except sqlite3.IntegrityError as e:
                    # A constraint (a reused cl_id) aborted that statement only. An order
                    # insert is one statement, so nothing of it stays: the group's earlier
                    # writes stand and its transaction goes on. A write of several
                    # statements (a fill, its order, its position) could leave a part, so
                    # there it is an error like any other: the whole group is rolled back.
                    if point != "ledger.order":
                        raise
                    raise _Kept(e) from None
                self._pending += 1
                if self._pending >= GROUP_WRITES:
                    self._pending = 0
                    self.db.execute("COMMIT")
                return
            self.db.execute("BEGIN IMMEDIATE")
            yield self.db
            inject(point, self.path)
            self.db.execute("COMMIT")
        except _Kept as k:
            raise k.args[0] from None
        except BaseException as e:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may already have rolled back (SQLITE_FULL/IOERR); the process exits anyway
            err = disk_error(e, "writing", self.path)
            if err is not None and err is not e:
                raise err from e
            raise

    def group_commits(self) -> None:
        """Backtests: from now on writes share transactions, GROUP_WRITES at a time. A live
        exchange commits every write before it answers or publishes (a crash must lose
        nothing it acknowledged); a backtest that dies is run again, never resumed, so it
        trades that for speed: one commit per thousands of orders and fills, not two per order."""
        self._grouped = True

    def flush(self) -> None:
        """Commit the open group transaction, if any (a reader in another process then sees it all)."""
        if self._grouped and self.db.in_transaction:
            self._pending = 0
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                err = disk_error(e, "writing", self.path)
                if err is not None:
                    raise err from e
                raise

    # ------------------------------------------------------------------ runs
    def start_run(self, run_id: str, config_json: str, initial_cash: float, mode: str = "live") -> float:
        """Record this process start; returns the ledger's initial cash (set by the first run only).

        A ledger belongs to one mode (``live`` or ``backtest``), recorded by its first
        run; a run of the other mode raises LedgerModeError before writing anything
        (the supervisor refuses such a directory earlier, actors/rundir.py: this is
        the last line of defence).

        ``previous_run_id`` is the last other run that wrote this ledger: a
        supervisor restarted after a crash resumes the same books under a new
        run_id, and this row says which run it continues. Exchange restarts
        within one run add rows with the same run_id and the same link.
        """
        have = self.meta("mode")
        if have is None:
            row = self.db.execute("SELECT config FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None:  # a ledger from before meta.mode: its runs' config says it
                try:
                    have = json.loads(row[0]).get("service", {}).get("mode")
                except (ValueError, AttributeError):
                    have = None
        if have is not None and have != mode:
            raise LedgerModeError(f"{self.path} is a {have} ledger; a {mode} run cannot use it")
        with self.txn() as db:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('initial_cash', ?)", (repr(float(initial_cash)),))
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('mode', ?)", (mode,))
            first_fill = db.execute("SELECT COALESCE(MAX(fill_id), 0) + 1 FROM fills").fetchone()[0]
            row = db.execute("SELECT run_id FROM runs WHERE run_id != ? ORDER BY id DESC LIMIT 1",
                             (run_id,)).fetchone()
            self.previous_run_id = row[0] if row else None
            cur = db.execute("INSERT INTO runs(run_id, start, config, previous_run_id, first_fill_id) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (run_id, time.time_ns(), config_json, self.previous_run_id, first_fill))
            self.run_row = cur.lastrowid
        return float(self.meta("initial_cash"))

    def end_run(self, equity: float | None = None) -> None:
        """The run ended in order; ``equity`` is the account's equity at that moment."""
        self.flush()
        if self.run_row is not None:
            with self.txn() as db:
                db.execute('UPDATE runs SET "end" = ?, end_equity = ? WHERE id = ?',
                           (time.time_ns(), equity, self.run_row))
            self.flush()

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_flags(self, **flags: bool) -> None:
        with self.txn() as db:
            for k, v in flags.items():
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, "1" if v else "0"))

    # ---------------------------------------------------------------- reads
    def orders(self) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT {', '.join(ORDER_COLS)} FROM orders ORDER BY order_id").fetchall()

    def fills(self) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT {', '.join(FILL_COLS)} FROM fills ORDER BY fill_id").fetchall()

    def iter_fills(self) -> Iterator[sqlite3.Row]:
        """Every fill, in order, read as it is consumed: a long run's fills never sit in memory at once."""
        return iter(self.db.execute(f"SELECT {', '.join(FILL_COLS)} FROM fills ORDER BY fill_id"))

    def open_orders(self) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT {', '.join(ORDER_COLS)} FROM orders WHERE status IN ('new', "
                               "'partially-filled') ORDER BY order_id").fetchall()

    def order_by_cl(self, cl_id: str) -> sqlite3.Row | None:
        """The order with this client order id (the UNIQUE index finds it), or None."""
        return self.db.execute(f"SELECT {', '.join(ORDER_COLS)} FROM orders WHERE cl_id = ?", (cl_id,)).fetchone()

    def positions(self) -> dict[str, sqlite3.Row]:
        return {r["symbol"]: r for r in self.db.execute("SELECT * FROM positions")}

    def next_ids(self) -> tuple[int, int]:
        o = self.db.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders").fetchone()[0]
        f = self.db.execute("SELECT COALESCE(MAX(fill_id), 0) FROM fills").fetchone()[0]
        return o + 1, f + 1

    # --------------------------------------------------------------- writes
    def insert_order(self, o: Any, day: int | None, reason: str = "") -> None:
        """``o`` is an OrderInfo; ``reason`` why it exists ("flatten": the exchange's own, so a
        restarted exchange still knows it is flattening). Raises sqlite3.IntegrityError on a reused cl_id."""
        with self.txn("ledger.order") as db:
            db.execute(
                "INSERT INTO orders(order_id, cl_id, symbol, side, qty, filled, order_type, price, tif, status, ts, "
                "day, reason, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (o.order_id, o.cl_id, o.symbol, o.side, o.qty, o.filled, o.order_type, o.price, o.tif, o.status,
                 o.ts, day, reason, time.time_ns()),
            )

    def update_orders(self, changes: list[tuple[int, str, int, str]]) -> None:
        """(order_id, status, filled, reason) for each order, in one transaction."""
        now = time.time_ns()
        with self.txn() as db:
            db.executemany("UPDATE orders SET status = ?, filled = ?, reason = ?, updated = ? WHERE order_id = ?",
                           [(st, filled, reason, now, oid) for oid, st, filled, reason in changes])

    def set_order_day(self, order_id: int, day: int) -> None:
        with self.txn() as db:
            db.execute("UPDATE orders SET day = ? WHERE order_id = ?", (day, order_id))

    def record_fill(self, fill: tuple, order: tuple[int, str, int, str], position: tuple) -> None:
        """One transaction: the fill row (FILL_COLS order), its order's status/filled and the position
        (symbol, qty, avg_price, realized, fees) after it."""
        oid, status, filled, reason = order
        with self.txn("ledger.fill") as db:
            db.execute(INSERT_FILL, fill)
            db.execute("UPDATE orders SET status = ?, filled = ?, reason = ?, updated = ? WHERE order_id = ?",
                       (status, filled, reason, time.time_ns(), oid))
            db.execute("INSERT OR REPLACE INTO positions(symbol, qty, avg_price, realized, fees) VALUES (?,?,?,?,?)",
                       position)

    def record_event(self, ts: int, kind: str, detail: str) -> None:
        """Something the exchange did on its own (a liquidation) and why, for the record."""
        with self.txn("ledger.event") as db:
            db.execute("INSERT INTO events(ts, kind, detail) VALUES (?, ?, ?)", (ts, kind, detail))

    def events(self, kind: str = "") -> list[sqlite3.Row]:
        q = "SELECT id, ts, kind, detail FROM events"
        return self.db.execute(q + (" WHERE kind = ? ORDER BY id" if kind else " ORDER BY id"),
                               (kind,) if kind else ()).fetchall()

    def close(self) -> None:
        """Close the connection; an open group transaction is rolled back (flush() first to keep it)."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass

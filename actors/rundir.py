"""Run directories: which mode one belongs to, what it holds, and the runs it has seen.

A run directory belongs to one mode, for good:

- **live**: one ledger (``ledger.sqlite``) that every live run in the directory
  continues: positions, cash and open orders carry over from run to run;
- **backtest**: one sub-directory per backtest, ``<dir>/<run_id>/``, each with its
  own ledger and results (fills.csv, trades.csv, equity.csv, summary.json,
  report.png), and a ``latest`` link to the newest. A backtest never writes next
  to another one's files, so a failed run cannot leave a mix of two runs.

Using a directory for the other mode lost data before this rule (a backtest
deleted a live ledger; a live run inherited a backtest's positions), so the
supervisor calls ``check_mode`` before it creates, locks or writes anything, and
refuses with a ``ModeError`` naming the directory and what its ledger holds.

Where the mode is recorded: ``run.json`` (the supervisor's record of the last
run, key ``mode``), the ledger's ``meta`` table (key ``mode``, written by the
exchange; a ledger from before that key is read from the config its runs
recorded), and ``runs.jsonl``, the supervisor's history of the directory's runs
(one line when a run starts, one when it ends). A directory with none of them is
new and takes the mode of the first run.

Everything here only reads (``sqlite3`` in read-only mode), except
``append_history`` and ``point_latest``; nothing needs a running supervisor, so
``ctl runs`` works on a stopped system.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

RUN_JSON = "run.json"
HISTORY = "runs.jsonl"
LEDGER = "ledger.sqlite"
LATEST = "latest"
SUMMARY = "summary.json"


class ModeError(Exception):
    """The run directory belongs to the other mode; the message says what it holds."""


# ------------------------------------------------------------------ reading


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _ro(path: str) -> sqlite3.Connection:
    # Read-only: looking at a directory must never create or change a file in it.
    # A WAL ledger without its -wal file was closed in order and nobody writes it:
    # open it immutable, or SQLite would create -wal and -shm beside it. With a
    # -wal file (a running or killed exchange) a plain read-only reader sees the
    # committed transactions and does not disturb the writer.
    immutable = "&immutable=1" if not os.path.exists(path + "-wal") else ""
    db = sqlite3.connect(f"file:{path}?mode=ro{immutable}", uri=True, timeout=2.0)
    db.row_factory = sqlite3.Row
    return db


def _cols(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def ledger_facts(path: str) -> dict[str, Any] | None:
    """What a ledger holds: mode, runs, fills, open positions, last run; None if there is none.

    An unreadable ledger is reported as such (``error``), never hidden: a
    directory whose ledger cannot be read is not "empty".
    """
    if not os.path.exists(path):
        return None
    try:
        db = _ro(path)
    except sqlite3.Error as e:
        return {"mode": None, "error": str(e), "runs": 0, "fills": 0, "positions": {}, "last_run": None}
    try:
        meta = {r[0]: r[1] for r in db.execute("SELECT key, value FROM meta")}
        mode = meta.get("mode")
        runs = db.execute("SELECT run_id, config FROM runs ORDER BY id").fetchall()
        if mode is None and runs:
            # Ledgers from before meta.mode: the config each run recorded says it.
            try:
                mode = json.loads(runs[-1]["config"]).get("service", {}).get("mode")
            except (ValueError, AttributeError):
                mode = None
        fills = db.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
        positions = {r["symbol"]: r["qty"] for r in db.execute("SELECT symbol, qty FROM positions WHERE qty != 0")}
        return {"mode": mode, "runs": len({r["run_id"] for r in runs}), "fills": fills, "positions": positions,
                "last_run": runs[-1]["run_id"] if runs else None}
    except sqlite3.Error as e:
        return {"mode": None, "error": str(e), "runs": 0, "fills": 0, "positions": {}, "last_run": None}
    finally:
        db.close()


def backtest_dirs(base: str) -> list[str]:
    """The per-run backtest directories under ``base``, oldest first (run ids sort by time)."""
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for n in names:
        p = os.path.join(base, n)
        if n != LATEST and os.path.isdir(p) and not os.path.islink(p):
            if read_json(os.path.join(p, RUN_JSON)).get("mode") == "backtest":
                out.append(p)
    return out


def dir_mode(run_dir: str) -> tuple[str | None, dict[str, Any] | None]:
    """(mode, ledger facts) of a directory: "live", "backtest" or None (new or empty)."""
    facts = ledger_facts(os.path.join(run_dir, LEDGER))
    mode = read_json(os.path.join(run_dir, RUN_JSON)).get("mode")
    if mode is None and facts is not None:
        mode = facts["mode"]
    if mode is None and backtest_dirs(run_dir):
        mode = "backtest"
    return mode, facts


def _holds(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return "no ledger"
    if facts.get("error"):
        return f"a ledger that cannot be read ({facts['error']})"
    pos = ", ".join(f"{s} {q:g}" for s, q in sorted(facts["positions"].items()))
    return (f"{facts['runs']} run{'s' * (facts['runs'] != 1)}, {facts['fills']} fill{'s' * (facts['fills'] != 1)}, "
            + (f"open positions {pos}" if pos else "no open position")
            + (f"; last run {facts['last_run']}" if facts.get("last_run") else ""))


def check_mode(run_dir: str, mode: str) -> None:
    """Refuse (ModeError) to use ``run_dir`` for ``mode`` if it belongs to the other mode.

    Called before anything in the directory is created, locked or written.
    """
    if not os.path.isdir(run_dir):
        return
    have, facts = dir_mode(run_dir)
    if facts is not None and facts.get("error") and have is None:
        raise ModeError(f"run directory {run_dir} holds {_holds(facts)}; nothing was changed")
    if have is None or have == mode:
        return
    if mode == "backtest":
        raise ModeError(
            f"run directory {run_dir} belongs to live trading: its ledger holds {_holds(facts)}. "
            f"A backtest never writes there; give it its own directory (--run-dir run-backtest). "
            f"Nothing was changed")
    runs = backtest_dirs(run_dir)
    what = (f"{len(runs)} backtest{'s' * (len(runs) != 1)}, latest {os.path.basename(runs[-1])}" if runs
            else f"a backtest ledger: {_holds(facts)}")
    raise ModeError(
        f"run directory {run_dir} belongs to backtests ({what}). A live run there would trade on from a "
        f"backtest's positions; give it its own directory (--run-dir run). Nothing was changed")


# ------------------------------------------------------------------ writing


def append_history(run_dir: str, record: dict[str, Any]) -> None:
    """One line of ``runs.jsonl``, in one O_APPEND write (a crash never leaves half a line)."""
    line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    fd = os.open(os.path.join(run_dir, HISTORY), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def point_latest(base: str, run_id: str) -> None:
    """``<base>/latest`` -> ``<run_id>``, replaced atomically (a reader never finds it missing)."""
    tmp = os.path.join(base, f".latest-{run_id}")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(run_id, tmp)
    os.replace(tmp, os.path.join(base, LATEST))


# ---------------------------------------------------------------- run history


def _history(run_dir: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(os.path.join(run_dir, HISTORY), "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a full disk: skip it, keep the rest
        if isinstance(rec, dict) and isinstance(rec.get("run_id"), str):
            out.setdefault(rec["run_id"], {}).update(rec)
    return out


def _ledger_runs(path: str) -> list[dict[str, Any]]:
    """Per run_id, from the ledger: start, end, previous run, fills it made, equity at its end."""
    if not os.path.exists(path):
        return []
    try:
        db = _ro(path)
    except sqlite3.Error:
        return []
    try:
        cols = _cols(db, "runs")
        extra = [c for c in ("first_fill_id", "end_equity") if c in cols]
        rows = db.execute(f'SELECT run_id, start, "end", previous_run_id{"".join(", " + c for c in extra)} '
                          "FROM runs ORDER BY id").fetchall()
        max_fill = db.execute("SELECT COALESCE(MAX(fill_id), 0) FROM fills").fetchone()[0]
    except sqlite3.Error:
        return []
    finally:
        db.close()
    runs: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = dict(r)
        cur = runs.get(d["run_id"])
        if cur is None:  # the first exchange start of this run
            runs[d["run_id"]] = {"run_id": d["run_id"], "start_ns": d["start"], "end_ns": d["end"],
                                 "previous_run_id": d["previous_run_id"], "first_fill_id": d.get("first_fill_id"),
                                 "end_equity": d.get("end_equity")}
        else:  # a restart of the exchange within the run: the last row says how it ended
            cur["end_ns"] = d["end"]
            cur["end_equity"] = d.get("end_equity")
    ordered = list(runs.values())
    for i, r in enumerate(ordered):
        first = r.pop("first_fill_id")
        nxt = ordered[i + 1].get("first_fill_id") if i + 1 < len(ordered) else max_fill + 1
        r["fills"] = (nxt - first) if first is not None and nxt is not None else None
    return ordered


def _iso(ns: int | None) -> str | None:
    if not ns:
        return None
    import datetime as dt
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).isoformat(timespec="seconds")


def list_runs(run_dir: str) -> list[dict[str, Any]]:
    """Every run of a run directory, live and backtest, oldest first.

    Each: run_id, previous_run_id, mode, start, end (ISO, UTC), exit_code, reason,
    fills, final_equity, dir. A value nobody recorded is None (a run that was
    killed has no end and no exit code), never a made-up zero.
    """
    out: list[dict[str, Any]] = []
    hist = _history(run_dir)
    top = read_json(os.path.join(run_dir, RUN_JSON))
    ledger = os.path.join(run_dir, LEDGER)
    mode, facts = dir_mode(run_dir)
    seen = set()
    for r in _ledger_runs(ledger):
        h = hist.get(r["run_id"], {})
        rec = top if top.get("run_id") == r["run_id"] else {}
        out.append({
            "run_id": r["run_id"], "previous_run_id": r["previous_run_id"],
            "mode": h.get("mode") or rec.get("mode") or (facts or {}).get("mode") or mode,
            "start": h.get("start") or rec.get("since") or _iso(r["start_ns"]),
            "end": h.get("end") or rec.get("ended") or _iso(r["end_ns"]),
            "exit_code": h.get("exit_code", rec.get("exit_code")), "reason": h.get("reason", rec.get("reason")),
            "fills": r["fills"],
            "final_equity": r["end_equity"] if r["end_equity"] is not None else h.get("final_equity"),
            "dir": run_dir,
        })
        seen.add(r["run_id"])
    # Runs the history knows but the ledger does not (the exchange never started).
    for rid, h in hist.items():
        if rid in seen:
            continue
        out.append({"run_id": rid, "previous_run_id": h.get("previous_run_id"), "mode": h.get("mode"),
                    "start": h.get("start"), "end": h.get("end"), "exit_code": h.get("exit_code"),
                    "reason": h.get("reason"), "fills": None, "final_equity": h.get("final_equity"),
                    "dir": run_dir})
        seen.add(rid)
    for d in backtest_dirs(run_dir):
        for r in list_runs(d):
            if r["run_id"] in seen:
                continue
            summary = read_json(os.path.join(d, SUMMARY))
            if r["final_equity"] is None and "final_equity" in summary:
                r["final_equity"] = summary["final_equity"]
            if r["fills"] is None and "fills" in summary:
                r["fills"] = summary["fills"]
            out.append(r)
            seen.add(r["run_id"])
    out.sort(key=lambda r: r["start"] or "")
    for r in out:  # money as a person reads it (the ledger keeps the exact figure)
        if isinstance(r["final_equity"], float):
            r["final_equity"] = round(r["final_equity"], 2)
    return out

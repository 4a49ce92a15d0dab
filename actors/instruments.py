"""Instrument master: the list of tradable instruments, loaded by market-data.

Sources (config ``market_data.instruments``):

- a CSV file with a header row; columns ``symbol, kind, tick_size`` are required,
  ``lot_size, multiplier, currency, min_qty, min_notional, base, venue_symbol`` optional,
  and options also need ``underlying, strike, expiry, right``. An empty cell takes the
  default. Kinds: equity, future, option, crypto, fx, perpetual. ``lot_size`` is the
  quantity step (0.001 for BTC/USDT: at most 9 decimals), ``min_qty`` a multiple of it.
- a TOML file with an array of tables ``[[instruments]]`` holding the same keys.
- ``"synthetic"``: one equity per ``market_data.symbols`` (tick 0.01).

Any problem (no instruments, a malformed row, a duplicate symbol, an option
whose underlying is not in the file) raises ``InstrumentError`` naming the file
and the row: a run never starts on a half-read master.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import tomllib
from typing import Any, Iterable

import msgspec

from actors.base import UserError
from bus.messages import Instrument
from bus.quantity import DECIMALS, exact, norm, off_step, to_atoms

FIELDS = ("symbol", "kind", "tick_size", "lot_size", "multiplier", "currency",
          "underlying", "strike", "expiry", "right", "settlement", "min_qty", "min_notional", "base",
          "venue_symbol")
REQUIRED = ("symbol", "kind", "tick_size")
OPTION_FIELDS = ("underlying", "strike", "expiry", "right")  # settlement (cash | physical) is optional
SYNTHETIC = "synthetic"


class InstrumentError(UserError, ValueError):
    """A bad instrument master; the message names the file and the row."""


def _check(raw: dict[str, Any], where: str) -> Instrument:
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise InstrumentError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InstrumentError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    # Empty CSV cells mean "default"; strict=False parses "0.01" and "100" from text.
    clean = {k: v for k, v in raw.items() if v not in (None, "")}
    for k in ("lot_size", "min_qty"):
        # "0.001" from a CSV cell, "1" stays an int (whole units print as integers).
        v = clean.get(k)
        if isinstance(v, str):
            try:
                clean[k] = int(v) if v.strip().lstrip("+").isdigit() else float(v)
            except ValueError:
                raise InstrumentError(f"{where}: {k} {v!r} is not a number") from None
    try:
        inst = msgspec.convert(clean, Instrument, strict=False)
    except msgspec.ValidationError as e:
        raise InstrumentError(f"{where}: {e}") from None
    lot = inst.lot_size
    if not exact(lot) or to_atoms(lot) <= 0:
        raise InstrumentError(f"{where}: {inst.symbol}: lot_size {lot!r} has more than {DECIMALS} decimals")
    inst.lot_size = norm(lot)
    if inst.min_qty:
        inst.min_qty = norm(inst.min_qty)
        if off_step(inst.min_qty, inst.lot_size):
            raise InstrumentError(f"{where}: {inst.symbol}: min_qty {inst.min_qty!r} is not a multiple of the "
                                  f"lot_size {inst.lot_size!r}")
    if inst.kind == "option":
        absent = [k for k in OPTION_FIELDS if clean.get(k) in (None, "")]
        if absent:
            raise InstrumentError(f"{where}: option {inst.symbol} needs {', '.join(absent)}")
        if not (math.isfinite(inst.strike) and inst.strike > 0):
            raise InstrumentError(f"{where}: option {inst.symbol}: strike must be a positive number")
        try:
            _dt.date.fromisoformat(inst.expiry)
        except ValueError:
            raise InstrumentError(f"{where}: option {inst.symbol}: expiry {inst.expiry!r} is not YYYY-MM-DD") from None
    else:
        extra = [k for k in (*OPTION_FIELDS, "settlement") if clean.get(k) not in (None, "")]
        if extra:
            raise InstrumentError(f"{where}: {inst.kind} {inst.symbol} cannot have {', '.join(extra)} "
                                  f"(only options do)")
    return inst


def _rows_csv(path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for row in reader:
            where = f"{path}: row {reader.line_num}"  # file line number, header is row 1
            if not row or all(not c.strip() for c in row):
                continue
            if row[0].lstrip().startswith("#"):
                continue
            if len(row) != len(header):
                raise InstrumentError(f"{where}: {len(row)} cells, header has {len(header)}")
            yield where, {h: c.strip() for h, c in zip(header, row)}


def _rows_toml(path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise InstrumentError(f"{path}: not valid TOML: {e}") from None
    extra = sorted(set(doc) - {"instruments"})
    if extra:
        raise InstrumentError(f"{path}: unknown top-level key(s) {', '.join(extra)}; expected [[instruments]]")
    items = doc.get("instruments", [])
    if not isinstance(items, list):
        raise InstrumentError(f"{path}: 'instruments' must be an array of tables ([[instruments]])")
    for i, item in enumerate(items, 1):
        where = f"{path}: row {i} ([[instruments]] entry {i})"
        if not isinstance(item, dict):
            raise InstrumentError(f"{where}: not a table")
        yield where, item


def _rows_json(path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """A live run's cached venue master (<run-dir>/instruments.json, actors/feed_api.py)."""
    import json

    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except ValueError as e:
        raise InstrumentError(f"{path}: not valid JSON: {e}") from None
    items = doc.get("instruments") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise InstrumentError(f"{path}: expected an object with an 'instruments' array (a live run's instruments.json)")
    for i, item in enumerate(items, 1):
        where = f"{path}: instruments[{i - 1}]"
        if not isinstance(item, dict):
            raise InstrumentError(f"{where}: not an object")
        yield where, item


def load(source: str, symbols: list[str] | None = None, base_dir: str | None = None) -> tuple[list[Instrument], int]:
    """Load the master; returns (instruments, number of option -> underlying mappings)."""
    if source == SYNTHETIC:
        out = []
        for i, s in enumerate(symbols or [], 1):
            out.append(_check({"symbol": s, "kind": "equity", "tick_size": 0.01},
                              f"market_data.symbols entry {i}"))
        return _finish(out, "synthetic instruments (market_data.symbols)", {})
    path = source
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    if not os.path.isfile(path):
        raise InstrumentError(f"instrument file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        rows = _rows_csv(path)
    elif ext == ".toml":
        rows = _rows_toml(path)
    elif ext == ".json":
        rows = _rows_json(path)
    else:
        raise InstrumentError(f"{path}: unknown instrument file type {ext!r} (use .csv, .toml or a live run's instruments.json)")
    out, where_of = [], {}
    try:
        for where, raw in rows:
            inst = _check(raw, where)
            out.append(inst)
            where_of[inst.symbol] = where
    except UnicodeDecodeError as e:
        raise InstrumentError(f"{path}: not UTF-8 text: {e}") from None
    return _finish(out, path, where_of)


def _finish(out: list[Instrument], what: str, where_of: dict[str, str]) -> tuple[list[Instrument], int]:
    if not out:
        raise InstrumentError(f"{what}: zero instruments")
    seen: dict[str, int] = {}
    for i, inst in enumerate(out):
        if inst.symbol in seen:
            raise InstrumentError(f"{where_of.get(inst.symbol, what)}: duplicate symbol {inst.symbol}")
        seen[inst.symbol] = i
    # where_of holds each symbol's last row: for a duplicate, the repeating row.
    mappings = 0
    for inst in out:
        if inst.kind != "option":
            continue
        if inst.underlying not in seen:
            raise InstrumentError(f"{where_of.get(inst.symbol, what)}: option {inst.symbol} maps to unknown "
                                  f"underlying {inst.underlying!r}")
        if inst.underlying == inst.symbol:
            raise InstrumentError(f"{where_of.get(inst.symbol, what)}: option {inst.symbol} is its own underlying")
        mappings += 1
    return out, mappings

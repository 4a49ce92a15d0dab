"""Render the reference tables of docs/PROTOCOL.md from the code.

    python scripts/protocol_doc.py            # rewrite the generated regions of docs/PROTOCOL.md
    python scripts/protocol_doc.py --check    # exit 1 (naming the stale regions) if the doc is out of date
    python scripts/protocol_doc.py --freeze   # write tests/protocol_schema_v<N>.json for a new SCHEMA_VERSION

Every message's fields (type, required, default, limits) come from the msgspec
catalogue in bus/messages.py through msgspec.inspect; a field's meaning is its
trailing ``# comment`` there (continued on comment-only lines below it). Socket
limits come from bus/sockets.py and bus/codec.py; reject codes, error codes and
order-update reasons from their tables in bus/messages.py; the state view's
schema from ``VIEW_FIELDS`` below (tests/test_protocol_doc.py checks it against
actors/state_view.py and a running state-publisher).

A generated region sits between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``; everything outside them is written by hand.

The frozen schema (--freeze) is what tests/test_protocol_evolution.py holds the
catalogue to: for one SCHEMA_VERSION, fields may only be added, with defaults.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tokenize
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import msgspec  # noqa: E402
import zmq  # noqa: E402
from msgspec import inspect as mi  # noqa: E402

from bus import messages as m  # noqa: E402
from bus.codec import MAX_BYTES  # noqa: E402
from bus.sockets import CLIENT_MAX_MSG, SPECS  # noqa: E402

DOC = os.path.join(ROOT, "docs", "PROTOCOL.md")
SOCK_NAMES = {zmq.PUB: "PUB", zmq.ROUTER: "ROUTER", zmq.XPUB: "XPUB"}
FROZEN = os.path.join(ROOT, "tests", "protocol_schema_v{v}.json")

# The state view (actors/state_view.py): path -> (JSON type, meaning). "<x>" is a
# map key (one entry per x), "[]" a list item. A new key of the view must be
# added here, or tests/test_protocol_doc.py fails naming it.
VIEW_FIELDS: dict[str, tuple[str, str]] = {
    "run_id": ("str", "the supervisor's run id"),
    "publisher": ("map", "the state-publisher process serving this view"),
    "publisher.name": ("str", "`state-publisher`"),
    "publisher.pid": ("int", "its pid: a new pid is a restarted publisher (resync)"),
    "publisher.heartbeat_ms": ("int", "`state-heartbeat` period when idle"),
    "publisher.started_ns": ("int", "when it started, ns"),
    "actors": ("map", "one entry per actor, from the supervisor's `events` stream"),
    "actors.<name>": ("map", "an actor"),
    "actors.<name>.state": ("str", "starting, ready, running, stopping, stopped, exited, restarting, failed"),
    "actors.<name>.pid": ("int", "its pid (0 when none)"),
    "actors.<name>.restarts": ("int", "restarts so far"),
    "actors.<name>.detail": ("str", "why it changed state (exit code, error), \"\" if nothing to say"),
    "actors.<name>.since_ns": ("int", "when it entered this state (envelope time of the event), ns"),
    "trading": ("map", "the trading state, never guessed"),
    "trading.known": ("bool", "false until the exchange reported its flags"),
    "trading.paused": ("bool", "the exchange takes no new orders (ctl pause, stop-and-close); survives restarts"),
    "trading.halted": ("bool", "kill switch (ctl halt): open orders cancelled, new ones rejected; only ctl unhalt lifts it"),
    "trading.flattening": ("bool", "flatten orders of the exchange's own are still open"),
    "trading.strategy": ("str", "the strategy actor's state (failed: disabled after crash-looping)"),
    "trading.strategy_detail": ("str", "why the strategy failed, \"\" otherwise"),
    "trading.state": ("str", "the first that holds: halted, flattening, paused, failed, trading, idle; unknown before the exchange reported"),
    "account": ("map", "the account as the exchange reports it, marked to the latest prices"),
    "account.known": ("bool", "false until the exchange first reported (the figures are then 0)"),
    "account.cash": ("float", "cash"),
    "account.equity": ("float", "cash + sum of qty * last * multiplier"),
    "account.initial_cash": ("float", "cash at the start of the ledger"),
    "account.realized": ("float", "realized PnL, before fees"),
    "account.unrealized": ("float", "sum of the positions' mtm (Total MTM)"),
    "account.fees": ("float", "fees paid"),
    "account.gross_exposure": ("float", "sum of abs(qty * last * multiplier)"),
    "account.account_type": ("str", "cash or margin ([exchange] account)"),
    "account.buying_power": ("float", "as the exchange last reported it (cash: cash less open buys; margin: "
                                      "equity less margin used and held by open orders)"),
    "account.ts": ("int", "market time of the exchange's last account update, ns (0 before one)"),
    "positions": ("map", "open positions only (qty != 0)"),
    "positions.<symbol>": ("map", "a position"),
    "positions.<symbol>.qty": ("int or float", "signed quantity (int for whole units)"),
    "positions.<symbol>.avg_price": ("float", "average entry price"),
    "positions.<symbol>.last": ("float", "mark: latest market price, else the exchange's mark, else avg_price"),
    "positions.<symbol>.mtm": ("float", "qty * (last - avg_price) * multiplier"),
    "positions.<symbol>.market_value": ("float", "qty * last * multiplier"),
    "positions.<symbol>.multiplier": ("float", "contract multiplier"),
    "positions.<symbol>.realized": ("float", "realized PnL in this symbol, before fees"),
    "positions.<symbol>.fees": ("float", "fees paid in this symbol"),
    "orders": ("map", "open orders (new, partially-filled) of every client, by order id"),
    "orders.<order_id>": ("map", "an order (the key is the order id as a string)"),
    "orders.<order_id>.order_id": ("int", "order id"),
    "orders.<order_id>.cl_id": ("str", "client order id"),
    "orders.<order_id>.symbol": ("str", "symbol"),
    "orders.<order_id>.side": ("str", "buy or sell"),
    "orders.<order_id>.qty": ("int or float", "quantity"),
    "orders.<order_id>.filled": ("int or float", "quantity filled so far"),
    "orders.<order_id>.type": ("str", "market, limit or stop"),
    "orders.<order_id>.price": ("float or null", "limit or stop price"),
    "orders.<order_id>.tif": ("str", "GTC, IOC or DAY"),
    "orders.<order_id>.status": ("str", "new or partially-filled"),
    "orders.<order_id>.ts": ("int", "when the exchange accepted it, ns"),
    "trades": ("list", "the last fills, oldest first (`state.last_trades` of them)"),
    "trades[]": ("map", "a fill"),
    "trades[].fill_id": ("int", "fill id"),
    "trades[].at_ns": ("int", "wall-clock time the exchange published the fill, ns"),
    "trades[].order_id": ("int", "order id"),
    "trades[].cl_id": ("str", "client order id of the order"),
    "trades[].symbol": ("str", "symbol"),
    "trades[].side": ("str", "buy or sell"),
    "trades[].qty": ("int or float", "quantity"),
    "trades[].price": ("float", "fill price"),
    "trades[].fee": ("float", "fee"),
    "trades[].realized": ("float", "PnL this fill realized, before fees (0 for an opening fill)"),
    "trades[].position": ("int or float", "position in the symbol after the fill"),
    "trades[].ts": ("int", "market time of the fill, ns"),
    "performance": ("map", "figures since the view started (see actors/state_view.py)"),
    "performance.total_return": ("float or null", "equity / initial_cash - 1; null until the account is known"),
    "performance.max_drawdown": ("float", "largest (peak - equity) / peak seen, a fraction"),
    "performance.drawdown": ("float", "current (peak - equity) / peak"),
    "performance.peak_equity": ("float", "highest equity seen"),
    "performance.sharpe": ("float or null", "annualised Sharpe ratio of equity samples; null with fewer than 2 "
                                            "returns or no variance"),
    "performance.samples": ("int", "equity samples (one per market time step, at most one a minute of market time)"),
    "performance.trades": ("int", "closing fills (realized != 0)"),
    "performance.wins": ("int", "closing fills with realized > 0"),
    "performance.losses": ("int", "closing fills with realized <= 0"),
    "performance.win_rate": ("float or null", "wins / trades; null with no trade"),
    "performance.fills": ("int", "fills seen"),
    "performance.realized_from_fills": ("float", "sum of the fills' realized"),
    "performance.complete": ("bool", "false if the exchange traded before this view started (counts miss those)"),
    "market": ("map", "market data seen"),
    "market.symbols": ("int", "symbols with a price"),
    "market.last": ("map", "latest price per symbol"),
    "market.last.<symbol>": ("float", "latest close or tick price"),
    "market.updates": ("int", "bars and ticks seen"),
    "market.ts": ("int", "latest market time, ns"),
    "market.eod": ("bool", "end of data was seen"),
    "feed": ("map", "the market-data feed's health, from `feed-status` on md.status"),
    "feed.known": ("bool", "false until market-data's first feed-status"),
    "feed.feed": ("str", "feed name (synthetic, replay:FILE, ccxt:VENUE, a plugin's name)"),
    "feed.state": ("str", "ok, stale, reconnecting (unknown before the first feed-status)"),
    "feed.since_ns": ("int", "when it entered this state, ns"),
    "feed.last_data_ns": ("int", "arrival of the last message from the venue, ns (0: none yet)"),
    "feed.detail": ("str", "why (the venue's error, how long it was silent), \"\" when ok"),
    "feed.symbols": ("list", "the stale symbols ([] with state stale: all of them)"),
    "instruments": ("map", "the instrument master, from market-data"),
    "instruments.count": ("int", "instruments"),
    "instruments.option_mappings": ("int", "options mapped to an underlying"),
    "instruments.kinds": ("map", "instruments per kind"),
    "instruments.kinds.<kind>": ("int", "equity, future or option: how many"),
    "instruments.known": ("bool", "false until market-data answered"),
    "counters": ("map", "the state-publisher's counters (published every 100 ms when they change)"),
    "counters.snapshots": ("int", "snapshots served"),
    "counters.bad_requests": ("int", "requests on state.snap answered with state-error"),
    "counters.client_resyncs": ("int", "snapshot requests whose reason was gap or restart, or with missed > 0"),
    "counters.client_missed": ("int", "sum of the missed counts clients reported"),
    "counters.bad_messages": ("map", "undecodable messages received, per endpoint"),
    "counters.bad_messages.<endpoint>": ("int", "count"),
    "counters.send_failed": ("int", "sends dropped at the high-water mark (all subscribers full)"),
    "counters.unroutable": ("int", "snapshots whose requester was gone"),
    "greeks": ("map", "option positions' greeks and the portfolio's (actors/market_rules.py ViewMarket)"),
    "greeks.known": ("bool", "false when the instrument master has no option"),
    "greeks.positions": ("map", "one entry per option position"),
    "greeks.positions.<symbol>": ("map", "an option position"),
    "greeks.positions.<symbol>.qty": ("int", "the position"),
    "greeks.positions.<symbol>.underlying": ("str", "its underlying"),
    "greeks.positions.<symbol>.iv": ("float", "the implied volatility used"),
    "greeks.positions.<symbol>.iv_source": ("str", "price (implied from the option's last price) or model ([options] smile)"),
    "greeks.positions.<symbol>.option": ("map", "per option (one unit): price, delta, gamma, vega (per 1.00 of vol), theta (per year)"),
    "greeks.positions.<symbol>.option.<greek>": ("float", "price, delta, gamma, vega or theta"),
    "greeks.positions.<symbol>.delta": ("float", "of the position: qty x multiplier x delta (units of the underlying)"),
    "greeks.positions.<symbol>.gamma": ("float", "qty x multiplier x gamma"),
    "greeks.positions.<symbol>.vega": ("float", "qty x multiplier x vega: money per 1.00 of volatility"),
    "greeks.positions.<symbol>.theta": ("float", "qty x multiplier x theta: money per year"),
    "greeks.portfolio": ("map", "the account's"),
    "greeks.portfolio.delta": ("map", "per underlying: its own position plus its options' deltas"),
    "greeks.portfolio.delta.<underlying>": ("float", "units of the underlying"),
    "greeks.portfolio.gamma": ("map", "per underlying"),
    "greeks.portfolio.gamma.<underlying>": ("float", "the options' gamma"),
    "greeks.portfolio.vega": ("float", "sum of the positions' vega"),
    "greeks.portfolio.theta": ("float", "sum of the positions' theta"),
    "session": ("map", "the trading session ([session]; actors/sessions.py)"),
    "session.configured": ("bool", "false without [session]: the market never closes (state open)"),
    "session.state": ("str", "pre-open, open, square-off, closed (unknown before any market time)"),
    "session.next_ns": ("int", "when the state changes next, ns (0 without [session])"),
    "session.next_state": ("str", "the state it changes to"),
    "session.timezone": ("str", "the session's time zone"),
    "session.calendar": ("str", "the exchange calendar of its holidays (\"\" = none)"),
}


# ----------------------------------------------------------------- types
def _num(x: Any) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int) and abs(x) >= 10**6:
        k = len(str(abs(x))) - 1
        if abs(x) == 10**k:
            return f"{'-' if x < 0 else ''}10^{k}"
    if isinstance(x, float):
        if x.is_integer() and abs(x) >= 1e6:
            return f"{x:.0e}".replace("e+", "e")
        if x.is_integer():
            return str(int(x))
    return str(x)


def _bounds(t: Any) -> list[str]:
    out = []
    for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        v = getattr(t, attr, None)
        if v is not None:
            out.append(f"{op} {_num(v)}")
    return out


def _struct_name(cls: type) -> str:
    info = mi.type_info(cls)
    return f"`{info.tag}` message" if info.tag else f"`{cls.__name__}`"


def type_str(t: Any) -> str:
    """One line a client author can implement: the JSON-ish type and its limits."""
    if isinstance(t, mi.IntType):
        b = _bounds(t)
        return "int" + (f" ({', '.join(b)})" if b else "")
    if isinstance(t, mi.FloatType):
        b = _bounds(t)
        return "float" + (f" ({', '.join(b)})" if b else "")
    if isinstance(t, mi.StrType):
        parts = []
        if t.min_length is not None and t.min_length == t.max_length:
            parts.append(f"exactly {t.min_length} chars")
        elif t.min_length is not None and t.max_length is not None:
            parts.append(f"{t.min_length}-{t.max_length} chars")
        elif t.max_length is not None:
            parts.append(f"<= {t.max_length} chars")
        elif t.min_length is not None:
            parts.append(f">= {t.min_length} chars")
        if t.pattern:
            parts.append(f"pattern `{t.pattern}`")
        return "str" + (f" ({', '.join(parts)})" if parts else "")
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.AnyType):
        return "any"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{v}`" if v != "" else '`""`' for v in t.values)
    if isinstance(t, mi.UnionType):
        return " or ".join(type_str(x) for x in t.types)
    if isinstance(t, mi.ListType):
        return f"list of {type_str(t.item_type)}"
    if isinstance(t, mi.DictType):
        return f"map of {type_str(t.key_type)} to {type_str(t.value_type)}"
    if isinstance(t, mi.StructType):
        return _struct_name(t.cls) + (" (with its `type` key)" if t.tag else "")
    raise TypeError(f"no rendering for {t!r}")


def default_str(f: Any) -> str:
    if f.required:
        return ""
    if f.default_factory is not msgspec.NODEFAULT:
        return "`" + json.dumps(f.default_factory()) + "`"
    return "`" + json.dumps(f.default) + "`"


# ------------------------------------------------------------ field comments
def field_comments(cls: type) -> dict[str, str]:
    """A field's trailing ``# comment`` in its class body, with the comment-only lines that follow it."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    current: str | None = None
    last_row = 0
    lines = src.splitlines()
    names = {f.name for f in mi.type_info(cls).fields}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        line = lines[row - 1]
        text = tok.string.lstrip("#").strip()
        if line.strip().startswith("#"):
            if current is not None and row == last_row + 1:
                out[current] += " " + text
                last_row = row
            continue
        mt = re.match(r"\s+(\w+)\s*:", line)
        current = mt.group(1) if mt and mt.group(1) in names else None
        if current is not None:
            out[current] = text
            last_row = row
    return out


def _doc_first(cls: type) -> str:
    d = cls.__doc__
    if not d:
        return ""
    return " ".join(d.strip().split("\n\n")[0].split()).replace("``", "`")


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def field_table(cls: type) -> list[str]:
    fields = mi.type_info(cls).fields
    if not fields:
        return ["No fields."]
    notes = field_comments(cls)
    rows = ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for f in fields:
        rows.append(f"| `{f.encode_name}` | {_cell(type_str(f.type))} | {'yes' if f.required else 'no'} | "
                    f"{_cell(default_str(f))} | {_cell(notes.get(f.name, ''))} |")
    return rows


# --------------------------------------------------------------- view check
def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "map"}.get(type(v), type(v).__name__)


def view_shape(state: dict[str, Any]) -> dict[str, set[str]]:
    """Path -> JSON types seen in a view, with map keys and list items named as in VIEW_FIELDS."""
    maps = {p.rsplit(".", 1)[0] for p in VIEW_FIELDS if p.endswith(">") and "<" in p.rsplit(".", 1)[1]}
    keyname = {p.rsplit(".", 1)[0]: p.rsplit(".", 1)[1] for p in VIEW_FIELDS if p.endswith(">")}
    out: dict[str, set[str]] = {}

    def walk(path: str, v: Any) -> None:
        out.setdefault(path, set()).add(json_type(v))
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{keyname[path] if path in maps else k}" if path else str(k), x)
        elif isinstance(v, list):
            for x in v:
                walk(path + "[]", x)

    for k, v in state.items():
        walk(k, v)
    return out


def view_problems(shape: dict[str, set[str]], prefixes: tuple[str, ...] | None = None,
                  require_all: bool = True) -> list[str]:
    """Differences between a view's shape and VIEW_FIELDS (only under ``prefixes``, if given):
    undocumented paths, types the doc does not allow and, with ``require_all``,
    documented paths the view does not have."""
    def mine(p: str) -> bool:
        return prefixes is None or any(p == x or p.startswith((x + ".", x + "[")) for x in prefixes)

    out = []
    for path, types in sorted(shape.items()):
        if not mine(path):
            continue
        doc = VIEW_FIELDS.get(path)
        if doc is None:
            out.append(f"state view field {path} ({'/'.join(sorted(types))}) is not in VIEW_FIELDS of "
                       "scripts/protocol_doc.py: add it with its meaning and run python scripts/protocol_doc.py")
        elif not types <= set(doc[0].split(" or ")):
            out.append(f"state view field {path} is {'/'.join(sorted(types))}, documented as {doc[0]}")
    for path in VIEW_FIELDS if require_all else ():
        if mine(path) and path not in shape:
            out.append(f"state view field {path} is documented but the view has no such field")
    return out


# ------------------------------------------------------------------ regions
def nested_structs() -> list[type]:
    """Untagged structs used inside messages (Instrument, OrderInfo, ...), in first-use order."""
    seen: list[type] = []

    def walk(t: Any) -> None:
        if isinstance(t, mi.StructType):
            if not t.tag and t.cls not in seen and t.cls is not m.Envelope:
                seen.append(t.cls)
            for f in t.fields:
                walk(f.type)
        elif isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType)):
            walk(t.item_type)
        elif isinstance(t, mi.UnionType):
            for x in t.types:
                walk(x)
        elif isinstance(t, mi.DictType):
            walk(t.value_type)

    for ch in m.CHANNEL_UNIONS:
        for cls in m.message_types(ch):
            walk(mi.type_info(cls))
    return seen


def render_envelope() -> str:
    out = [f"Schema version (`v`) of this build: **{m.SCHEMA_VERSION}**.", ""]
    out += field_table(m.Envelope)
    return "\n".join(out)


def render_messages() -> str:
    out: list[str] = []
    for ch in m.CHANNEL_UNIONS:
        out += [f"#### Channel `{ch}`", ""]
        for cls in m.message_types(ch):
            tag = m.tag_of(cls)
            head = f"**`{tag}`**"
            doc = _doc_first(cls)
            out += [head + (f" — {doc}" if doc else ""), ""]
            out += field_table(cls)
            out.append("")
    out += ["#### Nested types", ""]
    for cls in nested_structs():
        doc = _doc_first(cls)
        out += [f"**`{cls.__name__}`**" + (f" — {doc}" if doc else ""), ""]
        out += field_table(cls)
        out.append("")
    return "\n".join(out).rstrip()


def render_limits() -> str:
    out = ["| endpoint | bound by | socket | channel | payload limit (decoder) | frame limit (libzmq) | HWM send/recv |",
           "|---|---|---|---|---|---|---|"]
    for name, spec in SPECS.items():
        frame = f"{CLIENT_MAX_MSG:,} bytes" if spec.client_facing else "none"
        out.append(f"| `{name}` | {spec.binder} | {SOCK_NAMES.get(spec.bind_type, spec.bind_type)} | "
                   f"`{spec.channel}` | {MAX_BYTES[spec.channel]:,} bytes | {frame} | "
                   f"{spec.sndhwm:,} / {spec.rcvhwm:,} |")
    return "\n".join(out)


def render_codes() -> str:
    out = ["Reject codes (`reject.code`):", "", "| code | sent when |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in m.REJECT_CODES.items()]
    out += ["", "Error codes (`error`, `md-error`, `state-error`):", "", "| message | code | sent when |",
            "|---|---|---|"]
    for tag, codes in m.ERROR_CODES.items():
        out += [f"| `{tag}` | `{k}` | {_cell(v)} |" for k, v in codes.items()]
    out += ["", "order-update reasons (`order-update.reason`):", "", "| reason | sent when |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in m.ORDER_UPDATE_REASONS.items()]
    return "\n".join(out)


def render_view() -> str:
    out = ["| path | type | meaning |", "|---|---|---|"]
    out += [f"| `{p}` | {t} | {_cell(d)} |" for p, (t, d) in VIEW_FIELDS.items()]
    return "\n".join(out)


REGIONS = {
    "envelope": render_envelope,
    "limits": render_limits,
    "messages": render_messages,
    "codes": render_codes,
    "view": render_view,
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"


def render(text: str) -> tuple[str, list[str]]:
    """The doc with every region regenerated, and the names of the regions that changed."""
    changed = []
    for name, fn in REGIONS.items():
        start, end = _markers(name)
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise ValueError(f"no region {start} ... {end}")
        body = "\n" + fn() + "\n"
        if text[i + len(start):j] != body:
            changed.append(name)
            text = text[:i + len(start)] + body + text[j:]
    return text, changed


# ------------------------------------------------------------- frozen schema
def _struct_schema(cls: type) -> dict[str, Any]:
    return {f.encode_name: {"type": type_str(f.type), "required": f.required} for f in mi.type_info(cls).fields}


def schema() -> dict[str, Any]:
    """What an older peer relies on: per message its channels and fields (type with limits, required)."""
    msgs: dict[str, Any] = {}
    for ch in m.CHANNEL_UNIONS:
        for cls in m.message_types(ch):
            e = msgs.setdefault(m.tag_of(cls), {"channels": [], "fields": _struct_schema(cls)})
            e["channels"].append(ch)
    return {"schema_version": m.SCHEMA_VERSION, "envelope": _struct_schema(m.Envelope), "messages": msgs,
            "structs": {c.__name__: _struct_schema(c) for c in nested_structs()}}


def compat_problems(frozen: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Every way ``now`` would break a peer built against ``frozen`` (same SCHEMA_VERSION)."""
    out: list[str] = []

    def fields(where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        for name, f in old.items():
            if name not in new:
                out.append(f"{where}: field {name!r} removed")
            elif new[name]["type"] != f["type"]:
                out.append(f"{where}: field {name!r} changed type from {f['type']!r} to {new[name]['type']!r}")
            elif new[name]["required"] and not f["required"]:
                out.append(f"{where}: field {name!r} became required")
        for name, f in new.items():
            if name not in old and f["required"]:
                out.append(f"{where}: new field {name!r} is required (a new field needs a default)")

    fields("envelope", frozen["envelope"], now["envelope"])
    for tag, old in frozen["messages"].items():
        new = now["messages"].get(tag)
        if new is None:
            out.append(f"message {tag!r} removed")
            continue
        for ch in old["channels"]:
            if ch not in new["channels"]:
                out.append(f"message {tag!r} no longer on channel {ch!r}")
        fields(f"message {tag!r}", old["fields"], new["fields"])
    for name, old in frozen["structs"].items():
        if name not in now["structs"]:
            out.append(f"type {name} removed")
        else:
            fields(f"type {name}", old, now["structs"][name])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="protocol_doc.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/PROTOCOL.md is out of date")
    ap.add_argument("--doc", default=DOC, help="the document to update or check (default docs/PROTOCOL.md)")
    ap.add_argument("--freeze", action="store_true",
                    help=f"write the frozen schema of version {m.SCHEMA_VERSION} (never overwrites one)")
    args = ap.parse_args(argv)
    if args.freeze:
        path = FROZEN.format(v=m.SCHEMA_VERSION)
        if os.path.exists(path):
            print(f"protocol_doc: {os.path.relpath(path, ROOT)} exists: a version's schema is frozen once; "
                  "bump SCHEMA_VERSION for an incompatible change", file=sys.stderr)
            return 1
        with open(path, "w") as f:
            json.dump(schema(), f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {os.path.relpath(path, ROOT)}")
        return 0
    doc = args.doc
    try:
        with open(doc) as f:
            text = f.read()
        new, changed = render(text)
    except (OSError, ValueError) as e:
        print(f"protocol_doc: {doc}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(f"protocol_doc: {doc} is out of date (regions: {', '.join(changed)}); "
                  "run: python scripts/protocol_doc.py", file=sys.stderr)
            return 1
        return 0
    if changed:
        with open(doc, "w") as f:
            f.write(new)
        print(f"updated {os.path.relpath(doc)}: {', '.join(changed)}")
    else:
        print(f"{os.path.relpath(doc)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

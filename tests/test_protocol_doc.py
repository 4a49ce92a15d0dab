"""docs/PROTOCOL.md says what the code does.

The reference tables are generated from the code (scripts/protocol_doc.py); these
tests fail when the doc is stale, when the state view grows a field nobody
described, or when an actor sends a code or reason the doc does not list.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess

import msgspec
import pytest

import config as config_mod
from actors.market_rules import ViewMarket
from actors.state_view import KEYS, StateView
from bus import messages as m
from scripts import protocol_doc as pd
from tests.harness import PY, ROOT

T0 = 1_700_000_000 * 10**9
MIN = 60 * 10**9
OPT = m.Instrument(symbol="AAA-231215-C-12", kind="option", tick_size=0.01, multiplier=100.0, underlying="AAA",
                   strike=12.0, expiry="2023-12-15", right="C")


def test_the_doc_matches_the_code():
    with open(pd.DOC) as f:
        _, stale = pd.render(f.read())
    assert stale == [], f"docs/PROTOCOL.md is out of date (regions {stale}): run python scripts/protocol_doc.py"


def test_check_names_a_stale_region_and_the_generator_fixes_it(tmp_path):
    doc = tmp_path / "PROTOCOL.md"
    shutil.copy(pd.DOC, doc)
    text = doc.read_text()
    doc.write_text(text.replace("| `order_type` |", "| `kind` |", 1))  # as if a field were renamed
    r = subprocess.run([PY, "scripts/protocol_doc.py", "--check", "--doc", str(doc)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "out of date (regions: messages)" in r.stderr and "run: python scripts/protocol_doc.py" in r.stderr
    r = subprocess.run([PY, "scripts/protocol_doc.py", "--doc", str(doc)], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and doc.read_text() == text


def test_every_message_field_is_in_the_doc_with_its_type_and_default():
    with open(pd.DOC) as f:
        text = f.read()
    for ch in m.CHANNEL_UNIONS:
        for cls in m.message_types(ch):
            assert f"**`{m.tag_of(cls)}`**" in text
            for f in msgspec.inspect.type_info(cls).fields:
                row = (f"| `{f.encode_name}` | {pd._cell(pd.type_str(f.type))} | {'yes' if f.required else 'no'} | "
                       f"{pd._cell(pd.default_str(f))} |")
                assert row in text, f"{m.tag_of(cls)}.{f.encode_name} not documented as {row}"


def _sample_view() -> StateView:
    """A view that has been through every kind of message it tracks."""
    v = StateView("run-1", last_trades=5)
    # options and a session: the greeks and session keys filled in (actors/market_rules.ViewMarket)
    v.attach_market(ViewMarket(config_mod.load(None, ['session.timezone="America/New_York"']), wall_clock=False))
    v.apply(m.InstrumentsReply(instruments=[m.Instrument(symbol="AAA", kind="equity", tick_size=0.01),
                                            m.Instrument(symbol="FUT", kind="future", tick_size=0.25,
                                                         multiplier=50.0), OPT], option_mappings=1))
    v.apply(m.ActorEvent(actor="paper-exchange", state="running", pid=7), T0)
    v.apply(m.AccountUpdate(account=m.AccountInfo(cash=1e6, equity=1e6, initial_cash=1e6), positions=[], ts=T0))
    for i in range(5):
        v.apply(m.Bar(symbol="AAA", ts=T0 + i * MIN, open=10.0, high=11.0, low=9.0, close=10.0 + i, fseq=i + 1))
    order = m.OrderInfo(order_id=1, cl_id="c1", symbol="AAA", side="buy", qty=10, order_type="limit", price=9.5)
    v.apply(m.OrderUpdate(order=order, reason="accepted"))
    v.apply(m.Fill(fill_id=1, order_id=2, cl_id="c2", symbol="AAA", side="buy", qty=10, price=12.0, ts=T0 + 5 * MIN,
                   position=10))
    v.apply(m.AccountUpdate(account=m.AccountInfo(cash=1e6 - 120, equity=1e6, initial_cash=1e6),
                            positions=[m.PositionInfo(symbol="AAA", qty=10, avg_price=12.0, mark=12.0)],
                            ts=T0 + 5 * MIN))
    for i in range(5, 9):
        v.apply(m.Bar(symbol="AAA", ts=T0 + i * MIN, open=12.0, high=13.0, low=11.0, close=12.0 + (i % 2),
                      fseq=i + 1))
    v.apply(m.Fill(fill_id=2, order_id=3, cl_id="c3", symbol="AAA", side="sell", qty=5, price=13.0,
                   ts=T0 + 9 * MIN, position=5, realized=5.0))
    v.apply(m.AccountUpdate(account=m.AccountInfo(cash=1e6 - 500, equity=1e6, initial_cash=1e6),
                            positions=[m.PositionInfo(symbol="AAA", qty=5, avg_price=12.0, mark=13.0),
                                       m.PositionInfo(symbol=OPT.symbol, qty=-2, avg_price=1.0, mark=1.0)],
                            ts=T0 + 9 * MIN))
    v.apply(m.Bar(symbol=OPT.symbol, ts=T0 + 9 * MIN, open=1.2, high=1.2, low=1.2, close=1.2, fseq=10))
    v.apply(m.EndOfData(feed="f", count=9, last_fseq=9))
    return v


def test_the_documented_state_view_is_the_one_state_view_builds():
    """Every key StateView computes is in VIEW_FIELDS with its type, and nothing else is
    (publisher and counters come from the state-publisher process: the conformance
    test checks those against a running one)."""
    computed = tuple(k for k in KEYS if k not in ("publisher", "counters"))
    shape = pd.view_shape(_sample_view().snapshot())
    for k, t in pd.view_shape(StateView("r").snapshot()).items():  # a fresh view: the nulls
        shape.setdefault(k, set()).update(t)
    assert pd.view_problems(shape, computed) == []
    assert {p.split(".")[0].split("[")[0] for p in pd.VIEW_FIELDS} == set(KEYS)


def _calls(path: str, names: set[str]):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            if name in names:
                yield name, node


def _const(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _kw(call, name):
    return next((_const(k.value) for k in call.keywords if k.arg == name), None)


def test_reject_codes_and_order_update_reasons_are_the_ones_the_exchange_sends():
    codes, reasons = set(), set()
    for name, call in _calls("actors/exchange_core.py", {"_reject", "OrderReject", "_publish_order", "_close_orders",
                                                     "_cancel_where", "_accept"}):
        if name == "_reject":
            codes.add(_const(call.args[1]))
        elif name == "OrderReject":
            codes.add(_kw(call, "code"))
        else:
            reasons.add(_kw(call, "reason") or (_const(call.args[-1]) if call.args else None))
    codes.discard(None)
    reasons.discard(None)  # passed through a variable: its callers' literals are collected
    assert codes == set(m.REJECT_CODES), "reject codes in actors/exchange_core.py differ from bus.messages.REJECT_CODES"
    assert reasons == set(m.ORDER_UPDATE_REASONS), (
        "order-update reasons in actors/exchange_core.py differ from bus.messages.ORDER_UPDATE_REASONS")


@pytest.mark.parametrize("cls", [m.OrdersError, m.MdError, m.StateError], ids=lambda c: m.tag_of(c))
def test_error_codes_are_the_ones_the_actors_send(cls):
    sent = set()
    for path in sorted(os.listdir(os.path.join(ROOT, "actors"))):
        if path.endswith(".py"):
            sent |= {_kw(call, "code") for _, call in _calls(f"actors/{path}", {cls.__name__})}
    assert None not in sent, f"a {cls.__name__} code is not a literal: document it in bus.messages.ERROR_CODES"
    assert sent == set(m.ERROR_CODES[m.tag_of(cls)])

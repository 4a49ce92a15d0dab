"""Schema evolution: peers of one SCHEMA_VERSION but different builds keep talking.

The rule (docs/PROTOCOL.md, "Versioning"): receivers ignore unknown fields, so a
newer peer may add a field with a default; a message from an older peer that
lacks such a field decodes with the default; everything else bumps the version.
The frozen schema of the version (tests/protocol_schema_v<N>.json) is what an
older peer relies on; the catalogue must stay a compatible extension of it.
"""

from __future__ import annotations

import copy
import json
import os

import msgspec
import pytest
from msgspec import inspect as mi

from bus import messages as m
from bus.codec import ProtocolError, Stamper, codec
from scripts import protocol_doc as pd
from tests.test_codec import ALL, SAMPLES


def _walk(value, t, fn):
    """Apply ``fn(map, struct_type)`` to every map in ``value`` that encodes a Struct of type ``t``."""
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        for f in t.fields:
            if f.encode_name in value:
                _walk(value[f.encode_name], f.type, fn)
        fn(value, t)
    elif isinstance(t, mi.ListType) and isinstance(value, list):
        for x in value:
            _walk(x, t.item_type, fn)
    elif isinstance(t, mi.UnionType):
        for x in t.types:
            if isinstance(x, mi.StructType) and isinstance(value, dict):
                _walk(value, x, fn)


def _newer(d: dict, t) -> None:
    d["added_in_a_later_build"] = {"any": ["shape", 1, 2.5, None]}


def _older(d: dict, t) -> None:
    for f in t.fields:
        if not f.required:
            d.pop(f.encode_name, None)


def _defaults(obj):
    """``obj`` with every optional field (nested ones too) at its default."""
    info = mi.type_info(type(obj))
    kw = {}
    for f in info.fields:
        v = getattr(obj, f.name)
        if f.required:
            if isinstance(v, msgspec.Struct):
                v = _defaults(v)
            elif isinstance(v, list):
                v = [_defaults(x) if isinstance(x, msgspec.Struct) else x for x in v]
            kw[f.name] = v
    return type(obj)(**kw)


@pytest.mark.parametrize("channel,cls", ALL, ids=[f"{c}-{t.__name__}" for c, t in ALL])
def test_mixed_builds_understand_each_other(channel, cls):
    """A newer peer's message (an unknown field in the envelope, the message and every
    nested map) decodes to what the older peer knows; an older peer's message (no
    optional field at all) decodes with the defaults."""
    env = msgspec.to_builtins(Stamper("peer", "r").envelope(channel, SAMPLES[cls]))
    t = mi.type_info(cls)

    newer = copy.deepcopy(env)
    newer["trace_id"] = "added to the envelope later"
    _walk(newer["msg"], t, _newer)
    got = codec(channel).decode(msgspec.msgpack.encode(newer))
    assert got.msg == SAMPLES[cls] and got.seq == env["seq"]

    older = copy.deepcopy(env)
    _walk(older["msg"], t, _older)
    assert codec(channel).decode(msgspec.msgpack.encode(older)).msg == _defaults(SAMPLES[cls])


def test_a_newer_peer_of_this_version_is_understood_and_another_version_refused_by_name():
    raw = msgspec.msgpack.encode({"v": m.SCHEMA_VERSION, "src": "newer", "pid": 1, "run": "", "seq": 1, "ts": 1,
                                  "hops": 3, "msg": {"type": "submit", "cl_id": "c", "symbol": "AAA",
                                                     "side": "sell", "qty": 5, "order_type": "limit",
                                                     "price": 10.5, "tif": "DAY", "post_only": True}})
    assert codec("orders").decode(raw).msg == m.SubmitOrder(cl_id="c", symbol="AAA", side="sell", qty=5,
                                                             order_type="limit", price=10.5, tif="DAY")
    for v in (m.SCHEMA_VERSION - 1, m.SCHEMA_VERSION + 1):
        raw = msgspec.msgpack.encode({"v": v, "src": "x", "pid": 1, "run": "", "seq": 1, "ts": 1,
                                      "msg": {"type": "query"}})
        with pytest.raises(ProtocolError, match=f"unsupported schema version {v} "
                                                f"\\(this build speaks {m.SCHEMA_VERSION}\\)"):
            codec("orders").decode(raw)


def _frozen() -> dict:
    path = pd.FROZEN.format(v=m.SCHEMA_VERSION)
    assert os.path.exists(path), (f"no frozen schema for SCHEMA_VERSION {m.SCHEMA_VERSION}: "
                                  "run python scripts/protocol_doc.py --freeze")
    with open(path) as f:
        return json.load(f)


def test_the_catalogue_keeps_the_frozen_schema_of_its_version():
    frozen = _frozen()
    assert frozen["schema_version"] == m.SCHEMA_VERSION
    problems = pd.compat_problems(frozen, pd.schema())
    assert problems == [], ("bus/messages.py breaks peers of schema version "
                            f"{m.SCHEMA_VERSION} (bump SCHEMA_VERSION or make the change compatible):\n"
                            + "\n".join(problems))


def test_the_compatibility_check_finds_every_breaking_change():
    base = pd.schema()
    sub = base["messages"]["submit"]["fields"]

    def problems(mutate):
        now = copy.deepcopy(base)
        mutate(now)
        return pd.compat_problems(base, now)

    assert problems(lambda s: None) == []
    assert problems(lambda s: s["messages"]["submit"]["fields"].update(
        post_only={"type": "bool", "required": False})) == []
    assert problems(lambda s: s["messages"]["submit"]["fields"].update(
        post_only={"type": "bool", "required": True})) == ["message 'submit': new field 'post_only' is required "
                                                          "(a new field needs a default)"]
    assert problems(lambda s: s["messages"]["submit"]["fields"].pop("tif")) == [
        "message 'submit': field 'tif' removed"]
    assert problems(lambda s: s["messages"]["submit"]["fields"]["tif"].update(required=True)) == [
        "message 'submit': field 'tif' became required"]
    assert problems(lambda s: s["messages"]["submit"]["fields"]["qty"].update(type="float")) == [
        f"message 'submit': field 'qty' changed type from {sub['qty']['type']!r} to 'float'"]
    assert problems(lambda s: s["structs"]["OrderInfo"].pop("filled")) == ["type OrderInfo: field 'filled' removed"]
    assert problems(lambda s: s["envelope"].update(trace={"type": "str", "required": True})) == [
        "envelope: new field 'trace' is required (a new field needs a default)"]
    assert problems(lambda s: s["messages"].pop("fill")) == ["message 'fill' removed"]
    assert problems(lambda s: s["messages"]["fill"].update(channels=["md"])) == [
        "message 'fill' no longer on channel 'orders'"]

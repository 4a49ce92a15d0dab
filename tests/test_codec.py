"""Every message type round-trips; every kind of bad payload gives ProtocolError.

Unknown fields are not bad: receivers ignore them (schema evolution,
tests/test_protocol_evolution.py)."""

import math

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from bus import messages as m
from bus.codec import MAX_BYTES, ProtocolError, Stamper, codec
from bus.messages import CHANNEL_UNIONS, SCHEMA_VERSION

INST = m.Instrument(symbol="GOOG", kind="equity", tick_size=0.01)
BAR = m.Bar(symbol="GOOG", ts=1, open=10.0, high=11.0, low=9.5, close=10.5, volume=100, fseq=7)
ORDER = m.OrderInfo(order_id=1, cl_id="c1", symbol="GOOG", side="buy", qty=10)
ACCT = m.AccountInfo(cash=1.0, equity=2.0)
POS = m.PositionInfo(symbol="GOOG", qty=-5, avg_price=10.0)

SAMPLES = {
    m.Loaded: m.Loaded(),
    m.Init: m.Init(),
    m.Ready: m.Ready(info={"instruments": 2}),
    m.InitFailed: m.InitFailed(reason="boom"),
    m.Fatal: m.Fatal(reason="disk error: writing /run/ledger.sqlite: [Errno 28] No space left on device"),
    m.Run: m.Run(),
    m.Heartbeat: m.Heartbeat(info={"x": 1}),
    m.Stop: m.Stop(reason="bye"),
    m.Stopped: m.Stopped(),
    m.Command: m.Command(id=3, cmd="pause", args={"a": 1}),
    m.CommandReply: m.CommandReply(id=3, ok=False, error="no"),
    m.Finished: m.Finished(text="done", summary={"trades": 3}),
    m.Progress: m.Progress(fseq=512),
    m.ActorEvent: m.ActorEvent(actor="strategy", state="ready", pid=5, restarts=1),
    m.CtlRequest: m.CtlRequest(id="q", cmd="status"),
    m.CtlReply: m.CtlReply(id="q", ok=True, data={"actors": {}}),
    m.Bar: BAR,
    m.Tick: m.Tick(symbol="GOOG", ts=5, price=10.25, size=3, fseq=1),
    m.Quote: m.Quote(symbol="BTC/USDT", ts=5, bid=64000.1, ask=64000.2, bid_size=0.5, ask_size=1.25, fseq=2),
    m.FeedStatus: m.FeedStatus(feed="ccxt:binance", state="stale", since=7, last_data=5, detail="no data for 10 s"),
    m.BarBatch: m.BarBatch(bars=[BAR, BAR]),
    m.EndOfData: m.EndOfData(feed="replay", count=2148, last_fseq=2148),
    m.InstrumentsRequest: m.InstrumentsRequest(),
    m.InstrumentsReply: m.InstrumentsReply(instruments=[INST], option_mappings=0),
    m.HistoryRequest: m.HistoryRequest(symbol="GOOG", n=20),
    m.HistoryReply: m.HistoryReply(symbol="GOOG", bars=[BAR]),
    m.MdError: m.MdError(code="bad", text="bad"),
    m.SubmitOrder: m.SubmitOrder(cl_id="c1", symbol="GOOG", side="buy", qty=10, order_type="limit", price=10.5),
    m.CancelOrder: m.CancelOrder(cl_id="c1"),
    m.CancelAll: m.CancelAll(),
    m.Flatten: m.Flatten(symbol="GOOG"),
    m.Query: m.Query(what="positions"),
    m.OrderAck: m.OrderAck(cl_id="c1", order_id=1),
    m.OrderReject: m.OrderReject(cl_id="c1", code="paused", text="trading paused"),
    m.QueryReply: m.QueryReply(positions=[POS], orders=[ORDER], account=ACCT),
    m.CancelReply: m.CancelReply(cancelled=[1, 2]),
    m.Fill: m.Fill(fill_id=1, order_id=1, cl_id="c1", symbol="GOOG", side="buy", qty=10, price=10.5, fee=0.1),
    m.OrderUpdate: m.OrderUpdate(order=ORDER),
    m.AccountUpdate: m.AccountUpdate(account=ACCT, positions=[POS]),
    m.OrdersError: m.OrdersError(code="bad-request", text="x"),
    m.SnapshotRequest: m.SnapshotRequest(reason="gap", missed=3),
    m.Snapshot: m.Snapshot(state_seq=4, state={"run_id": "r"}),
    m.Delta: m.Delta(state_seq=5, key="account", value={"cash": 1.0}),
    m.StateHeartbeat: m.StateHeartbeat(state_seq=5),
    m.StateError: m.StateError(code="x", text="y"),
}

ALL = [(ch, t) for ch in CHANNEL_UNIONS for t in m.message_types(ch)]


def test_every_catalogue_type_has_a_sample():
    assert {t for _, t in ALL} == set(SAMPLES)


@pytest.mark.parametrize("channel,cls", ALL, ids=[f"{c}-{t.__name__}" for c, t in ALL])
def test_round_trip(channel, cls):
    s = Stamper("tester", "run-1")
    data = s.encode(channel, SAMPLES[cls])
    env = codec(channel).decode(data)
    assert env.msg == SAMPLES[cls]
    assert (env.v, env.src, env.run, env.seq) == (SCHEMA_VERSION, "tester", "run-1", 1)
    assert env.pid > 0 and env.ts > 0
    assert s.encode(channel, SAMPLES[cls]) != data  # seq advances per channel
    assert codec(channel).decode(s.encode(channel, SAMPLES[cls])).seq == 3


def test_sequence_numbers_are_per_channel():
    s = Stamper("t", "r")
    assert s.envelope("md", m.Run()).seq == 1
    assert s.envelope("orders", m.Query()).seq == 1
    assert s.envelope("md", m.Run()).seq == 2


def _env(msg: dict, **hdr) -> bytes:
    e = {"v": SCHEMA_VERSION, "src": "x", "pid": 1, "run": "r", "seq": 1, "ts": 1, "msg": msg}
    e.update(hdr)
    return msgspec.msgpack.encode(e)


BAD = {
    "garbage": b"\xc1\xff\x00garbage",
    "empty": b"",
    "truncated": Stamper("x", "r").encode("orders", SAMPLES[m.SubmitOrder])[:-5],
    "not-a-map": msgspec.msgpack.encode([1, 2, 3]),
    "unknown-type": _env({"type": "launch-missiles"}),
    "other-channel-type": _env({"type": "bar", "symbol": "A", "ts": 1, "open": 1, "high": 1, "low": 1, "close": 1}),
    "wrong-version": _env({"type": "query"}, v=99),
    "wrong-field-type": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": "ten"}),
    "zero-qty": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": 0}),
    "negative-qty": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": -3}),
    "nan-price": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": 1,
                       "order_type": "limit", "price": math.nan}),
    "inf-price": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": 1,
                       "order_type": "limit", "price": math.inf}),
    "missing-order-type": _env({"type": "submit", "cl_id": "a", "symbol": "A", "side": "buy", "qty": 1}),
    "missing-header": msgspec.msgpack.encode({"v": 1, "msg": {"type": "query"}}),
    "huge-string": _env({"type": "cancel", "cl_id": "x" * 100_000}),
    "oversized": b"\x00" * (MAX_BYTES["orders"] + 1),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_payloads_raise_protocol_error(kind):
    with pytest.raises(ProtocolError) as ei:
        codec("orders").decode(BAD[kind])
    assert ei.value.channel == "orders"
    assert str(ei.value).startswith("channel orders: ")


def test_error_names_the_reason():
    with pytest.raises(ProtocolError, match="schema version"):
        codec("orders").decode(BAD["wrong-version"])
    with pytest.raises(ProtocolError, match="not allowed on this channel"):
        codec("orders").decode(BAD["other-channel-type"])
    with pytest.raises(ProtocolError, match="oversized"):
        codec("orders").decode(BAD["oversized"])
    with pytest.raises(ProtocolError, match=r"\$\.msg\.price"):
        codec("orders").decode(BAD["nan-price"])
    # Nothing becomes a market order by omission.
    with pytest.raises(ProtocolError, match=r"missing required field `order_type`"):
        codec("orders").decode(BAD["missing-order-type"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(list(CHANNEL_UNIONS)))
def test_random_bytes_only_ever_raise_protocol_error(data, channel):
    try:
        codec(channel).decode(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "cl_id", "symbol", "side", "qty", "price", "what", "x"]),
                       st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(), st.text(max_size=20), st.booleans()),
                       max_size=6))
def test_random_messages_only_ever_raise_protocol_error(msg):
    try:
        codec("orders").decode(_env(msg))
    except ProtocolError:
        pass

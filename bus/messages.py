"""The one catalogue of every message that crosses a socket.

Wire rule (see docs/PROTOCOL.md): each payload is a msgpack map, an ``Envelope``
carrying the header (schema version, sender, pid, run_id, per-channel sequence,
timestamp) and ``msg``, a tagged union of the types that belong to the channel.
The tag is the ``type`` key inside ``msg``.

Number rule:
- quantities (order qty, fill qty, positions, lot sizes, volumes) are ``int``:
  whole units of the instrument, so sums of fills equal positions exactly;
- prices and money (cash, PnL, fees) are ``float``, always finite; prices are > 0.
  Finite-ness is enforced by the types below, so NaN/inf never decode.
- timestamps are ``int`` nanoseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION = 1

# --- constrained scalar types -------------------------------------------------
# Meta(gt, lt) rejects NaN as well as inf: every comparison with NaN is false.
Price = Annotated[float, Meta(gt=0.0, lt=1e12)]
Money = Annotated[float, Meta(gt=-1e15, lt=1e15)]
Qty = Annotated[int, Meta(gt=0, lt=10**12)]  # strictly positive order/fill quantity
SignedQty = Annotated[int, Meta(gt=-(10**12), lt=10**12)]
Symbol = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:\-]+$")]
ShortStr = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Ident = Annotated[str, Meta(min_length=1, max_length=64)]
ActorName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
Nanos = Annotated[int, Meta(ge=0)]


class _Base(Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True):
    """Common base: tagged by class name in kebab form, unknown fields rejected."""


def _tag(name: str):
    return {"tag": name, "kw_only": True}


# =============================================================================
# Channel "lifecycle": supervisor ROUTER <-> actor DEALER (identity = actor name)
# =============================================================================
class Loaded(_Base, **_tag("loaded")):
    """Actor -> supervisor: imported and connected, waiting for Init. Actors are
    spawned at once so their (slow) imports overlap; none initialises early."""


class Init(_Base, **_tag("init")):
    """Supervisor -> actor: what you are ``after`` is READY; run init(), then READY."""


class Ready(_Base, **_tag("ready")):
    """Actor finished init; ``info`` carries what status should show (counts...)."""

    info: dict[str, Any] = {}


class InitFailed(_Base, **_tag("init-failed")):
    """Actor could not initialise; the supervisor logs ``reason`` and aborts/restarts."""

    reason: Text


class Fatal(_Base, **_tag("fatal")):
    """Actor -> supervisor just before it exits on an error no restart can fix (a full or
    read-only run directory, exit code 4): ``reason`` is one line naming the operation,
    the path and the error. The supervisor stops everything in order and exits 1."""

    reason: Text


class Run(_Base, **_tag("run")):
    """Barrier release: every actor is READY, producers may publish."""


class Heartbeat(_Base, **_tag("heartbeat")):
    """Sent both ways every ``heartbeat_ms``; ``info`` optionally refreshes status."""

    info: dict[str, Any] = {}


class Stop(_Base, **_tag("stop")):
    reason: ShortStr = ""


class Stopped(_Base, **_tag("stopped")):
    pass


class Command(_Base, **_tag("command")):
    """Supervisor -> actor: pause, resume, flatten, halt, ... (actor-specific)."""

    id: int
    cmd: ShortStr
    args: dict[str, Any] = {}


class CommandReply(_Base, **_tag("command-reply")):
    id: int
    ok: bool
    error: Text = ""
    data: dict[str, Any] = {}


class Finished(_Base, **_tag("finished")):
    """Backtest: the actor's work is complete (the exchange after end of data);
    the supervisor prints ``text`` and shuts the run down in order, exit 0."""

    text: Annotated[str, Meta(max_length=16384)] = ""
    summary: dict[str, Any] = {}


class ActorEvent(_Base, **_tag("actor-event")):
    """Published by the supervisor on ``events`` on every actor state change."""

    actor: ActorName
    state: Literal["starting", "ready", "running", "stopping", "stopped", "exited", "restarting", "failed"]
    pid: int = 0
    restarts: int = 0
    detail: Text = ""


LifecycleMsg = Union[Loaded, Init, Ready, InitFailed, Fatal, Run, Heartbeat, Stop, Stopped, Command, CommandReply, Finished,
                     ActorEvent]


# =============================================================================
# Channel "control": CLI (DEALER or REQ) -> supervisor ROUTER
# =============================================================================
class CtlRequest(_Base, **_tag("ctl")):
    """``cmd`` is one of status, pause, resume, stop-and-close, restart, halt, unhalt, shutdown."""

    id: Annotated[str, Meta(max_length=64)] = ""
    cmd: ShortStr
    arg: ShortStr = ""


class CtlReply(_Base, **_tag("ctl-reply")):
    id: Annotated[str, Meta(max_length=64)] = ""
    ok: bool
    error: Text = ""
    data: dict[str, Any] = {}


ControlMsg = Union[CtlRequest, CtlReply]


# =============================================================================
# Channel "md": market-data PUB (topics md.bar.<SYM>, md.tick.<SYM>, md.eod)
#               and market-data ROUTER "md.ref" (instrument master, history)
# =============================================================================
class Instrument(Struct, kw_only=True, forbid_unknown_fields=True):
    symbol: Symbol
    kind: Literal["equity", "future", "option"]
    tick_size: Price
    lot_size: Qty = 1
    multiplier: Price = 1.0
    currency: Annotated[str, Meta(min_length=3, max_length=3)] = "USD"
    underlying: str = ""
    strike: float = 0.0
    expiry: str = ""
    right: Literal["", "C", "P"] = ""


class Bar(_Base, **_tag("bar")):
    symbol: Symbol
    ts: Nanos  # bar open time
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[int, Meta(ge=0)] = 0
    fseq: Annotated[int, Meta(ge=0)] = 0  # per-feed sequence number


class Tick(_Base, **_tag("tick")):
    symbol: Symbol
    ts: Nanos
    price: Price
    size: Annotated[int, Meta(ge=0)] = 0
    fseq: Annotated[int, Meta(ge=0)] = 0


class BarBatch(_Base, **_tag("bar-batch")):
    """Backtest mode: many bars in one frame to avoid a syscall per bar."""

    bars: list[Bar]


class EndOfData(_Base, **_tag("end-of-data")):
    feed: ShortStr
    count: Annotated[int, Meta(ge=0)]
    last_fseq: Annotated[int, Meta(ge=0)] = 0


class InstrumentsRequest(_Base, **_tag("instruments-request")):
    pass


class InstrumentsReply(_Base, **_tag("instruments-reply")):
    instruments: list[Instrument]
    option_mappings: int = 0


class HistoryRequest(_Base, **_tag("history-request")):
    symbol: Symbol
    n: Annotated[int, Meta(ge=1, le=100_000)]


class HistoryReply(_Base, **_tag("history-reply")):
    symbol: Symbol
    bars: list[Bar]


class Progress(_Base, **_tag("progress")):
    """Backtest flow control: the sender has processed every md message up to
    ``fseq``. Consumers send it to market-data (md.ref), which keeps at most a
    window of bars in flight; the strategy sends it to the exchange (orders)
    before the orders of a bar and at the end of each batch, which gates the
    exchange's bar processing (see docs/ARCHITECTURE.md, Backtests)."""

    fseq: Annotated[int, Meta(ge=0)]


class MdError(_Base, **_tag("md-error")):
    code: ShortStr
    text: Text


MdMsg = Union[
    Bar, Tick, BarBatch, EndOfData, InstrumentsRequest, InstrumentsReply, HistoryRequest, HistoryReply, Progress,
    MdError,
]


# =============================================================================
# Channel "orders": strategy DEALER -> exchange ROUTER "orders";
#                   exchange PUB "exec" (exec.fill.<SYM>, exec.order.<SYM>, acct.*)
# =============================================================================
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop"]
TimeInForce = Literal["GTC", "IOC", "DAY"]
OrderStatus = Literal["new", "partially-filled", "filled", "cancelled", "rejected", "expired"]
RejectCode = Literal[
    "unknown-instrument",
    "bad-lot-size",
    "bad-tick-size",
    "risk-limit",
    "paused",
    "halted",
    "duplicate-client-order-id",
    "unknown-order",
    "bad-request",
]


class SubmitOrder(_Base, **_tag("submit")):
    cl_id: Ident  # client order id: makes submits idempotent
    symbol: Symbol
    side: Side
    qty: Qty
    order_type: OrderType = "market"
    price: Price | None = None  # limit price, or stop trigger price
    tif: TimeInForce = "GTC"


class CancelOrder(_Base, **_tag("cancel")):
    cl_id: Ident


class CancelAll(_Base, **_tag("cancel-all")):
    symbol: str = ""  # empty: every symbol


class Flatten(_Base, **_tag("flatten")):
    symbol: str = ""


class Query(_Base, **_tag("query")):
    what: Literal["all", "positions", "orders", "account"] = "all"


class OrderAck(_Base, **_tag("ack")):
    cl_id: Ident
    order_id: int
    duplicate: bool = False  # True: a retry of an already-accepted submit


class OrderReject(_Base, **_tag("reject")):
    cl_id: str
    code: RejectCode
    text: Text


class OrderInfo(Struct, kw_only=True, forbid_unknown_fields=True):
    order_id: int
    cl_id: Ident
    symbol: Symbol
    side: Side
    qty: Qty
    filled: Annotated[int, Meta(ge=0)] = 0
    order_type: OrderType = "market"
    price: Price | None = None
    tif: TimeInForce = "GTC"
    status: OrderStatus = "new"
    ts: Nanos = 0


class PositionInfo(Struct, kw_only=True, forbid_unknown_fields=True):
    symbol: Symbol
    qty: SignedQty
    avg_price: Annotated[float, Meta(ge=0.0, lt=1e12)] = 0.0
    mark: Annotated[float, Meta(ge=0.0, lt=1e12)] = 0.0
    realized: Money = 0.0
    unrealized: Money = 0.0
    fees: Money = 0.0


class AccountInfo(Struct, kw_only=True, forbid_unknown_fields=True):
    cash: Money
    equity: Money
    initial_cash: Money = 0.0
    realized: Money = 0.0
    unrealized: Money = 0.0
    fees: Money = 0.0
    gross_exposure: Money = 0.0


class QueryReply(_Base, **_tag("query-reply")):
    positions: list[PositionInfo] = []
    orders: list[OrderInfo] = []
    account: AccountInfo | None = None
    paused: bool = False
    halted: bool = False
    flattening: bool = False  # flatten orders of the exchange's own are still open


class CancelReply(_Base, **_tag("cancel-reply")):
    cancelled: list[int] = []


class Fill(_Base, **_tag("fill")):
    fill_id: int
    order_id: int
    cl_id: Ident
    symbol: Symbol
    side: Side
    qty: Qty
    price: Price
    fee: Money = 0.0
    ts: Nanos = 0  # market time of the fill
    position: SignedQty = 0  # position after this fill
    realized: Money = 0.0  # PnL this fill realized by closing (part of) a position, before fees


class OrderUpdate(_Base, **_tag("order-update")):
    order: OrderInfo
    reason: Text = ""


class AccountUpdate(_Base, **_tag("account-update")):
    """The account, and the exchange's trading state (it is the authority for
    paused/halted, persisted in its ledger): published on every change of
    either, so subscribers never have to guess."""

    account: AccountInfo
    positions: list[PositionInfo] = []
    ts: Nanos = 0
    paused: bool = False
    halted: bool = False
    flattening: bool = False


class OrdersError(_Base, **_tag("error")):
    """Reply to a request that could not be decoded at all."""

    code: ShortStr
    text: Text


OrdersMsg = Union[
    SubmitOrder,
    CancelOrder,
    CancelAll,
    Flatten,
    Query,
    OrderAck,
    OrderReject,
    QueryReply,
    CancelReply,
    Fill,
    OrderUpdate,
    AccountUpdate,
    Progress,
    OrdersError,
]


# =============================================================================
# Channel "state": state-publisher PUB "state" (deltas, heartbeats) and
#                  ROUTER "state.snap" (snapshots) -- the zguide Clone pattern
# =============================================================================
class SnapshotRequest(_Base, **_tag("snapshot-request")):
    # Why the client asks: "join", "gap", "restart", "stale". PUB drops silently
    # per subscriber, so a client's report of the deltas it missed is the only
    # way the publisher can count them.
    reason: ShortStr = ""
    missed: Annotated[int, Meta(ge=0)] = 0


class Snapshot(_Base, **_tag("snapshot")):
    state_seq: Annotated[int, Meta(ge=0)]  # the last delta this snapshot includes
    state: dict[str, Any]


class Delta(_Base, **_tag("delta")):
    state_seq: Annotated[int, Meta(ge=1)]
    key: ShortStr  # top-level key of the view that changed
    value: Any


class StateHeartbeat(_Base, **_tag("state-heartbeat")):
    state_seq: Annotated[int, Meta(ge=0)]


class StateError(_Base, **_tag("state-error")):
    code: ShortStr
    text: Text


StateMsg = Union[SnapshotRequest, Snapshot, Delta, StateHeartbeat, StateError]


# =============================================================================
# Envelope
# =============================================================================
T = TypeVar("T")


class Envelope(Struct, Generic[T], kw_only=True, forbid_unknown_fields=True):
    v: int  # schema version, must equal SCHEMA_VERSION
    src: Annotated[str, Meta(max_length=64)]  # sender actor/process name
    pid: int
    run: Annotated[str, Meta(max_length=64)]  # run_id
    seq: Annotated[int, Meta(ge=0)]  # sender's per-channel sequence number
    ts: Nanos  # send time, ns
    msg: T


CHANNEL_UNIONS: dict[str, Any] = {
    "lifecycle": LifecycleMsg,
    "control": ControlMsg,
    "md": MdMsg,
    "orders": OrdersMsg,
    "state": StateMsg,
}


def message_types(channel: str) -> tuple[type, ...]:
    return CHANNEL_UNIONS[channel].__args__


def tag_of(cls: type) -> str:
    return msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]

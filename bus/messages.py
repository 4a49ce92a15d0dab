"""The one catalogue of every message that crosses a socket.

Wire rule (see docs/PROTOCOL.md): each payload is a msgpack map, an ``Envelope``
carrying the header (schema version, sender, pid, run_id, per-channel sequence,
timestamp) and ``msg``, a tagged union of the types that belong to the channel.
The tag is the ``type`` key inside ``msg``.

Schema evolution (SCHEMA_VERSION; docs/PROTOCOL.md, "Versioning"): receivers
ignore fields they do not know, so a newer peer may add a field with a default
without breaking an older one, and a message from an older peer that lacks it
decodes with the default. Anything else an older peer cannot read -- a new
required field, a removed field, a changed type, constraint or tag, a new value
of an enumerated field -- bumps SCHEMA_VERSION. tests/test_protocol_evolution.py
checks the catalogue against the frozen schema of the current version.

Number rule:
- quantities (order qty, fill qty, positions, lot sizes, filled) are finite numbers:
  an ``int`` for whole units (equities: 10), a ``float`` otherwise (0.015 BTC), always a
  multiple of the instrument's ``lot_size`` (its quantity step, at most 9 decimals).
  A float is read as the decimal it prints as; the exchange sums quantities as integers
  of 10^-9 units (bus/quantity.py), so sums of fills equal positions exactly;
  volumes and quote sizes are ``float``;
- prices and money (cash, PnL, fees) are ``float``, always finite; prices are > 0.
  Finite-ness is enforced by the types below, so NaN/inf never decode.
- timestamps are ``int`` nanoseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import msgspec
from msgspec import Meta, Struct

from .actor_states import EVENT_STATES

# 2: receivers ignore unknown fields (1 rejected them); submit.order_type is required.
# 3: symbols may hold "/" (BTC/USDT); volumes are numbers, not integers; instrument kinds
#    crypto, fx, perpetual; currency up to 8 letters (USDT); quote and feed-status on md.
SCHEMA_VERSION = 3

# --- constrained scalar types -------------------------------------------------
# Meta(gt, lt) rejects NaN as well as inf: every comparison with NaN is false.
Price = Annotated[float, Meta(gt=0.0, lt=1e12)]
Money = Annotated[float, Meta(gt=-1e15, lt=1e15)]
# Quantities: an int for whole units, else a finite float (bus/quantity.py sums them exactly).
Qty = Union[Annotated[int, Meta(gt=0, lt=10**12)], Annotated[float, Meta(gt=0.0, lt=1e12)]]  # > 0
SignedQty = Union[Annotated[int, Meta(gt=-(10**12), lt=10**12)], Annotated[float, Meta(gt=-1e12, lt=1e12)]]
NonNegQty = Union[Annotated[int, Meta(ge=0, lt=10**12)], Annotated[float, Meta(ge=0.0, lt=1e12)]]
Volume = Annotated[float, Meta(ge=0.0, lt=1e18)]  # traded or quoted size, finite
Symbol = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:/\-]+$")]
ShortStr = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Ident = Annotated[str, Meta(min_length=1, max_length=64)]
ActorName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
Nanos = Annotated[int, Meta(ge=0)]


class _Base(Struct, tag_field="type", kw_only=True):
    """Common base: tagged by class name in kebab form; unknown fields are ignored
    (schema evolution: a newer peer may add a field with a default)."""


# Public base of message types: an actor that declares a channel of its own
# (actors/base.py, ``channels``) makes its messages from it.
Message = _Base


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

    info: dict[str, Any] = {}  # counts shown by status; optional "warnings": strings the supervisor logs at warning level


class InitFailed(_Base, **_tag("init-failed")):
    """Actor could not initialise; the supervisor logs ``reason`` and aborts/restarts. The actor
    then exits 2 if the user's input was refused (a UserError: plugin, params, data file; the
    supervisor exits 2 with ``config error: <actor>: <reason>``), else 1."""

    reason: Text  # one line, in the actor's own words


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


EventState = Literal[EVENT_STATES]  # type: ignore[valid-type]


class ActorEvent(_Base, **_tag("actor-event")):
    """Published by the supervisor on ``events`` on every actor state change."""

    actor: ActorName
    state: EventState  # bus/actor_states.py: each supervisor state's event name
    pid: int = 0
    restarts: int = 0
    detail: Text = ""


LifecycleMsg = Union[Loaded, Init, Ready, InitFailed, Fatal, Run, Heartbeat, Stop, Stopped, Command, CommandReply, Finished,
                     ActorEvent]


# =============================================================================
# Channel "control": CLI (DEALER or REQ) -> supervisor ROUTER
# =============================================================================
class CtlRequest(_Base, **_tag("ctl")):
    """``cmd`` is one of the supervisor's commands in actors/supervision/control.py (``CONTROL``):
    status, pause, resume, stop-and-close, halt, unhalt, restart, send, shutdown."""

    id: Annotated[str, Meta(max_length=64)] = ""  # echoed in the reply: match replies by it
    cmd: ShortStr  # status, pause, resume, stop-and-close, halt, unhalt, restart, send, shutdown
    arg: ShortStr = ""  # restart, send: the actor name
    command: ShortStr = ""  # send: the actor's command ("": list the commands it declares)
    args: dict[str, Any] = {}  # send: the command's arguments


class CtlReply(_Base, **_tag("ctl-reply")):
    id: Annotated[str, Meta(max_length=64)] = ""  # the request's id ("" if the request did not decode)
    ok: bool
    error: Text = ""  # ok = false: what went wrong, for a human
    data: dict[str, Any] = {}  # per command: see "ctl-reply data"


ControlMsg = Union[CtlRequest, CtlReply]


# =============================================================================
# Channel "md": market-data PUB (topics md.bar.<SYM>, md.tick.<SYM>, md.eod)
#               and market-data ROUTER "md.ref" (instrument master, history)
# =============================================================================
# Instrument.kind -> what it is (rendered into docs/PROTOCOL.md).
INSTRUMENT_KINDS: dict[str, str] = {
    "equity": "a share; whole units by default",
    "future": "a dated future; multiplier is the contract size",
    "option": "an option on `underlying`: strike, expiry (YYYY-MM-DD), right C or P",
    "crypto": "crypto spot (BTC/USDT): base bought for `currency`, fractional steps",
    "fx": "a currency pair (EUR/USD): base bought for `currency`",
    "perpetual": "a perpetual swap; multiplier is the contract size",
}
InstrumentKind = Literal[tuple(INSTRUMENT_KINDS)]  # type: ignore[valid-type]


class Instrument(Struct, kw_only=True):
    """An entry of the instrument master."""

    symbol: Symbol
    kind: InstrumentKind
    tick_size: Price  # price step
    lot_size: Qty = 1  # quantity step: every order qty is a multiple (0.001 for BTC/USDT)
    multiplier: Price = 1.0  # contract size: value of one unit = price * multiplier
    currency: Annotated[str, Meta(min_length=3, max_length=8)] = "USD"  # quote / settlement currency
    underlying: str = ""
    strike: float = 0.0
    expiry: str = ""
    right: Literal["", "C", "P"] = ""
    min_qty: NonNegQty = 0  # smallest order qty (0 = one step)
    min_notional: Annotated[float, Meta(ge=0.0, lt=1e15)] = 0.0  # smallest qty * price * multiplier of an order
    base: Annotated[str, Meta(max_length=16)] = ""  # crypto / fx: the asset bought (BTC of BTC/USDT)
    venue_symbol: Annotated[str, Meta(max_length=64)] = ""  # the venue's own id (BTCUSDT), "" = symbol
    # options: what happens at expiry (actors/options.py): cash at intrinsic value, or
    # delivery of the underlying at the strike (an in-the-money option)
    settlement: Literal["cash", "physical"] = "cash"


class Bar(_Base, **_tag("bar")):
    symbol: Symbol
    ts: Nanos  # bar open time; live synthetic feed: the wall-clock start of the interval it covers
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Volume = 0
    fseq: Annotated[int, Meta(ge=0)] = 0  # the feed's sequence number, from 1
    # (the bars of one synthetic time step share it)


class Tick(_Base, **_tag("tick")):
    symbol: Symbol
    ts: Nanos
    price: Price
    size: Volume = 0
    fseq: Annotated[int, Meta(ge=0)] = 0


class Quote(_Base, **_tag("quote")):
    """Best bid and offer, on ``md.quote.<SYM>``. With quotes the exchange fills market
    buys at the ask and sells at the bid; a crossed quote (bid >= ask) fills nothing."""

    symbol: Symbol
    ts: Nanos  # venue time of the quote
    bid: Price
    ask: Price
    bid_size: Volume = 0
    ask_size: Volume = 0
    fseq: Annotated[int, Meta(ge=0)] = 0


# feed-status.state -> what it means (rendered into docs/PROTOCOL.md).
FEED_STATES: dict[str, str] = {
    "ok": "data arrives; the exchange fills against it",
    "stale": "nothing arrived for stale_after_s: the exchange fills nothing on this feed's prices",
    "reconnecting": "the connection dropped; the adapter reconnects with backoff (prices are stale)",
}


class FeedStatus(_Base, **_tag("feed-status")):
    """The feed's health, on ``md.status``: on every change and every second (so a late
    subscriber learns it within a second). Synthetic and replay feeds are always ok."""

    feed: ShortStr  # feed name (synthetic, replay, ccxt:binance, a plugin's name)
    state: Literal[tuple(FEED_STATES)]  # type: ignore[valid-type]
    since: Nanos = 0  # when it entered this state, ns
    last_data: Nanos = 0  # arrival time of the last message from the venue, ns (0 = none yet)
    detail: Text = ""  # the venue's error or the reason, for a human
    symbols: list[Symbol] = []  # stale symbols ([] with state stale = all of them)


class BarBatch(_Base, **_tag("bar-batch")):
    """Backtest mode: many bars in one frame to avoid a syscall per bar."""

    bars: list[Bar]


class EndOfData(_Base, **_tag("end-of-data")):
    """The feed is exhausted (replay), on ``md.eod``."""

    feed: ShortStr  # feed name
    count: Annotated[int, Meta(ge=0)]  # bars/ticks published
    last_fseq: Annotated[int, Meta(ge=0)] = 0
    rows_skipped: Annotated[int, Meta(ge=0)] = 0  # replay rows dropped for bad values (the backtest summary says it)


class InstrumentsRequest(_Base, **_tag("instruments-request")):
    pass


class InstrumentsReply(_Base, **_tag("instruments-reply")):
    instruments: list[Instrument]
    option_mappings: int = 0  # options mapped to their underlying


class HistoryRequest(_Base, **_tag("history-request")):
    symbol: Symbol
    n: Annotated[int, Meta(ge=1, le=100_000)]  # the last n bars published (fewer if fewer were kept)


class HistoryReply(_Base, **_tag("history-reply")):
    symbol: Symbol
    bars: list[Bar]


class Progress(_Base, **_tag("progress")):
    """Backtest flow control of the actor kernel (the in-process kernel needs none):
    the sender has processed every md message up to ``fseq``. Consumers send it to
    market-data (md.ref), which keeps at most a window of bars in flight; the
    strategy sends it to the exchange (orders) before the orders of a bar and at
    the end of each batch, which gates the exchange's bar processing (see
    docs/ARCHITECTURE.md, "The actor kernel")."""

    fseq: Annotated[int, Meta(ge=0)]


class MdError(_Base, **_tag("md-error")):
    code: ShortStr  # see "Error codes"
    text: Text


MdMsg = Union[
    Bar, Tick, Quote, FeedStatus, BarBatch, EndOfData, InstrumentsRequest, InstrumentsReply, HistoryRequest, HistoryReply, Progress,
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
# reject.code -> when the exchange sends it (rendered into docs/PROTOCOL.md).
REJECT_CODES: dict[str, str] = {
    "unknown-instrument": "the symbol is not in the instrument master",
    "bad-lot-size": "qty is not a positive multiple of the instrument's lot_size (its quantity step; "
                    "quantities are read to 9 decimals)",
    "below-min-qty": "qty is below the instrument's min_qty",
    "below-min-notional": "qty * price * multiplier is below the instrument's min_notional (market orders: "
                          "at the price they would fill at now, when one is known)",
    "insufficient-funds": "cash account: the order's cost plus fee exceeds the available cash (cash minus what "
                          "open buy orders reserve), or a sell would make the position short; margin account: "
                          "the order's initial margin plus fee exceeds the available margin",
    "bad-tick-size": "price is not a multiple of the instrument's tick_size",
    "risk-limit": "max_open_orders, max_position (position + open orders on that side + this order) "
                  "or max_order_notional would be exceeded",
    "paused": "trading is paused (`ctl pause`): no new orders; cancels are accepted",
    "halted": "the kill switch is on (`ctl halt`): no new orders until `ctl unhalt` (then `ctl resume`)",
    "duplicate-client-order-id": "cl_id was already used, for an order with different terms "
                                 "(the same terms again get an ack with duplicate = true)",
    "unknown-order": "cancel: no order has this cl_id",
    "bad-request": "the fields contradict each other: a market order with a price, "
                   "a limit or stop order without one",
    "market-closed": "outside the trading session ([session]): closed or pre-open; at square-off "
                     "only an order that reduces a position is taken",
}
RejectCode = Literal[tuple(REJECT_CODES)]  # type: ignore[valid-type]


class SubmitOrder(_Base, **_tag("submit")):
    """New order. Answered by ``ack`` or ``reject`` on the same DEALER; fills and
    order updates follow on ``exec``. ``order_type`` is required: nothing becomes a
    market order by omission. ``tif`` defaults to GTC: it only bounds how long an
    order rests, and GTC is the one choice that never cancels anything on its own."""

    cl_id: Ident  # client order id, unique across clients and runs of one ledger;
    # a retry with the same terms is acked again (duplicate = true)
    symbol: Symbol
    side: Side
    qty: Qty  # a multiple of the instrument's lot_size (int for whole units, else a float: 0.015)
    order_type: OrderType  # market: next price; limit: price or better; stop: market once price trades
    price: Price | None = None  # limit price or stop trigger, on the tick size; null (or absent) for market
    tif: TimeInForce = "GTC"  # GTC: until filled or cancelled; IOC: fills on the next market data
    # of its symbol or is cancelled; DAY: expires on the first market data of a later UTC day


class CancelOrder(_Base, **_tag("cancel")):
    cl_id: Ident


class CancelAll(_Base, **_tag("cancel-all")):
    symbol: str = ""  # "" = every symbol


class Flatten(_Base, **_tag("flatten")):
    """Cancel the open orders and close the position of ``symbol`` with market orders
    (allowed while paused or halted: it only reduces risk). Answered by ``cancel-reply``."""

    symbol: str = ""  # "" = every symbol


class Query(_Base, **_tag("query")):
    what: Literal["all", "positions", "orders", "account"] = "all"


class OrderAck(_Base, **_tag("ack")):
    cl_id: Ident
    order_id: int  # the exchange's id of the order, in fills and order updates
    duplicate: bool = False  # True: a retry of an already-accepted submit


class OrderReject(_Base, **_tag("reject")):
    cl_id: str  # of the refused submit or cancel
    code: RejectCode  # see "Reject codes"
    text: Text  # one line for a human, naming the value that was wrong


class OrderInfo(Struct, kw_only=True):
    """An order as the exchange holds it (sent by the exchange, which fills in every field)."""

    order_id: int
    cl_id: Ident
    symbol: Symbol
    side: Side
    qty: Qty
    filled: NonNegQty = 0  # quantity filled so far
    order_type: OrderType = "market"  # as submitted
    price: Price | None = None  # as submitted
    tif: TimeInForce = "GTC"  # as submitted
    status: OrderStatus = "new"
    ts: Nanos = 0  # when the exchange accepted it, ns


class PositionInfo(Struct, kw_only=True):
    """A position of the account (one per symbol ever traded)."""

    symbol: Symbol
    qty: SignedQty  # signed: > 0 long, < 0 short
    avg_price: Annotated[float, Meta(ge=0.0, lt=1e12)] = 0.0  # average entry price
    mark: Annotated[float, Meta(ge=0.0, lt=1e12)] = 0.0  # last price the exchange saw
    realized: Money = 0.0  # before fees
    unrealized: Money = 0.0  # qty * (mark - avg_price) * multiplier
    fees: Money = 0.0


class AccountInfo(Struct, kw_only=True):
    """The account, as the exchange computes it."""

    cash: Money
    equity: Money  # cash + positions at their marks
    initial_cash: Money = 0.0
    realized: Money = 0.0  # before fees
    unrealized: Money = 0.0
    fees: Money = 0.0
    gross_exposure: Money = 0.0  # sum of abs(qty * mark * multiplier)
    account_type: Literal["cash", "margin"] = "cash"  # [exchange] account
    buying_power: Money = 0.0  # cash: cash less open buys' reserve; margin: equity less margin used and reserved
    margin_used: Money = 0.0  # margin: initial margin of the positions at their marks (cash: 0)


class QueryReply(_Base, **_tag("query-reply")):
    positions: list[PositionInfo] = []  # every symbol ever traded, flat ones too (what = all, positions)
    orders: list[OrderInfo] = []  # the open orders, of every client (what = all, orders)
    account: AccountInfo | None = None  # null unless what = all or account
    paused: bool = False
    halted: bool = False
    flattening: bool = False  # flatten orders of the exchange's own are still open


class CancelReply(_Base, **_tag("cancel-reply")):
    cancelled: list[int] = []  # order ids cancelled; [] when the order was already done
    # (a retried cancel is harmless)


class Fill(_Base, **_tag("fill")):
    fill_id: int
    order_id: int
    cl_id: Ident  # of the order: how a client recognises its own fills
    symbol: Symbol
    side: Side
    qty: Qty
    price: Annotated[float, Meta(ge=0.0, lt=1e12)]  # > 0; 0 only for an option expiring worthless (reason expiry)
    fee: Money = 0.0
    ts: Nanos = 0  # market time of the fill
    position: SignedQty = 0  # position after this fill
    realized: Money = 0.0  # PnL this fill realized by closing (part of) a position, before fees


# order-update.reason -> when the exchange sends it (rendered into docs/PROTOCOL.md;
# tests/test_protocol_doc.py checks that actors/exchange_core.py uses no other).
ORDER_UPDATE_REASONS: dict[str, str] = {
    "accepted": "a submit was accepted (status new)",
    "filled": "the order filled (status filled); its fill precedes it on exec",
    "cancel": "cancelled by a cancel request",
    "cancel-all": "cancelled by a cancel-all request",
    "flatten": "a flatten cancelled it, or this is the market order a flatten sent (cl_id flatten-N)",
    "halt": "cancelled by the kill switch (`ctl halt`)",
    "day order expired": "a DAY order met the first market data of a later UTC day (status expired)",
    "day order expired at end of data": "a DAY order still open at end of data (status expired)",
    "ioc not filled on the next market data": "an IOC order did not fill on the next market data of its symbol "
                                              "(status cancelled)",
    "ioc not filled before end of data": "an IOC order still open at end of data (status cancelled)",
    "square-off": "the session's square-off time ([session] square_off) cancelled it, or this is the market "
                  "order closing a position then (cl_id square-off-N)",
    "expiry": "its option expired: open orders are cancelled; or this is the order settling the position "
              "(cl_id expiry-N, filled at the settlement price with no fee; 0 for a worthless option)",
    "liquidation": "margin account: equity fell below the maintenance margin; open orders are cancelled "
                   "and each position is closed by a market order (cl_id liquidation-N) through the normal fills",
    "insufficient funds at fill": "cash account: a buy's cost plus fee at its fill price exceeded the cash "
                                  "(a gap since it was accepted); cancelled instead of filled",
}


class OrderUpdate(_Base, **_tag("order-update")):
    """Every change of an order's status, on ``exec.order.<SYMBOL>``."""

    order: OrderInfo  # the whole order after the change
    reason: Text = ""  # why it changed: see "order-update reasons"


class AccountUpdate(_Base, **_tag("account-update")):
    """The whole account after every fill and on mark changes (at most every 250 ms), on ``acct.update``,
    and the exchange's trading state (it is the authority for paused/halted, persisted in its
    ledger): published on every change of either, so subscribers never have to guess."""

    account: AccountInfo
    positions: list[PositionInfo] = []  # every symbol ever traded, flat ones too
    ts: Nanos = 0  # market time of the fill, or send time for a mark update
    paused: bool = False  # no new orders (ctl pause, stop-and-close); survives restarts
    halted: bool = False  # kill switch (ctl halt): only ctl unhalt lifts it
    flattening: bool = False  # flatten orders of the exchange's own are still open


class OrdersError(_Base, **_tag("error")):
    """Reply to a request that could not be decoded, or that is not a request."""

    code: ShortStr  # see "Error codes"
    text: Text  # the decoder's reason, naming the field (e.g. `$.msg.qty`)


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
    """Answered by ``snapshot``. PUB drops silently per subscriber, so a client's
    report of the deltas it missed is the only way the publisher can count them."""

    reason: ShortStr = ""  # why the client asks: join, gap, restart, stale
    missed: Annotated[int, Meta(ge=0)] = 0  # deltas the client knows it lost


class Snapshot(_Base, **_tag("snapshot")):
    state_seq: Annotated[int, Meta(ge=0)]  # the last delta this snapshot includes
    state: dict[str, Any]  # the whole view: see "The state view"


class Delta(_Base, **_tag("delta")):
    state_seq: Annotated[int, Meta(ge=1)]  # +1 per delta
    key: ShortStr  # top-level key of the view that changed
    value: Any  # its whole new value


class StateHeartbeat(_Base, **_tag("state-heartbeat")):
    state_seq: Annotated[int, Meta(ge=0)]  # the latest delta's


class StateError(_Base, **_tag("state-error")):
    code: ShortStr  # see "Error codes"
    text: Text


StateMsg = Union[SnapshotRequest, Snapshot, Delta, StateHeartbeat, StateError]


# Error replies: message type -> code -> when it is sent (rendered into
# docs/PROTOCOL.md; tests/test_protocol_doc.py checks the actors use no other).
ERROR_CODES: dict[str, dict[str, str]] = {
    "error": {
        "bad-request": "orders: the request did not decode (text names the field), or is not a request "
                       "(e.g. a fill sent to the exchange)",
    },
    "md-error": {
        "bad-request": "md.ref: the request did not decode, or is not an instruments-request or history-request",
        "unknown-symbol": "history-request for a symbol that is not in the instrument master",
    },
    "state-error": {
        "bad-request": "state.snap: the request did not decode",
        "unexpected-type": "state.snap: a message other than snapshot-request",
    },
}


# =============================================================================
# Envelope
# =============================================================================
T = TypeVar("T")


class Envelope(Struct, Generic[T], kw_only=True):
    v: int  # schema version: must equal this build's SCHEMA_VERSION
    src: Annotated[str, Meta(max_length=64)]  # sender process name (supervisor, market-data, ctl, ...)
    pid: int  # sender pid: a new pid is a restarted sender, whose seq starts at 1 again
    run: Annotated[str, Meta(max_length=64)]  # run_id of the sender's run ("" for ad-hoc clients)
    seq: Annotated[int, Meta(ge=0)]  # per sending socket: 1, 2, 3, ... (see "seq")
    ts: Nanos  # send time, ns since the Unix epoch (> 2^53: decode as a 64-bit integer)
    msg: T  # the message; its "type" key is the tag


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

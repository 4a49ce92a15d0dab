"""The one authoritative view of the system, as plain JSON-able data (no zmq).

The state-publisher feeds every message it receives to ``StateView.apply``;
``apply`` returns the top-level keys whose value changed, and ``value(key)`` /
``snapshot()`` give what is published. Keeping this pure makes the figures
testable by hand (tests/test_state_view.py).

Accounting follows the exchange's invariant (docs/ARCHITECTURE.md, issue 4):
positions and cash come only from the exchange (AccountUpdate / QueryReply),
never from fills, so equity is never computed from half an update:

    mark        = latest market-data price, else the exchange's mark, else avg price
    mtm         = qty * (mark - avg_price) * multiplier          (per position)
    unrealized  = sum of mtm                                     ("Total MTM")
    equity      = cash + sum(qty * mark * multiplier)

Performance:
    total_return = equity / initial_cash - 1
    max_drawdown = max over time of (peak equity - equity) / peak equity, checked
                   on every equity change (fraction, >= 0)
    sharpe       = mean / stdev (n-1) of the returns between equity samples,
                   annualised by sqrt(samples per year); one sample per market
                   time step (the equity when the market time moves on), at
                   most one per SAMPLE_MIN_NS (a minute) of market time: live
                   bars of 0.1 s would annualise a few seconds of noise into
                   a Sharpe of thousands; None with fewer than 2 returns or
                   zero variance
    trades       = closing fills (Fill.realized != 0); win_rate = wins / trades,
                   a win is realized > 0 (before fees). Fills seen before this
                   view started are unknown: ``complete`` says so instead of
                   showing zeros as if nothing had traded.

Trading state (key ``trading``), never guessed: ``paused``, ``halted`` and
``flattening`` are the exchange's own flags as its last AccountUpdate or
QueryReply carried them (``known`` False until one came); ``strategy`` is the
strategy actor's state from the supervisor's events (``failed``: disabled after
crash-looping, ``strategy_detail`` says why). ``state`` sums them up, the first
that holds of: halted, flattening, paused, failed (the strategy), trading (the
strategy is running), idle (it is not, e.g. restarting); "unknown" before the
exchange reported.

Trades carry ``ts`` (the market time of the fill) and ``at_ns`` (the wall-clock
time the exchange published it): live, market time runs on its own clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Iterable

from bus.messages import (
    AccountUpdate, ActorEvent, Bar, BarBatch, EndOfData, FeedStatus, Fill, InstrumentsReply, OrderUpdate, QueryReply,
    Tick,
)

YEAR_NS = 365.25 * 24 * 3600 * 1e9
SAMPLE_MIN_NS = 60 * 10**9  # Sharpe samples: at most one per minute of market time
OPEN_STATUSES = ("new", "partially-filled")
KEYS = ("run_id", "publisher", "actors", "trading", "account", "positions", "orders", "trades", "performance",
        "market", "feed", "instruments", "counters", "greeks", "session")
STRATEGY = "strategy"  # the actor whose state the trading summary includes


def _r(x: float, nd: int = 6) -> float:
    """Round for display and stable deltas: float noise would publish a delta per bar."""
    return round(x, nd) + 0.0  # + 0.0 turns -0.0 into 0.0


class StateView:
    def __init__(self, run_id: str = "", last_trades: int = 50, publisher: dict[str, Any] | None = None):
        self.run_id = run_id
        self.publisher = dict(publisher or {})
        self.actors: dict[str, dict[str, Any]] = {}
        # account, as the exchange last reported it
        self.account_known = False
        self.cash = 0.0
        self.initial_cash = 0.0
        self.realized = 0.0
        self.fees = 0.0
        self.account_ts = 0
        self.account_type = ""  # cash or margin, once the exchange reported
        self.buying_power = 0.0
        # trading flags, as the exchange last reported them
        self.flags_known = False
        self.flags = {"paused": False, "halted": False, "flattening": False}
        self.pos: dict[str, dict[str, Any]] = {}  # symbol -> qty, avg_price, exch_mark, realized, fees
        self.orders: dict[int, dict[str, Any]] = {}
        self.trades: deque[dict[str, Any]] = deque(maxlen=last_trades)
        # market data
        self.prices: dict[str, float] = {}
        self.md_updates = 0
        self.md_ts = 0
        self.eod = False
        # the feed's health, as market-data last published it (FeedStatus on md.status)
        self.feed: dict[str, Any] = {"known": False, "feed": "", "state": "unknown", "since_ns": 0,
                                     "last_data_ns": 0, "detail": "", "symbols": []}
        # instrument master
        self.multipliers: dict[str, float] = {}
        self.instruments: dict[str, Any] = {"count": 0, "option_mappings": 0, "kinds": {}, "known": False}
        # performance
        self.complete = True  # False once we learn trading happened before this view started
        self.fills = 0
        self.closing = 0
        self.wins = 0
        self.losses = 0
        self.fill_realized = 0.0
        self.peak = 0.0
        self.max_dd = 0.0
        self._step_ts = 0  # market time of the current step
        self._samples = 0
        self._first_sample_ts = 0
        self._last_sample_ts = 0
        self._last_sample_eq = 0.0
        self._n_ret = 0
        self._mean = 0.0
        self._m2 = 0.0  # Welford running variance of sample returns
        self.counters: dict[str, Any] = {}

    # ------------------------------------------------------------------ input
    def apply(self, msg: Any, ts_ns: int = 0) -> set[str]:
        """Apply one message; returns the top-level keys that may have changed.

        A superset: a key whose value came out the same is dropped by the
        publisher, which compares encoded values before publishing a delta.

        ``ts_ns`` is the envelope time (used as the actor-event time).
        Messages the view does not track change nothing.
        """
        if isinstance(msg, (Bar, Tick)):
            return self._price(msg.symbol, msg.close if isinstance(msg, Bar) else msg.price, msg.ts)
        if isinstance(msg, BarBatch):
            # Backtest batches: the view needs the latest price per symbol, not
            # every bar (summary.json has the per-bar figures); this keeps the
            # publisher off the backtest's critical path.
            last: dict[str, Bar] = {}
            for b in msg.bars:
                last[b.symbol] = b
            changed: set[str] = set()
            for b in last.values():
                changed |= self._price(b.symbol, b.close, b.ts)
            self.md_updates += len(msg.bars) - len(last)
            return changed
        if isinstance(msg, Fill):
            return self._fill(msg, ts_ns)
        if isinstance(msg, OrderUpdate):
            return self._order(msg.order)
        if isinstance(msg, AccountUpdate):
            return self._account(msg.account, msg.positions, msg.ts) | self._flags(msg)
        if isinstance(msg, QueryReply):
            changed = self._flags(msg)
            if msg.account is not None:
                changed |= self._account(msg.account, msg.positions, 0)
            old = dict(self.orders)
            self.orders = {o.order_id: self._order_dict(o) for o in msg.orders if o.status in OPEN_STATUSES}
            if self.orders != old:
                changed.add("orders")
            return changed
        if isinstance(msg, ActorEvent):
            return self._actor(msg, ts_ns)
        if isinstance(msg, FeedStatus):
            new = {"known": True, "feed": msg.feed, "state": msg.state, "since_ns": msg.since,
                   "last_data_ns": msg.last_data, "detail": msg.detail, "symbols": list(msg.symbols)}
            if new == self.feed:
                return set()
            self.feed = new
            return {"feed"}
        if isinstance(msg, EndOfData):
            self._sample(self._step_ts)
            self.eod = True
            return {"market", "performance"}
        if isinstance(msg, InstrumentsReply):
            return self.set_instruments(msg)
        return set()

    # Options and trading hours (actors/market_rules.ViewMarket): keys greeks and session.
    market: Any = None

    def attach_market(self, market: Any) -> None:
        self.market = market

    def set_instruments(self, reply: InstrumentsReply) -> set[str]:
        if self.market is not None:
            self.market.set_instruments(reply.instruments)
        kinds: dict[str, int] = {}
        for i in reply.instruments:
            kinds[i.kind] = kinds.get(i.kind, 0) + 1
            self.multipliers[i.symbol] = i.multiplier
        self.instruments = {"count": len(reply.instruments), "option_mappings": reply.option_mappings,
                            "kinds": kinds, "known": True}
        changed = {"instruments"}
        if self.pos:
            changed |= self._equity_changed()
        return changed

    def set_run_id(self, run_id: str) -> set[str]:
        if run_id == self.run_id:
            return set()
        self.run_id = run_id
        return {"run_id"}

    def set_counters(self, counters: dict[str, Any]) -> set[str]:
        if counters == self.counters:
            return set()
        self.counters = dict(counters)
        return {"counters"}

    # --------------------------------------------------------------- handlers
    def _flags(self, msg: AccountUpdate | QueryReply) -> set[str]:
        new = {"paused": msg.paused, "halted": msg.halted, "flattening": msg.flattening}
        if self.flags_known and new == self.flags:
            return set()
        self.flags_known = True
        self.flags = new
        return {"trading"}

    def _actor(self, ev: ActorEvent, ts_ns: int) -> set[str]:
        # The supervisor republishes every actor's state each second (for late
        # subscribers) with an empty detail: that is no change.
        old = self.actors.get(ev.actor)
        same = old is not None and old["state"] == ev.state and old["pid"] == ev.pid
        new = {"state": ev.state, "pid": ev.pid, "restarts": ev.restarts,
               "detail": ev.detail or (old["detail"] if same else ""),
               "since_ns": old["since_ns"] if same else ts_ns}
        if new == old:
            return set()
        self.actors[ev.actor] = new
        if ev.actor == STRATEGY and (old is None or old["state"] != new["state"]
                                     or (new["state"] == "failed" and old["detail"] != new["detail"])):
            return {"actors", "trading"}
        return {"actors"}

    @staticmethod
    def _order_dict(o: Any) -> dict[str, Any]:
        return {"order_id": o.order_id, "cl_id": o.cl_id, "symbol": o.symbol, "side": o.side, "qty": o.qty,
                "filled": o.filled, "type": o.order_type, "price": o.price, "tif": o.tif, "status": o.status,
                "ts": o.ts}

    def _order(self, o: Any) -> set[str]:
        if o.status in OPEN_STATUSES:
            d = self._order_dict(o)
            if self.orders.get(o.order_id) == d:
                return set()
            self.orders[o.order_id] = d
            return {"orders"}
        if self.orders.pop(o.order_id, None) is not None:
            return {"orders"}
        return set()

    def _fill(self, f: Fill, at_ns: int = 0) -> set[str]:
        self.fills += 1
        if f.realized != 0.0:
            self.closing += 1
            self.fill_realized += f.realized
            if f.realized > 0:
                self.wins += 1
            else:
                self.losses += 1
        self.trades.append({"fill_id": f.fill_id, "order_id": f.order_id, "cl_id": f.cl_id, "symbol": f.symbol,
                            "side": f.side, "qty": f.qty, "price": f.price, "fee": f.fee, "realized": f.realized,
                            "position": f.position, "ts": f.ts, "at_ns": at_ns})
        return {"trades", "performance"}

    def _account(self, acct: Any, positions: Iterable[Any], ts: int) -> set[str]:
        first = not self.account_known
        self.account_known = True
        self.cash = acct.cash
        self.initial_cash = acct.initial_cash
        self.realized = acct.realized
        self.fees = acct.fees
        self.account_type = acct.account_type
        self.buying_power = acct.buying_power
        self.account_ts = ts
        self.pos = {}
        for p in positions:
            if p.qty != 0:
                self.pos[p.symbol] = {"qty": p.qty, "avg_price": p.avg_price, "exch_mark": p.mark,
                                      "realized": p.realized, "fees": p.fees}
        if first and self.fills == 0 and (acct.realized != 0.0 or acct.fees != 0.0):
            # The exchange traded before this view existed: its fills are not ours to count.
            self.complete = False
        return {"account", "positions"} | self._equity_changed() | ({"greeks"} if self.market is not None else set())

    def _price(self, symbol: str, price: float, ts: int) -> set[str]:
        changed = {"market"}
        if ts > self._step_ts:
            # Market time moves on: the equity now is the close of the previous step.
            if self._step_ts:
                self._sample(self._step_ts)
                changed.add("performance")
            self._step_ts = ts
        self.prices[symbol] = price
        self.md_updates += 1
        self.md_ts = max(self.md_ts, ts)
        if symbol in self.pos:
            changed |= {"positions", "account"} | self._equity_changed()
        if self.market is not None:
            changed.add("session")  # the publisher drops it when unchanged
            if self.pos and self.market.affects(symbol):
                changed.add("greeks")
        return changed

    # ------------------------------------------------------------- accounting
    def mark(self, symbol: str) -> float:
        p = self.pos.get(symbol)
        last = self.prices.get(symbol)
        if last is not None:
            return last
        if p is not None:
            return p["exch_mark"] or p["avg_price"]
        return 0.0

    def equity(self) -> float:
        return self.cash + sum(p["qty"] * self.mark(s) * self.multipliers.get(s, 1.0) for s, p in self.pos.items())

    def unrealized(self) -> float:
        return sum(p["qty"] * (self.mark(s) - p["avg_price"]) * self.multipliers.get(s, 1.0)
                   for s, p in self.pos.items())

    def _equity_changed(self) -> set[str]:
        if not self.account_known:
            return set()
        eq = self.equity()
        if eq > self.peak:
            self.peak = eq
        elif self.peak > 0:
            self.max_dd = max(self.max_dd, (self.peak - eq) / self.peak)
        return {"performance"}

    def _sample(self, ts: int) -> None:
        """One equity sample per market time step (at most one a minute), for the Sharpe ratio."""
        if not self.account_known or ts <= self._last_sample_ts or (
                self._samples and ts - self._last_sample_ts < SAMPLE_MIN_NS):
            return
        eq = self.equity()
        if self._samples and self._last_sample_eq > 0:
            r = eq / self._last_sample_eq - 1.0
            self._n_ret += 1
            d = r - self._mean
            self._mean += d / self._n_ret
            self._m2 += d * (r - self._mean)
        else:
            self._first_sample_ts = ts
        self._samples += 1
        self._last_sample_ts = ts
        self._last_sample_eq = eq

    def sharpe(self) -> float | None:
        if self._n_ret < 2 or self._last_sample_ts <= self._first_sample_ts:
            return None
        var = self._m2 / (self._n_ret - 1)
        if var <= 0:
            return None
        per_year = YEAR_NS / ((self._last_sample_ts - self._first_sample_ts) / self._n_ret)
        return self._mean / math.sqrt(var) * math.sqrt(per_year)

    # ----------------------------------------------------------------- output
    def value(self, key: str) -> Any:
        if key == "run_id":
            return self.run_id
        if key == "publisher":
            return dict(self.publisher)
        if key == "actors":
            return {k: dict(v) for k, v in sorted(self.actors.items())}
        if key == "trading":
            return self._trading()
        if key == "account":
            gross = sum(abs(p["qty"] * self.mark(s) * self.multipliers.get(s, 1.0)) for s, p in self.pos.items())
            return {"known": self.account_known, "cash": _r(self.cash), "equity": _r(self.equity()),
                    "initial_cash": _r(self.initial_cash), "realized": _r(self.realized),
                    "unrealized": _r(self.unrealized()), "fees": _r(self.fees), "gross_exposure": _r(gross),
                    "account_type": self.account_type, "buying_power": _r(self.buying_power),
                    "ts": self.account_ts}
        if key == "positions":
            out = {}
            for s, p in sorted(self.pos.items()):
                m, mult = self.mark(s), self.multipliers.get(s, 1.0)
                out[s] = {"qty": p["qty"], "avg_price": _r(p["avg_price"]), "last": _r(m),
                          "mtm": _r(p["qty"] * (m - p["avg_price"]) * mult), "market_value": _r(p["qty"] * m * mult),
                          "multiplier": mult, "realized": _r(p["realized"]), "fees": _r(p["fees"])}
            return out
        if key == "orders":
            return {str(k): dict(v) for k, v in sorted(self.orders.items())}
        if key == "trades":
            return [dict(t) for t in self.trades]
        if key == "performance":
            eq = self.equity()
            sh = self.sharpe()
            return {
                "total_return": _r(eq / self.initial_cash - 1.0, 8) if self.account_known and self.initial_cash > 0
                else None,
                "max_drawdown": _r(self.max_dd, 8),
                "drawdown": _r((self.peak - eq) / self.peak, 8) if self.account_known and self.peak > 0 else 0.0,
                "peak_equity": _r(self.peak),
                "sharpe": None if sh is None else _r(sh, 4),
                "samples": self._samples,
                "trades": self.closing,
                "wins": self.wins,
                "losses": self.losses,
                "win_rate": _r(self.wins / self.closing, 6) if self.closing else None,
                "fills": self.fills,
                "realized_from_fills": _r(self.fill_realized),
                "complete": self.complete,
            }
        if key == "market":
            return {"symbols": len(self.prices), "last": dict(sorted(self.prices.items())),
                    "updates": self.md_updates, "ts": self.md_ts, "eod": self.eod}
        if key == "feed":
            return {**self.feed, "symbols": list(self.feed["symbols"])}
        if key == "instruments":
            return dict(self.instruments)
        if key == "counters":
            return dict(self.counters)
        if key == "greeks":
            if self.market is None:
                return {"known": False, "positions": {}, "portfolio": {"delta": {}, "gamma": {}, "vega": 0.0,
                                                                       "theta": 0.0}}
            return self.market.greeks({s: p["qty"] for s, p in self.pos.items()}, self.prices, self.md_ts)
        if key == "session":
            if self.market is None:
                return {"configured": False, "state": "open", "next_ns": 0, "next_state": "", "timezone": "",
                        "calendar": ""}
            return self.market.session_view(self.md_ts, time.time_ns())
        raise KeyError(f"unknown view key {key!r} (known: {', '.join(KEYS)})")

    def _trading(self) -> dict[str, Any]:
        a = self.actors.get(STRATEGY)
        strategy = a["state"] if a else "unknown"
        f = self.flags
        if not self.flags_known:
            state = "unknown"
        else:
            state = next((k for k in ("halted", "flattening", "paused") if f[k]), None) or (
                "failed" if strategy == "failed" else "trading" if strategy == "running" else "idle")
        return {"state": state, "known": self.flags_known, **f, "strategy": strategy,
                "strategy_detail": a["detail"] if a and strategy == "failed" else ""}

    def snapshot(self) -> dict[str, Any]:
        return {k: self.value(k) for k in KEYS}

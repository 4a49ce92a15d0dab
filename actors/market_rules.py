"""Trading hours and options, wired from the config into the cores: the one place that
reads ``[session]`` and ``[options]`` for the actors and the in-process kernel alike.

- ``attach(core, cfg, instruments)``: the exchange core's session rules and option expiry
  (ExchangeCore.attach_market_rules); nothing when there is no [session] and no option.
- ``in_session(batches, cal)``: market data only in session (pre-open to close), applied
  to bar timestamps, so a backtest follows the rules a live feed does on the wall clock.
- ``OptionQuoter``: the synthetic feed's option prices (each listed, unexpired option
  priced from its underlying's last price under the [options] smile).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from actors import options as options_mod
from actors import sessions
from bus.messages import Bar, Instrument, Quote


def wanted(cfg: Any, instruments: list[Instrument]) -> bool:
    """Trading hours or options to apply: a [session] table, or an option in the master."""
    return cfg.session is not None or any(i.kind == "option" for i in instruments)


def attach(core: Any, cfg: Any, instruments: list[Instrument]) -> None:
    cal = sessions.calendar_of(cfg)
    chains = options_mod.chains_of(cfg, instruments) if any(i.kind == "option" for i in instruments) else None
    if cal is not None or chains is not None:
        flatten = cfg.session.flatten_at_square_off if cfg.session is not None else True
        core.attach_market_rules(cal, chains, flatten)


class InSession:
    """Market data only in session: the bars (or ticks) whose timestamp the calendar
    publishes (pre-open to close), renumbered 1, 2, 3... so ``fseq`` stays contiguous (the
    actor kernel's flow control counts on it); ``end(eod)`` gives the EndOfData with the
    count and last fseq of what went out. ``dropped`` counts the rest."""

    def __init__(self, cal: Any):
        self.cal = cal
        self.fseq = 0
        self.dropped = 0

    def _keep(self, m: Any) -> bool:
        if self.cal.publishes(m.ts):
            self.fseq += 1
            m.fseq = self.fseq
            return True
        self.dropped += 1
        return False

    def batches(self, batches: Iterable[list[Any]]) -> Iterator[list[Any]]:
        """The batches without what is out of session; an emptied batch is not yielded."""
        keep = self._keep
        for batch in batches:
            kept = [b for b in batch if keep(b)]
            if kept:
                yield kept

    def messages(self, messages: Iterable[Any]) -> Iterator[Any]:
        keep = self._keep
        return (m for m in messages if keep(m))

    def end(self, eod: Any) -> Any:
        eod.count = eod.last_fseq = self.fseq
        return eod


class OptionQuoter:
    """Model quotes for the synthetic feed: for each listed, unexpired option a Quote (bid /
    ask around the Black-Scholes or Black-76 price, on the tick grid) and a Bar whose
    open = high = low = close = the model mid, each interval.

    The exchange fills option orders on the Quote (market buys at the ask, sells at the
    bid: ExchangeCore.on_quote; once a symbol is quoted its bars no longer fill it). The
    Bar is the option's price history: strategies' on_bar and history requests, the
    view's last price, the chart."""

    def __init__(self, cfg: Any, instruments: list[Instrument]):
        self.chains = options_mod.chains_of(cfg, instruments)
        self.pricer = options_mod.pricer_of(cfg, self.chains)

    def __bool__(self) -> bool:
        return bool(self.chains.expiry_of)

    def quotes(self, last: dict[str, float], ts: int) -> list[tuple[Quote, Bar]]:
        """(Quote, Bar) per live option whose underlying has a price; expired options leave
        the chain (and are priced no more)."""
        self.chains.expire(ts)
        out = []
        for u, opts in self.chains.by_underlying.items():
            s = last.get(u)
            if s is None:
                continue
            for o in opts:
                bid, mid, ask = self.pricer.quote(o, s, ts)
                out.append((Quote(symbol=o.symbol, ts=ts, bid=bid, ask=ask),
                            Bar(symbol=o.symbol, ts=ts, open=mid, high=mid, low=mid, close=mid)))
        return out


class StrategyMarket:
    """What a strategy knows of trading hours and options (actors/strategy_host.py keeps
    one; the plugin reaches it through the Strategy helpers ``chain``, ``atm``...):

    - the option chains (expired options leave them) and the model (greeks, delta
      selection) under the [options] smile;
    - the last price of every symbol and the latest market time;
    - the session: its state at the latest market time (bar timestamps in a backtest, the
      wall clock live) and the open / close events crossed since (``clock``)."""

    def __init__(self, cfg: Any, instruments: list[Instrument]):
        self.session = sessions.calendar_of(cfg)
        self.transitions = sessions.Transitions(self.session) if self.session is not None else None
        self.chains = options_mod.chains_of(cfg, instruments)
        self.pricer = options_mod.pricer_of(cfg, self.chains)
        self.last: dict[str, float] = {}
        self.now = 0  # latest market time, ns

    def on_bar(self, bar: Any) -> list[tuple[str, Any]]:
        self.last[bar.symbol] = bar.close
        return self.clock(bar.ts)

    def clock(self, ts: int) -> list[tuple[str, Any]]:
        """Market time reached ``ts``: expire options; the session events crossed."""
        if ts <= self.now:
            return []
        self.now = ts
        self.chains.expire(ts)
        return self.transitions.feed(ts) if self.transitions is not None else []

    def state(self) -> str:
        """The session state now ("open" when there is no [session]: the market never closes)."""
        if self.session is None:
            return "open"
        return self.session.state(self.now) if self.now else "closed"

    def can_trade(self) -> bool:
        return self.state() in ("open", "square-off")

    def spot(self, symbol: str) -> float:
        px = self.last.get(symbol)
        if px is None:
            raise options_mod.OptionError(f"no price of {symbol!r} seen yet")
        return px


NO_SESSION = {"configured": False, "state": "open", "next_ns": 0, "next_state": "", "timezone": "", "calendar": ""}


class ViewMarket:
    """The state view's options and trading hours (actors/state_view.py keys ``greeks`` and
    ``session``): each option position's greeks and the portfolio's, and the session
    state with its next change.

    Greeks use the option's implied volatility from its last price when the feed gives
    one (a replay's option bars, a venue's quotes), else the [options] smile; the time is
    the latest market time. Portfolio delta and gamma are per underlying (in its units:
    options x multiplier x delta, plus the underlying's own position); vega and theta are
    summed in money (per 1.00 of volatility, per year)."""

    def __init__(self, cfg: Any, wall_clock: bool):
        self.cfg = cfg
        self.session = sessions.calendar_of(cfg)
        self.wall_clock = wall_clock  # live on the synthetic feed: the session runs on the wall clock
        self.chains: options_mod.OptionChains | None = None
        self.pricer: options_mod.Pricer | None = None
        self.insts: dict[str, Instrument] = {}
        self.underlyings: set[str] = set()

    def set_instruments(self, instruments: list[Instrument]) -> None:
        self.insts = {i.symbol: i for i in instruments}
        if any(i.kind == "option" for i in instruments):
            self.chains = options_mod.chains_of(self.cfg, instruments)
            self.pricer = options_mod.pricer_of(self.cfg, self.chains)
            self.underlyings = {i.underlying for i in instruments if i.kind == "option"}

    def affects(self, symbol: str) -> bool:
        """A price of ``symbol`` can change the greeks (an option or an underlying)."""
        return self.chains is not None and (symbol in self.underlyings or symbol in self.chains.expiry_of)

    def greeks(self, qty: dict[str, int], prices: dict[str, float], now: int) -> dict[str, Any]:
        out: dict[str, Any] = {"known": self.chains is not None, "positions": {},
                               "portfolio": {"delta": {}, "gamma": {}, "vega": 0.0, "theta": 0.0}}
        if self.chains is None or self.pricer is None:
            return out
        pf = out["portfolio"]
        for sym, q in sorted(qty.items()):
            inst = self.insts.get(sym)
            if not q or inst is None:
                continue
            if inst.kind != "option":
                if sym in self.underlyings:
                    pf["delta"][sym] = pf["delta"].get(sym, 0.0) + q * inst.multiplier
                continue
            s = prices.get(inst.underlying)
            expiry = self.chains.expiry_of.get(sym)
            if s is None or expiry is None:
                continue
            t = options_mod.years(now, expiry)
            model = options_mod.model_for(self.insts.get(inst.underlying))
            iv = None
            own = prices.get(sym)
            if own is not None:
                iv = options_mod.implied_vol(own, s, inst.strike, t, self.pricer.rate, inst.right, model=model)
            vol = iv if iv is not None else self.pricer.smile.vol(inst.strike, s)
            g = options_mod.greeks(s, inst.strike, t, self.pricer.rate, vol, inst.right, model=model)
            pos = options_mod.position_greeks(q, inst, g)
            out["positions"][sym] = {
                "qty": q, "underlying": inst.underlying, "iv": round(vol, 6), "iv_source": "price" if iv else "model",
                "option": {k: round(getattr(g, k), 6) for k in ("price", "delta", "gamma", "vega", "theta")},
                **{k: round(v, 6) for k, v in pos.items()}}
            u = inst.underlying
            pf["delta"][u] = pf["delta"].get(u, 0.0) + pos["delta"]
            pf["gamma"][u] = pf["gamma"].get(u, 0.0) + pos["gamma"]
            pf["vega"] += pos["vega"]
            pf["theta"] += pos["theta"]
        pf["delta"] = {k: round(v, 6) + 0.0 for k, v in pf["delta"].items()}
        pf["gamma"] = {k: round(v, 6) + 0.0 for k, v in pf["gamma"].items()}
        pf["vega"], pf["theta"] = round(pf["vega"], 6) + 0.0, round(pf["theta"], 6) + 0.0
        return out

    def session_view(self, md_ts: int, wall_ns: int) -> dict[str, Any]:
        if self.session is None:
            return dict(NO_SESSION)
        now = wall_ns if self.wall_clock else md_ts
        if not now:
            return {**NO_SESSION, "configured": True, "state": "unknown", "timezone": self.session.timezone,
                    "calendar": self.session.calendar}
        return {"configured": True, **self.session.describe(now)}

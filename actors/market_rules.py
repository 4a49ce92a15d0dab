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

    The Bar is there so the exchange fills option orders today (it fills on bars); once
    the exchange fills on quotes (ExchangeCore.on_quote, branch exch) the same orders fill
    at the bid / ask instead."""

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

"""The strategy API's options and trading-hours part (mixed into
actors/strategies/base.Strategy): option chains and their selection, greeks, the
session state and its hooks. The data behind it is the host's
actors/market_rules.StrategyMarket; the maths is actors/options.py.

Hooks: ``on_session_open(day)`` when the session opens (the first bar or clock tick in
it), ``on_session_close(day)`` when it is over (at the close live; in a backtest at the
first bar after it, before that bar's ``on_bar``). ``day`` is the local trading date.
Without a [session] table neither is called: the market never closes.

Helpers (``underlying`` a symbol, ``right`` "C" or "P", ``expiry`` "YYYY-MM-DD" or None
for the nearest listed expiry, ``spot`` the underlying's last price unless given):

- ``chain(underlying, expiry=None, right=None)``: the live options, sorted by expiry,
  strike, right (expired ones have left the chain);
- ``expiries(underlying)``;
- ``atm(underlying, right, expiry=None)``: the strike nearest the spot;
- ``option_by_offset(underlying, right, offset, expiry=None)``: ``offset`` strikes above
  (+) or below (-) the ATM one;
- ``option_by_delta(underlying, right, delta, expiry=None)``: model delta nearest
  ``delta`` (0.25 for a call, -0.25 for a put);
- ``greeks(option)``: actors.options.Greeks (price, delta, gamma, vega, theta) under the
  [options] smile at the underlying's last price;
- ``session_state()``: pre-open, open, square-off or closed ("open" without [session]).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from actors import options as options_mod
from bus.messages import Instrument


class MarketApi:
    _ctx: Any

    def _market(self) -> Any:
        m = getattr(self._ctx, "market", None)
        if m is None:
            raise options_mod.OptionError("no option chains or session here: the host has no market attached")
        return m

    # ---------------------------------------------------------------- hooks
    def on_session_open(self, day: _dt.date) -> None:
        """The trading session of local date ``day`` opened."""

    def on_session_close(self, day: _dt.date) -> None:
        """The trading session of local date ``day`` is over."""

    # -------------------------------------------------------------- helpers
    def session_state(self) -> str:
        m = getattr(self._ctx, "market", None)
        return "open" if m is None else m.state()

    def chain(self, underlying: str, expiry: str | None = None, right: str | None = None) -> list[Instrument]:
        return self._market().chains.chain(underlying, expiry, right)

    def expiries(self, underlying: str) -> list[str]:
        return self._market().chains.expiries(underlying)

    def atm(self, underlying: str, right: str, expiry: str | None = None,
            spot: float | None = None) -> Instrument | None:
        m = self._market()
        return m.chains.atm(underlying, right, spot if spot is not None else m.spot(underlying), expiry)

    def option_by_offset(self, underlying: str, right: str, offset: int, expiry: str | None = None,
                         spot: float | None = None) -> Instrument | None:
        m = self._market()
        return m.chains.by_offset(underlying, right, spot if spot is not None else m.spot(underlying), offset,
                                  expiry)

    def option_by_delta(self, underlying: str, right: str, delta: float, expiry: str | None = None,
                        spot: float | None = None) -> Instrument | None:
        m = self._market()
        return m.chains.by_delta(underlying, right, spot if spot is not None else m.spot(underlying), delta, m.now,
                                 m.pricer.smile, m.pricer.rate, expiry)

    def greeks(self, option: Instrument | str) -> options_mod.Greeks:
        m = self._market()
        inst = m.chains.instruments[option] if isinstance(option, str) else option
        return m.pricer.greeks(inst, m.spot(inst.underlying), m.now)

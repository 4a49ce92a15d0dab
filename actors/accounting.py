"""Pure accounting for the paper exchange: positions, average price, PnL, fees, round trips.

No sockets, no I/O: the exchange feeds fills and marks in, the tests feed random
sequences in, and both see the same numbers. Conventions:

- a position is signed (long > 0, short < 0). Quantities arrive as ints (whole units) or
  floats (0.015 BTC) and are kept as integer atoms of 10^-9 units (``Position.units``,
  bus/quantity.py), so the position after any number of fills is the exact decimal sum;
  ``Position.qty`` is its view: an int when whole, else the nearest float;
- ``avg_price`` is the volume-weighted entry price of the open quantity; reducing a
  position leaves it unchanged, a reversal resets it to the reversing fill's price;
- ``realized`` is gross (before fees); fees are accumulated separately, so
  equity = initial_cash + realized + unrealized - fees
         = cash + sum(position * mark * multiplier)       (cash account);
- every fill that closes (part of) a position produces one ``RoundTrip`` for the
  closed quantity, so realized == sum(round trip pnl) exactly by construction.
  Fees are attributed pro rata by quantity: the closing share of the exit fill's
  fee plus the closed share of the fees paid to open, so sum(trip fees) plus the
  fees of still-open quantity equals total fees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bus.quantity import SCALE, from_atoms, to_atoms


@dataclass(slots=True)
class RoundTrip:
    symbol: str
    side: str  # "long" or "short": direction of the position that was closed
    qty: int | float
    entry_ts: int
    entry_price: float
    exit_ts: int
    exit_price: float
    pnl: float  # gross
    fees: float

    @property
    def net(self) -> float:
        return self.pnl - self.fees


@dataclass(slots=True)
class Position:
    symbol: str
    multiplier: float = 1.0
    qty: int | float = 0  # view of ``units``: int when whole, else the nearest float
    units: int = 0  # the position in atoms (10^-9 units): the exact figure
    avg_price: float = 0.0
    mark: float = 0.0
    realized: float = 0.0
    fees: float = 0.0
    open_ts: int = 0  # time of the fill that opened the current position
    open_fees: float = 0.0  # fees paid for the open quantity, not yet in a round trip

    @property
    def unrealized(self) -> float:
        if self.qty == 0 or self.mark <= 0.0:
            return 0.0
        return self.qty * (self.mark - self.avg_price) * self.multiplier

    @property
    def market_value(self) -> float:
        return self.qty * self.mark * self.multiplier


@dataclass(slots=True)
class FillResult:
    realized: float  # gross PnL this fill realized
    position: int | float  # position after the fill
    trips: list[RoundTrip] = field(default_factory=list)


class AccountingError(ValueError):
    pass


class Account:
    """Cash account with per-instrument positions, marked to the latest price."""

    def __init__(self, initial_cash: float, keep_trips: bool = True):
        """``keep_trips``: keep every round trip in ``trips`` (a long run's caller takes each
        from the FillResult instead, and keeps only what it needs of it)."""
        if not math.isfinite(initial_cash):
            raise AccountingError(f"initial cash must be finite, got {initial_cash!r}")
        self.initial_cash = float(initial_cash)
        self.cash = float(initial_cash)
        self.positions: dict[str, Position] = {}
        self.keep_trips = keep_trips
        self.trips: list[RoundTrip] = []
        self.realized = 0.0
        self.fees = 0.0
        self.n_fills = 0

    # ---------------------------------------------------------------- events
    def apply_fill(self, symbol: str, side: str, qty: int | float, price: float, fee: float = 0.0, ts: int = 0,
                   multiplier: float = 1.0) -> FillResult:
        if side == "buy":
            s = 1
        elif side == "sell":
            s = -1
        else:
            raise AccountingError(f"side must be buy or sell, got {side!r}")
        tq = type(qty)
        if tq is int:
            if qty <= 0:
                raise AccountingError(f"fill qty must be > 0, got {qty!r}")
            qa = qty * SCALE
        elif tq is float and math.isfinite(qty) and qty > 0:
            qa = to_atoms(qty)
            if qa <= 0:
                raise AccountingError(f"fill qty {qty!r} is below 10^-9 units")
            qty = from_atoms(qa)  # the decimal it means (an int when whole)
        else:
            raise AccountingError(f"fill qty must be a positive finite number, got {qty!r}")
        if not (math.isfinite(price) and price > 0) and not (price == 0 and self._closes(symbol, s, qa)):
            # 0 only closes: an option expiring worthless (actors/options.py); never an opening trade
            raise AccountingError(f"fill price must be finite and > 0 (0 only to close a position), got {price!r}")
        if not (math.isfinite(fee) and fee >= 0):
            raise AccountingError(f"fee must be finite and >= 0, got {fee!r}")
        if not (math.isfinite(multiplier) and multiplier > 0):
            raise AccountingError(f"multiplier must be finite and > 0, got {multiplier!r}")
        p = self.positions.get(symbol)
        if p is None:
            p = self.positions[symbol] = Position(symbol, multiplier=float(multiplier))
        elif p.multiplier != multiplier:
            raise AccountingError(f"{symbol}: multiplier {multiplier} differs from the position's {p.multiplier}")
        m = p.multiplier

        self.cash -= s * qty * price * m + fee
        self.fees += fee
        p.fees += fee
        self.n_fills += 1
        res = FillResult(0.0, 0)
        open_a, open_fee = qa, fee
        units = p.units
        if units != 0 and (units > 0) != (s > 0):
            held_a = abs(units)
            close_a = min(qa, held_a)
            # Whole units (every equity) keep the int arithmetic, and so the same floats, as ever.
            close = from_atoms(close_a)
            direction = 1 if units > 0 else -1
            pnl = close * (price - p.avg_price) * m * direction
            exit_fee = fee * close / qty
            entry_fee = p.open_fees if close_a == held_a else p.open_fees * close / from_atoms(held_a)
            p.open_fees -= entry_fee
            trip = RoundTrip(symbol, "long" if direction > 0 else "short", close, p.open_ts, p.avg_price, ts,
                             price, pnl, entry_fee + exit_fee)
            res.trips.append(trip)
            if self.keep_trips:
                self.trips.append(trip)
            units += s * close_a
            p.realized += pnl
            self.realized += pnl
            res.realized = pnl
            open_a = qa - close_a
            open_fee = fee - exit_fee
            if units == 0:
                p.avg_price, p.open_ts, p.open_fees = 0.0, 0, 0.0
        if open_a:
            if units == 0:
                p.avg_price, p.open_ts = float(price), ts
            else:
                held, add = from_atoms(abs(units)), from_atoms(open_a)
                p.avg_price = (held * p.avg_price + add * price) / (held + add)
            units += s * open_a
            p.open_fees += open_fee
        p.units = units
        p.qty = from_atoms(units)
        # A fill is a trade at that price: the freshest mark until market data says otherwise.
        p.mark = float(price)
        res.position = p.qty
        return res

    def _closes(self, symbol: str, sign: int, atoms: int) -> bool:
        """A fill of ``sign`` x ``atoms`` (10^-9 units) only reduces the position (no opening part)."""
        p = self.positions.get(symbol)
        return p is not None and p.units * sign < 0 and atoms <= abs(p.units)

    def mark(self, symbol: str, price: float) -> bool:
        """Mark an instrument; returns True when an open position's value changed."""
        p = self.positions.get(symbol)
        if p is None or p.mark == price:
            return False
        if not (math.isfinite(price) and price > 0):
            raise AccountingError(f"mark price must be finite and > 0, got {price!r}")
        p.mark = float(price)
        return p.qty != 0

    # ---------------------------------------------------------------- views
    def position(self, symbol: str) -> int | float:
        p = self.positions.get(symbol)
        return p.qty if p else 0

    def units(self, symbol: str) -> int:
        """The position in atoms (10^-9 units): for exact sums and comparisons."""
        p = self.positions.get(symbol)
        return p.units if p else 0

    @property
    def unrealized(self) -> float:
        return sum(p.unrealized for p in self.positions.values())

    @property
    def market_value(self) -> float:
        return sum(p.market_value for p in self.positions.values())

    @property
    def gross_exposure(self) -> float:
        return sum(abs(p.market_value) for p in self.positions.values())

    @property
    def equity(self) -> float:
        return self.cash + self.market_value

"""Exact quantities: the one place that turns a wire quantity into an integer and back.

On the wire a quantity (bus/messages.py ``Qty``) is an ``int`` for whole units and a
``float`` otherwise (0.001 BTC). Binary floats cannot hold 0.1 exactly, so summing fills
as floats drifts (0.1 + 0.2 != 0.3). Every sum, difference and comparison of quantities
is therefore done on *atoms*: integers of 10^-9 units (``SCALE``). A float is read as the
decimal it prints as (its shortest repr, e.g. 0.30000000000000004 is 0.3 to 9 decimals),
so a strategy that computes 3 * 0.1 still means 0.3. Going back, ``from_atoms`` gives an
``int`` when the quantity is whole (equities keep printing "10", not "10.0") and else the
float nearest to the exact decimal (int / int division is correctly rounded).

An instrument's ``lot_size`` (its quantity step) has at most ``DECIMALS`` decimals, so a
quantity is on the step exactly when its atoms are a multiple of the step's atoms.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

DECIMALS = 9
SCALE = 10**DECIMALS  # atoms per unit
_ATOM = Decimal(1)


def to_atoms(q: int | float) -> int:
    """The quantity in atoms (10^-9 units): exact for an int, the printed decimal for a float."""
    if type(q) is int:
        return q * SCALE
    if q.is_integer():  # whole floats (10.0) are common: no Decimal needed
        return int(q) * SCALE
    d = Decimal(repr(q)).scaleb(DECIMALS)
    return int(d.quantize(_ATOM, rounding=ROUND_HALF_EVEN))


def exact(q: int | float) -> bool:
    """True when ``q`` has at most DECIMALS decimals (as it prints), so atoms hold it exactly."""
    if type(q) is int or q.is_integer():
        return True
    return Decimal(repr(q)) == Decimal(to_atoms(q)).scaleb(-DECIMALS)


def from_atoms(a: int) -> int | float:
    """Atoms back to a quantity: an int when whole, else the float nearest the exact decimal."""
    w, r = divmod(a, SCALE)
    return w if not r else a / SCALE


def norm(q: int | float) -> int | float:
    """A quantity as ``from_atoms(to_atoms(q))``: 10.0 -> 10, 0.1 + 0.2 -> 0.3."""
    if type(q) is int:
        return q
    return from_atoms(to_atoms(q))


def decimals(step: int | float) -> int:
    """Decimals of a quantity step (0.001 -> 3, 1 -> 0, 0.5 -> 1): how quantities print."""
    a = to_atoms(step)
    d = 0
    while a % SCALE and d < DECIMALS:
        a *= 10
        d += 1
    return d


def fmt(q: int | float, dec: int) -> str:
    """A quantity with ``dec`` decimals (the step's); whole-unit instruments print as integers."""
    if dec <= 0:
        a = to_atoms(q)
        if a % SCALE == 0:
            return str(a // SCALE)
        return repr(from_atoms(a))  # off the step (cannot come from the exchange): never hide it
    return f"{from_atoms(to_atoms(q)):.{dec}f}"


def off_step(q: int | float, step: int | float) -> bool:
    """True when ``q`` is not a positive whole number of ``step``s."""
    a, s = to_atoms(q), to_atoms(step)
    return a <= 0 or s <= 0 or a % s != 0


def show(q: int | float) -> str:
    """A quantity for a human: "10" for whole units, "0.015" otherwise (no float noise)."""
    q = norm(q)
    return str(q) if type(q) is int else repr(q)

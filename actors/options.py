"""Options without transport: prices, greeks, an implied-volatility smile, option chains
and their selection, and what an option is worth at expiry. Pure functions and plain
classes (no I/O, no sockets), like actors/accounting.py: the synthetic feed prices
options with them, the strategy API selects options with them, the exchange settles
with them and the state view sums greeks with them, so every part agrees.

Models (``model``):

- ``bs``: Black-Scholes-Merton on a spot underlying (equity, crypto, fx) with a
  continuous dividend / foreign rate ``q``:
  d1 = (ln(S/K) + (r - q + sigma^2/2) T) / (sigma sqrt T), d2 = d1 - sigma sqrt T,
  call = S e^{-qT} N(d1) - K e^{-rT} N(d2), put = K e^{-rT} N(-d2) - S e^{-qT} N(-d1);
- ``black76``: Black-76 on a future's price F (the underlying is a future):
  call = e^{-rT} (F N(d1) - K N(d2)), put = e^{-rT} (K N(-d2) - F N(-d1)), d1 with r - q = 0.

Greeks per unit of the underlying (per option, before the contract multiplier):
delta = dV/dS, gamma = d2V/dS2, vega = dV/dsigma per 1.00 of volatility (divide by 100
for a vol point), theta = dV/dt per year of calendar time (divide by 365 for a day).
A position's greeks are qty * multiplier * the option's (the underlying's delta is
qty * multiplier), so portfolio delta is in units of the underlying.

Time: ``T`` is in years of 365 days, from now to the expiry instant: the expiry date at
``expiry_time`` in ``tz`` (config ``[options] expiry_time`` and ``[session] timezone``).
At or after it (T <= 0) an option is worth its intrinsic value, with delta 1/0 (or -1/0
for a put) and no gamma, vega or theta.

Settlement at expiry (``settlement``): cash at intrinsic value by default -- the
position is closed at a price equal to max(S - K, 0) for a call, max(K - S, 0) for a
put, S the underlying's last price -- or physical (``Instrument.settlement`` says so):
an in-the-money long call buys the underlying at K (a put sells it), a short one the
other way round; an out-of-the-money one expires worthless (closed at 0) either way.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from actors.base import UserError
from bus.messages import Instrument

YEAR_NS = 365 * 86_400 * 10**9  # option time runs on 365-day years (the market convention)
MODELS = ("bs", "black76")
SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class OptionError(ValueError):
    """A bad input to a pricing or selection function; the message names the value."""


class OptionsConfigError(UserError, OptionError):
    """A bad ``[options]`` table: the run does not start (exit 2), naming the key."""


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / SQRT2)


def norm_pdf(x: float) -> float:
    return INV_SQRT_2PI * math.exp(-0.5 * x * x)


@dataclass(frozen=True, slots=True)
class Greeks:
    price: float
    delta: float
    gamma: float
    vega: float
    theta: float


def _check(s: float, k: float, sigma: float, right: str) -> None:
    if right not in ("C", "P"):
        raise OptionError(f"right must be 'C' or 'P', not {right!r}")
    if not (math.isfinite(s) and s > 0):
        raise OptionError(f"underlying price must be finite and > 0, not {s!r}")
    if not (math.isfinite(k) and k > 0):
        raise OptionError(f"strike must be finite and > 0, not {k!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise OptionError(f"volatility must be finite and > 0, not {sigma!r}")


def intrinsic(right: str, strike: float, underlying: float) -> float:
    """What the option is worth exercised now (>= 0)."""
    return max(underlying - strike, 0.0) if right == "C" else max(strike - underlying, 0.0)


def greeks(s: float, k: float, t: float, r: float, sigma: float, right: str, q: float = 0.0,
           model: str = "bs") -> Greeks:
    """Price and greeks of one option (see the module docstring for the formulas).

    ``s`` is the spot (``bs``) or the future's price (``black76``); ``t`` years to expiry."""
    _check(s, k, sigma, right)
    if model not in MODELS:
        raise OptionError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    call = right == "C"
    if t <= 0.0:
        v = intrinsic(right, k, s)
        d = (1.0 if s > k else 0.0) if call else (-1.0 if s < k else 0.0)
        return Greeks(v, d, 0.0, 0.0, 0.0)
    if model == "black76":
        q = r  # e^{-rT} F plays the role of e^{-qT} S: the same formulas with b = r - q = 0
    sq = math.sqrt(t)
    vs = sigma * sq
    d1 = (math.log(s / k) + (r - q + 0.5 * sigma * sigma) * t) / vs
    d2 = d1 - vs
    dq, dr = math.exp(-q * t), math.exp(-r * t)
    pdf = norm_pdf(d1)
    gamma = dq * pdf / (s * vs)
    vega = s * dq * pdf * sq
    common = -s * dq * pdf * sigma / (2.0 * sq)
    if call:
        nd1, nd2 = norm_cdf(d1), norm_cdf(d2)
        price = s * dq * nd1 - k * dr * nd2
        delta = dq * nd1
        theta = common + q * s * dq * nd1 - r * k * dr * nd2
    else:
        nd1, nd2 = norm_cdf(-d1), norm_cdf(-d2)
        price = k * dr * nd2 - s * dq * nd1
        delta = -dq * nd1
        theta = common - q * s * dq * nd1 + r * k * dr * nd2
    return Greeks(price, delta, gamma, vega, theta)


def price(s: float, k: float, t: float, r: float, sigma: float, right: str, q: float = 0.0,
          model: str = "bs") -> float:
    return greeks(s, k, t, r, sigma, right, q, model).price


def implied_vol(target: float, s: float, k: float, t: float, r: float, right: str, q: float = 0.0,
                model: str = "bs", lo: float = 1e-4, hi: float = 10.0, tol: float = 1e-10) -> float | None:
    """The volatility at which the model gives ``target`` (bisection: the price rises with
    volatility), or None when no volatility in [lo, hi] does (a price below the
    discounted intrinsic value or above the upper bound, or no time left)."""
    if t <= 0 or not (math.isfinite(target) and target > 0):
        return None
    p_lo, p_hi = price(s, k, t, r, lo, right, q, model), price(s, k, t, r, hi, right, q, model)
    if not p_lo <= target <= p_hi:
        return None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if price(s, k, t, r, mid, right, q, model) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True, slots=True)
class Smile:
    """Implied volatility by strike: sigma(K) = atm + skew x m + curvature x m^2, with
    m = ln(K / F) the log-moneyness against the forward (the spot for ``bs`` with r = q),
    floored at ``floor``. ``skew`` < 0 makes puts dearer than calls (equity-like);
    ``curvature`` > 0 lifts both wings. skew = curvature = 0 is a flat volatility."""

    atm: float
    skew: float = 0.0
    curvature: float = 0.0
    floor: float = 0.01

    def __post_init__(self) -> None:
        for name in ("atm", "skew", "curvature", "floor"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise OptionError(f"smile {name} must be finite, not {v!r}")
        if self.atm <= 0 or self.floor <= 0:
            raise OptionError(f"smile atm ({self.atm}) and floor ({self.floor}) must be > 0")

    def vol(self, strike: float, forward: float) -> float:
        m = math.log(strike / forward)
        return max(self.floor, self.atm + self.skew * m + self.curvature * m * m)


# ------------------------------------------------------------------ instruments
def model_for(underlying: Instrument | None) -> str:
    """Black-76 on a future (or a perpetual: a futures-like price), Black-Scholes otherwise."""
    return "black76" if underlying is not None and underlying.kind in ("future", "perpetual") else "bs"


def expiry_ns(inst: Instrument, expiry_time: str = "16:00", tz: str = "UTC") -> int:
    """The expiry instant of an option: its expiry date at ``expiry_time`` (HH:MM) in ``tz``,
    ns since the epoch (DST-correct through zoneinfo)."""
    try:
        d = _dt.date.fromisoformat(inst.expiry)
    except ValueError:
        raise OptionError(f"option {inst.symbol}: expiry {inst.expiry!r} is not YYYY-MM-DD") from None
    t = parse_hhmm(expiry_time, "expiry_time")
    return int(_dt.datetime.combine(d, t, tzinfo=ZoneInfo(tz)).timestamp()) * 10**9


def parse_hhmm(text: str, what: str) -> _dt.time:
    try:
        h, m = text.split(":")
        return _dt.time(int(h), int(m))
    except (ValueError, AttributeError):
        raise OptionError(f"{what} {text!r} is not HH:MM (24-hour clock)") from None


def years(now_ns: int, until_ns: int) -> float:
    return (until_ns - now_ns) / YEAR_NS


def settlement(inst: Instrument, underlying_px: float) -> tuple[float, float]:
    """(option closing price, underlying price for a physical delivery or 0) of one expiring
    option: cash settles at intrinsic value; a physical in-the-money option closes at 0 and
    delivers the underlying at the strike (the premium was paid at the trade); out of the
    money it closes at 0 with no delivery."""
    value = intrinsic(inst.right, inst.strike, underlying_px)
    if getattr(inst, "settlement", "cash") == "physical":
        return 0.0, (inst.strike if value > 0 else 0.0)
    return value, 0.0


# ------------------------------------------------------------------ chains
class OptionChains:
    """Every option of an instrument master, by underlying, sorted by (expiry, strike,
    right); built once at load. ``expire(now_ns)`` drops the options whose expiry instant
    has passed, so an expired option is no longer in any chain."""

    def __init__(self, instruments: Iterable[Instrument], expiry_time: str = "16:00", tz: str = "UTC"):
        self.instruments = {i.symbol: i for i in instruments}
        self.expiry_time, self.tz = expiry_time, tz
        self.by_underlying: dict[str, list[Instrument]] = {}
        self.expiry_of: dict[str, int] = {}  # option symbol -> expiry instant, ns
        for inst in self.instruments.values():
            if inst.kind == "option":
                self.by_underlying.setdefault(inst.underlying, []).append(inst)
                self.expiry_of[inst.symbol] = expiry_ns(inst, expiry_time, tz)
        for opts in self.by_underlying.values():
            opts.sort(key=lambda i: (i.expiry, i.strike, i.right))

    @property
    def mappings(self) -> int:
        """Options mapped to an underlying (the count market-data reports)."""
        return sum(len(v) for v in self.by_underlying.values())

    def expire(self, now_ns: int) -> list[Instrument]:
        """Remove the options expired at ``now_ns``; returns them."""
        gone: list[Instrument] = []
        for u, opts in self.by_underlying.items():
            keep = [o for o in opts if self.expiry_of[o.symbol] > now_ns]
            if len(keep) != len(opts):
                gone += [o for o in opts if self.expiry_of[o.symbol] <= now_ns]
                self.by_underlying[u] = keep
        return gone

    def expiries(self, underlying: str) -> list[str]:
        """The expiry dates listed for ``underlying``, nearest first."""
        return sorted({o.expiry for o in self.by_underlying.get(underlying, ())})

    def chain(self, underlying: str, expiry: str | None = None, right: str | None = None) -> list[Instrument]:
        """The options on ``underlying`` (one ``expiry`` date, or all; one ``right``, or both),
        sorted by expiry, strike, right. An unknown underlying is an OptionError."""
        if underlying not in self.instruments:
            raise OptionError(f"unknown underlying {underlying!r}")
        if right not in (None, "C", "P"):
            raise OptionError(f"right must be 'C', 'P' or None, not {right!r}")
        return [o for o in self.by_underlying.get(underlying, ())
                if (expiry is None or o.expiry == expiry) and (right is None or o.right == right)]

    def _series(self, underlying: str, right: str, expiry: str | None) -> list[Instrument]:
        if right not in ("C", "P"):
            raise OptionError(f"right must be 'C' or 'P', not {right!r}")
        if expiry is None:
            exps = self.expiries(underlying)
            if not exps:
                if underlying not in self.instruments:
                    raise OptionError(f"unknown underlying {underlying!r}")
                return []
            expiry = exps[0]  # the nearest
        return self.chain(underlying, expiry, right)

    def atm(self, underlying: str, right: str, spot: float, expiry: str | None = None) -> Instrument | None:
        """The option whose strike is nearest ``spot`` (the lower strike on a tie), of ``expiry``
        (None: the nearest expiry); None if nothing is listed."""
        return self.by_offset(underlying, right, spot, 0, expiry)

    def by_offset(self, underlying: str, right: str, spot: float, offset: int,
                  expiry: str | None = None) -> Instrument | None:
        """The option ``offset`` strikes away from the at-the-money one: +1 is the next higher
        strike, -1 the next lower (for a call +1 is out of the money, for a put in the
        money); None when the chain has no such strike."""
        series = self._series(underlying, right, expiry)
        if not series:
            return None
        i = min(range(len(series)), key=lambda j: (abs(series[j].strike - spot), series[j].strike))
        j = i + offset
        return series[j] if 0 <= j < len(series) else None

    def by_delta(self, underlying: str, right: str, spot: float, target: float, now_ns: int, smile: Smile,
                 r: float = 0.0, expiry: str | None = None) -> Instrument | None:
        """The option whose model delta is nearest ``target`` (e.g. 0.25 for a call, -0.25 for
        a put), priced at ``spot`` under ``smile`` at ``now_ns``; None if nothing is listed."""
        if not math.isfinite(target) or not -1.0 <= target <= 1.0:
            raise OptionError(f"target delta must be in [-1, 1], not {target!r}")
        series = self._series(underlying, right, expiry)
        if not series:
            return None
        model = model_for(self.instruments.get(underlying))
        best, best_d = None, math.inf
        for o in series:
            t = years(now_ns, self.expiry_of[o.symbol])
            d = greeks(spot, o.strike, t, r, smile.vol(o.strike, spot), o.right, model=model).delta
            if abs(d - target) < best_d:
                best, best_d = o, abs(d - target)
        return best


class Pricer:
    """The model price and greeks of the options of a master, under one smile and rate:
    what the synthetic feed quotes and what the view's greeks are computed with."""

    def __init__(self, chains: OptionChains, smile: Smile, rate: float = 0.0, spread_pct: float = 0.01,
                 min_spread_ticks: int = 1):
        self.chains, self.smile, self.rate = chains, smile, rate
        self.spread_pct, self.min_ticks = spread_pct, min_spread_ticks

    def greeks(self, inst: Instrument, underlying_px: float, now_ns: int) -> Greeks:
        t = years(now_ns, self.chains.expiry_of[inst.symbol])
        model = model_for(self.chains.instruments.get(inst.underlying))
        return greeks(underlying_px, inst.strike, t, self.rate, self.smile.vol(inst.strike, underlying_px),
                      inst.right, model=model)

    def quote(self, inst: Instrument, underlying_px: float, now_ns: int) -> tuple[float, float, float]:
        """(bid, mid, ask) on the option's tick grid around the model price: the half-spread is
        spread_pct of the price, at least min_spread_ticks ticks; the bid is never below one tick."""
        v = self.greeks(inst, underlying_px, now_ns).price
        tick = inst.tick_size
        half = max(v * self.spread_pct, self.min_ticks * tick)
        bid = max(tick, math.floor((v - half) / tick + 1e-9) * tick)
        ask = max(bid + tick, math.ceil((v + half) / tick - 1e-9) * tick)
        mid = max(tick, round(v / tick) * tick)
        return round(bid, 10), round(mid, 10), round(ask, 10)


def position_greeks(qty: float, inst: Instrument, g: Greeks | None) -> dict[str, float]:
    """A position's greeks: qty x multiplier x the option's; an underlying (g None) has
    delta qty x multiplier and nothing else."""
    m = qty * inst.multiplier
    if g is None:
        return {"delta": m, "gamma": 0.0, "vega": 0.0, "theta": 0.0}
    return {"delta": m * g.delta, "gamma": m * g.gamma, "vega": m * g.vega, "theta": m * g.theta}


# ------------------------------------------------------------- synthetic chains
def synthetic_chain(underlyings: Iterable[Instrument], spot: float, strikes: int, strike_step: float,
                    expiries: Iterable[str], multiplier: float = 100.0, tick_size: float = 0.01,
                    settlement: str = "cash") -> list[Instrument]:
    """Calls and puts on each underlying: ``strikes`` strikes either side of ``spot``
    rounded to ``strike_step`` (2 x strikes + 1 per right and expiry), for each expiry date.
    Symbols read UNDERLYING-YYMMDD-C-STRIKE (the format of data/sample/instruments_options.csv)."""
    if strikes < 0 or not (math.isfinite(strike_step) and strike_step > 0):
        raise OptionError(f"options: strikes ({strikes}) must be >= 0 and strike_step ({strike_step}) > 0")
    exps = list(expiries)
    for e in exps:
        try:
            _dt.date.fromisoformat(e)
        except (TypeError, ValueError):
            raise OptionError(f"options: expiry {e!r} is not YYYY-MM-DD") from None
    centre = round(spot / strike_step) * strike_step
    out: list[Instrument] = []
    for u in underlyings:
        for e in exps:
            ymd = e[2:4] + e[5:7] + e[8:10]
            for i in range(-strikes, strikes + 1):
                k = round(centre + i * strike_step, 8)
                if k <= 0:
                    continue
                ks = f"{k:g}"
                for right in ("C", "P"):
                    kw: dict[str, Any] = {}
                    if settlement != "cash":
                        kw["settlement"] = settlement
                    out.append(Instrument(symbol=f"{u.symbol}-{ymd}-{right}-{ks}", kind="option",
                                          tick_size=tick_size, multiplier=multiplier, currency=u.currency,
                                          underlying=u.symbol, strike=k, expiry=e, right=right, **kw))
    return out


def expiry_dates(today: _dt.date, days: Iterable[int]) -> list[str]:
    """Expiry dates ``days`` calendar days after ``today`` (0: today, a same-day expiry)."""
    return [(today + _dt.timedelta(days=int(d))).isoformat() for d in days]


# ------------------------------------------------------------------- config
def expiry_tz(cfg: Any) -> str:
    """The time zone of option expiry times: the session's, else UTC."""
    return cfg.session.timezone if getattr(cfg, "session", None) is not None else "UTC"


def chains_of(cfg: Any, instruments: Iterable[Instrument]) -> OptionChains:
    """The option chains of a master under a whole config (``[options] expiry_time``)."""
    try:
        return OptionChains(instruments, cfg.options.expiry_time, expiry_tz(cfg))
    except OptionError as e:
        raise OptionsConfigError(f"options: {e}") from None


def pricer_of(cfg: Any, chains: OptionChains) -> Pricer:
    o = cfg.options
    try:
        smile = Smile(o.volatility, o.skew, o.curvature)
    except OptionError as e:
        raise OptionsConfigError(f"options: {e}") from None
    return Pricer(chains, smile, rate=o.rate, spread_pct=o.spread_pct)


def with_synthetic_chain(cfg: Any, instruments: list[Instrument], today: _dt.date) -> tuple[list[Instrument], int]:
    """The synthetic master plus the option chain ``[options]`` asks for (expiries or
    expiry_days; none: the master as it is), and the options mapped in all."""
    o = cfg.options
    base = [i for i in instruments]
    mapped = sum(1 for i in base if i.kind == "option")
    if not (o.expiries or o.expiry_days):
        return base, mapped
    known = {i.symbol: i for i in base}
    names = o.underlyings or [i.symbol for i in base if i.kind != "option"]
    missing = [n for n in names if n not in known]
    if missing:
        raise OptionsConfigError(f"options.underlyings: {missing} not in the instrument master")
    try:
        parse_hhmm(o.expiry_time, "options.expiry_time")
        exps = sorted(set(o.expiries) | set(expiry_dates(today, o.expiry_days)))
        chain = synthetic_chain([known[n] for n in names], cfg.market_data.start_price, o.strikes, o.strike_step,
                                exps, multiplier=o.multiplier, settlement=o.settlement)
    except OptionError as e:
        raise OptionsConfigError(str(e)) from None
    clash = [c.symbol for c in chain if c.symbol in known]
    if clash:
        raise OptionsConfigError(f"options: generated symbols already in the master: {clash[:3]}")
    return base + chain, mapped + len(chain)


def today_in(cfg: Any, now_ns: int) -> _dt.date:
    """Today's date where options expire (the session's time zone, else UTC)."""
    return _dt.datetime.fromtimestamp(now_ns / 1e9, ZoneInfo(expiry_tz(cfg))).date()

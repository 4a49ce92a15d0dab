"""actors/options.py against published values: prices, greeks, put-call parity, the smile,
chains and their selection, settlement amounts."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from actors import options as op
from bus.messages import Instrument


def test_black_scholes_hull_example():
    # Hull, Options, Futures and Other Derivatives, Example 15.6: S=42, K=40, r=10%, sigma=20%, T=0.5
    c = op.price(42, 40, 0.5, 0.10, 0.20, "C")
    p = op.price(42, 40, 0.5, 0.10, 0.20, "P")
    assert round(c, 2) == 4.76 and round(p, 2) == 0.81


def test_black76_hull_example():
    # Hull, Example 18.6 (options on futures): F=20, K=20, r=9%, sigma=25%, T=4 months: put 1.12
    assert round(op.price(20, 20, 4 / 12, 0.09, 0.25, "P", model="black76"), 2) == 1.12
    # Black-76 with F = S e^{rT} is Black-Scholes on S (the forward of a spot)
    s, k, t, r, v = 100.0, 95.0, 0.75, 0.04, 0.3
    assert op.price(s * math.exp(r * t), k, t, r, v, "C", model="black76") == pytest.approx(
        op.price(s, k, t, r, v, "C"), abs=1e-10)


def test_hull_greeks_example():
    # Hull, Example 19.1 / Table 19.2 (the delta-hedging example): S=49, K=50, r=5%, sigma=20%, T=20 weeks
    g = op.greeks(49, 50, 0.3846, 0.05, 0.20, "C")
    assert round(g.price, 2) == 2.40
    assert round(g.delta, 3) == 0.522 and round(g.gamma, 3) == 0.066
    assert round(g.vega, 1) == 12.1 and round(g.theta, 2) == -4.31


@pytest.mark.parametrize("model", ["bs", "black76"])
@pytest.mark.parametrize("s,k,t,r,q,v", [(42, 40, 0.5, 0.1, 0.0, 0.2), (100, 120, 0.1, 0.03, 0.02, 0.6),
                                          (50, 45, 2.0, 0.0, 0.01, 0.15)])
def test_put_call_parity(model, s, k, t, r, q, v):
    c, p = op.price(s, k, t, r, v, "C", q, model), op.price(s, k, t, r, v, "P", q, model)
    fwd_disc = s * math.exp(-q * t) if model == "bs" else s * math.exp(-r * t)
    assert c - p == pytest.approx(fwd_disc - k * math.exp(-r * t), abs=1e-10)


@pytest.mark.parametrize("right", ["C", "P"])
@pytest.mark.parametrize("model", ["bs", "black76"])
def test_greeks_match_finite_differences(right, model):
    s, k, t, r, q, v = 100.0, 105.0, 0.4, 0.03, 0.01, 0.25
    g = op.greeks(s, k, t, r, v, right, q, model)
    h = 1e-3
    f = lambda s_=s, t_=t, v_=v: op.price(s_, k, t_, r, v_, right, q, model)  # noqa: E731
    assert g.delta == pytest.approx((f(s_=s + h) - f(s_=s - h)) / (2 * h), rel=1e-6)
    assert g.gamma == pytest.approx((f(s_=s + h) - 2 * f() + f(s_=s - h)) / h ** 2, rel=1e-4)
    assert g.vega == pytest.approx((f(v_=v + h) - f(v_=v - h)) / (2 * h), rel=1e-6)
    # theta: calendar time passing is time to expiry shrinking
    assert g.theta == pytest.approx(-(f(t_=t + h) - f(t_=t - h)) / (2 * h), rel=1e-5)


def test_expired_option_is_intrinsic_and_bad_input_is_named():
    assert op.greeks(110, 100, 0.0, 0.05, 0.2, "C") == op.Greeks(10.0, 1.0, 0.0, 0.0, 0.0)
    assert op.greeks(110, 100, -1.0, 0.05, 0.2, "P") == op.Greeks(0.0, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(op.OptionError, match="right must be"):
        op.price(100, 100, 1, 0, 0.2, "X")
    with pytest.raises(op.OptionError, match="volatility"):
        op.price(100, 100, 1, 0, float("nan"), "C")
    with pytest.raises(op.OptionError, match="model"):
        op.price(100, 100, 1, 0, 0.2, "C", model="heston")


def test_implied_vol_inverts_the_price():
    p = op.price(42, 40, 0.5, 0.10, 0.20, "C")
    assert op.implied_vol(p, 42, 40, 0.5, 0.10, "C") == pytest.approx(0.20, abs=1e-8)
    assert op.implied_vol(0.5, 42, 40, 0.5, 0.10, "C") is None  # below intrinsic: no volatility gives it


def test_smile():
    flat = op.Smile(0.3)
    assert flat.vol(80, 100) == flat.vol(120, 100) == 0.3
    sm = op.Smile(0.3, skew=-0.2, curvature=0.5)
    assert sm.vol(100, 100) == 0.3
    assert sm.vol(90, 100) > sm.vol(110, 100)  # negative skew: the lower strike is dearer
    assert op.Smile(0.1, skew=-5.0).vol(200, 100) == 0.01  # floored
    with pytest.raises(op.OptionError):
        op.Smile(0.0)


def _chain():
    u = Instrument(symbol="SYN1", kind="equity", tick_size=0.01)
    opts = op.synthetic_chain([u], spot=100.3, strikes=2, strike_step=5.0, expiries=["2026-03-20", "2026-03-13"])
    return u, opts, op.OptionChains([u, *opts], "16:00", "America/New_York")


def test_synthetic_chain_and_selection():
    u, opts, ch = _chain()
    assert len(opts) == 2 * 5 * 2 and ch.mappings == 20
    assert ch.expiries("SYN1") == ["2026-03-13", "2026-03-20"]
    calls = ch.chain("SYN1", expiry="2026-03-13", right="C")
    assert [o.strike for o in calls] == [90, 95, 100, 105, 110]
    assert calls[0].symbol == "SYN1-260313-C-90" and calls[0].multiplier == 100.0
    assert ch.atm("SYN1", "C", spot=101.0).symbol == "SYN1-260313-C-100"
    assert ch.atm("SYN1", "P", spot=102.5).strike == 100  # tie: the lower strike
    assert ch.by_offset("SYN1", "C", 101.0, +1, "2026-03-20").symbol == "SYN1-260320-C-105"
    assert ch.by_offset("SYN1", "C", 101.0, +3) is None
    now = int(dt.datetime(2026, 3, 2, 15, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    sm = op.Smile(0.3)
    c25 = ch.by_delta("SYN1", "C", 100.0, 0.25, now, sm)
    p25 = ch.by_delta("SYN1", "P", 100.0, -0.25, now, sm)
    assert c25.strike > 100 and p25.strike < 100
    assert {o.right for o in ch.chain("SYN1", right="P")} == {"P"}
    with pytest.raises(op.OptionError, match="unknown underlying"):
        ch.chain("NOPE")
    with pytest.raises(op.OptionError, match="target delta"):
        ch.by_delta("SYN1", "C", 100.0, 2.0, now, sm)


def test_expired_options_leave_the_chain():
    _u, _opts, ch = _chain()
    exp = ch.expiry_of["SYN1-260313-C-100"]
    # 16:00 New York on 2026-03-13 (EDT since 2026-03-08): 20:00 UTC
    assert exp == int(dt.datetime(2026, 3, 13, 20, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert ch.expire(exp - 1) == []
    gone = ch.expire(exp)
    assert len(gone) == 10 and ch.expiries("SYN1") == ["2026-03-20"]
    assert ch.atm("SYN1", "C", 100.0).expiry == "2026-03-20"


def test_settlement_amounts():
    c = Instrument(symbol="X-C", kind="option", tick_size=0.01, underlying="X", strike=100, expiry="2026-01-16",
                   right="C")
    p = Instrument(symbol="X-P", kind="option", tick_size=0.01, underlying="X", strike=100, expiry="2026-01-16",
                   right="P")
    assert op.settlement(c, 107.5) == (7.5, 0.0)  # in the money: cash at intrinsic
    assert op.settlement(c, 95.0) == (0.0, 0.0)  # out of the money: worthless
    assert op.settlement(p, 95.0) == (5.0, 0.0)
    phys = Instrument(symbol="X-CP", kind="option", tick_size=0.01, underlying="X", strike=100,
                      expiry="2026-01-16", right="C", settlement="physical")
    assert op.settlement(phys, 107.5) == (0.0, 100.0)  # delivery at the strike
    assert op.settlement(phys, 95.0) == (0.0, 0.0)


def test_pricer_quotes_on_the_tick_grid():
    _u, opts, ch = _chain()
    pr = op.Pricer(ch, op.Smile(0.3), rate=0.0, spread_pct=0.01)
    now = int(dt.datetime(2026, 3, 2, 15, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    for o in opts:
        bid, mid, ask = pr.quote(o, 100.0, now)
        assert 0.01 <= bid < ask and bid <= mid <= ask
        for x in (bid, mid, ask):
            assert abs(x / 0.01 - round(x / 0.01)) < 1e-6
    g = pr.greeks(ch.atm("SYN1", "C", 100.0), 100.0, now)
    pos = op.position_greeks(-3, ch.atm("SYN1", "C", 100.0), g)
    assert pos["delta"] == pytest.approx(-300 * g.delta)
    assert op.position_greeks(10, Instrument(symbol="SYN1", kind="equity", tick_size=0.01), None)["delta"] == 10


def test_synthetic_chain_from_config_and_its_errors():
    import config as config_mod
    from actors.instruments import load
    base, _ = load("synthetic", ["SYN1", "SYN2"])
    cfg = config_mod.load(None)
    assert op.with_synthetic_chain(cfg, base, dt.date(2026, 3, 2)) == (base, 0)  # no expiries: no chain
    cfg = config_mod.load(None, ["options.expiry_days=[0, 7]", 'options.underlyings=["SYN2"]', "options.strikes=1",
                                 'options.settlement="physical"'])
    insts, mapped = op.with_synthetic_chain(cfg, base, dt.date(2026, 3, 2))
    opts = [i for i in insts if i.kind == "option"]
    assert mapped == len(opts) == 2 * 3 * 2 and {o.underlying for o in opts} == {"SYN2"}
    assert {o.expiry for o in opts} == {"2026-03-02", "2026-03-09"} and {o.settlement for o in opts} == {"physical"}
    for sets, match in ((['options.underlyings=["NOPE"]', "options.expiry_days=[1]"], "not in the instrument master"),
                        (['options.expiries=["2026-13-01"]'], "not YYYY-MM-DD"),
                        (['options.expiry_time="4pm"', "options.expiry_days=[1]"], "not HH:MM")):
        with pytest.raises(op.OptionsConfigError, match=match):
            op.with_synthetic_chain(config_mod.load(None, sets), base, dt.date(2026, 3, 2))

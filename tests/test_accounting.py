"""Accounting: hand-computed cases and invariants over random fill sequences."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.accounting import Account, AccountingError

pytestmark = pytest.mark.timeout(60)

approx = pytest.approx


def test_long_open_add_mark_close():
    a = Account(10_000.0)
    a.apply_fill("A", "buy", 10, 100.0, ts=1)
    a.apply_fill("A", "buy", 30, 104.0, ts=2)
    p = a.positions["A"]
    assert p.qty == 40 and p.avg_price == approx(103.0)  # (10*100 + 30*104) / 40
    assert a.cash == approx(10_000 - 1000 - 3120)
    assert a.mark("A", 105.0)
    assert p.unrealized == approx(40 * 2.0)
    assert a.equity == approx(5_880 + 40 * 105)  # 10_080
    r = a.apply_fill("A", "sell", 40, 106.0, ts=3)
    assert r.realized == approx(40 * 3.0) and r.position == 0
    assert a.realized == approx(120.0) and p.avg_price == 0.0 and p.unrealized == 0.0
    assert a.cash == approx(10_120.0) and a.equity == approx(10_120.0)
    (t,) = a.trips
    assert (t.side, t.qty, t.entry_ts, t.entry_price, t.exit_ts, t.exit_price) == ("long", 40, 1, approx(103.0), 3, 106.0)
    assert t.pnl == approx(120.0)


def test_short_open_and_cover_at_a_loss():
    a = Account(1_000.0)
    a.apply_fill("S", "sell", 5, 20.0, ts=1)
    p = a.positions["S"]
    assert p.qty == -5 and p.avg_price == 20.0
    assert a.cash == approx(1_100.0)  # short sale proceeds
    a.mark("S", 22.0)
    assert p.unrealized == approx(-10.0)  # -5 * (22 - 20)
    assert a.equity == approx(1_100.0 - 110.0)
    r = a.apply_fill("S", "buy", 5, 23.0, ts=2)
    assert r.realized == approx(-15.0) and a.realized == approx(-15.0)
    assert a.cash == approx(985.0) and a.equity == approx(985.0)
    assert a.trips[0].side == "short" and a.trips[0].pnl == approx(-15.0)


def test_partial_close_keeps_average_price():
    a = Account(0.0)
    a.apply_fill("A", "buy", 100, 10.0, ts=1)
    r = a.apply_fill("A", "sell", 30, 12.0, ts=2)
    p = a.positions["A"]
    assert r.realized == approx(60.0) and p.qty == 70 and p.avg_price == 10.0
    r = a.apply_fill("A", "sell", 20, 9.0, ts=3)
    assert r.realized == approx(-20.0) and p.qty == 50 and p.avg_price == 10.0
    assert a.realized == approx(40.0)
    assert [(t.qty, t.exit_price, t.entry_ts) for t in a.trips] == [(30, 12.0, 1), (20, 9.0, 1)]
    # cash = -1000 + 360 + 180 = -460; equity at mark 9 = -460 + 450
    assert a.cash == approx(-460.0) and a.equity == approx(-10.0)
    assert a.equity == approx(a.initial_cash + a.realized + a.unrealized - a.fees)


def test_reversal_closes_then_opens_at_fill_price():
    a = Account(0.0)
    a.apply_fill("A", "buy", 10, 50.0, ts=1)
    r = a.apply_fill("A", "sell", 25, 55.0, ts=2)  # close 10 (+50), open short 15 @ 55
    p = a.positions["A"]
    assert r.realized == approx(50.0) and r.position == -15
    assert p.qty == -15 and p.avg_price == 55.0 and p.open_ts == 2
    (t,) = a.trips
    assert t.qty == 10 and t.side == "long" and t.pnl == approx(50.0)
    r = a.apply_fill("A", "buy", 20, 53.0, ts=3)  # cover 15 (+30), open long 5 @ 53
    assert r.realized == approx(30.0) and p.qty == 5 and p.avg_price == 53.0
    assert a.trips[1].side == "short" and a.trips[1].qty == 15 and a.trips[1].entry_price == 55.0
    assert a.realized == approx(80.0)


def test_fees_are_cash_and_split_over_round_trips():
    a = Account(10_000.0)
    a.apply_fill("A", "buy", 10, 100.0, fee=2.0, ts=1)
    assert a.cash == approx(10_000 - 1000 - 2) and a.fees == 2.0
    # sell 15: closes 10 (fee share 4 * 10/15), opens short 5 (fee share 4 * 5/15)
    a.apply_fill("A", "sell", 15, 110.0, fee=4.0, ts=2)
    (t,) = a.trips
    assert t.pnl == approx(100.0) and t.fees == approx(2.0 + 4.0 * 10 / 15) and t.net == approx(100.0 - t.fees)
    p = a.positions["A"]
    assert p.open_fees == approx(4.0 * 5 / 15) and p.fees == 6.0
    a.apply_fill("A", "buy", 5, 108.0, fee=1.0, ts=3)
    assert a.trips[1].fees == approx(4.0 * 5 / 15 + 1.0) and a.trips[1].pnl == approx(10.0)
    assert sum(t.fees for t in a.trips) == approx(7.0) == a.fees
    assert a.equity == approx(10_000 + 110 - 7)


def test_multiplier_scales_cash_pnl_and_exposure():
    a = Account(100_000.0)
    a.apply_fill("ES", "buy", 2, 4000.0, fee=5.0, multiplier=50.0)
    assert a.cash == approx(100_000 - 2 * 4000 * 50 - 5)
    a.mark("ES", 4010.0)
    assert a.positions["ES"].unrealized == approx(2 * 10 * 50)
    assert a.gross_exposure == approx(2 * 4010 * 50)
    assert a.equity == approx(100_000 - 5 + 1000)
    r = a.apply_fill("ES", "sell", 1, 3990.0, multiplier=50.0)
    assert r.realized == approx(-500.0)
    with pytest.raises(AccountingError, match="multiplier"):
        a.apply_fill("ES", "sell", 1, 3990.0, multiplier=5.0)


@pytest.mark.parametrize("bad", [
    dict(side="hold"), dict(qty=0), dict(qty=-3), dict(qty=math.nan), dict(qty=math.inf), dict(qty=1e-12), dict(qty=True), dict(price=0.0), dict(price=math.nan),
    dict(price=math.inf), dict(fee=-1.0), dict(fee=math.nan), dict(multiplier=0.0),
])
def test_bad_fill_is_refused_and_changes_nothing(bad):
    a = Account(1000.0)
    a.apply_fill("A", "buy", 1, 10.0)
    before = (a.cash, a.fees, a.n_fills, a.positions["A"].qty, a.positions["A"].avg_price)
    kw = dict(symbol="A", side="buy", qty=1, price=10.0, fee=0.0, multiplier=1.0) | bad
    with pytest.raises(AccountingError):
        a.apply_fill(**kw)
    assert (a.cash, a.fees, a.n_fills, a.positions["A"].qty, a.positions["A"].avg_price) == before


def test_a_zero_price_only_closes_a_position():
    # an option expiring worthless is closed at 0; nothing opens at 0
    a = Account(1000.0)
    a.apply_fill("O", "buy", 3, 2.0, multiplier=100.0)
    with pytest.raises(AccountingError, match="0 only to close"):
        a.apply_fill("O", "sell", 4, 0.0, multiplier=100.0)  # would open a short
    r = a.apply_fill("O", "sell", 3, 0.0, multiplier=100.0)
    assert r.position == 0 and r.realized == approx(-600.0) and a.cash == approx(400.0)


# ----------------------------------------------------------------- properties
fills = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "F"]),
        st.sampled_from(["buy", "sell"]),
        st.integers(1, 500),
        st.integers(1, 200_000).map(lambda c: c / 100),  # prices on a cent grid
        st.integers(0, 500).map(lambda c: c / 100),  # fee
        st.booleans(),  # mark the symbol after the fill?
        st.integers(1, 200_000).map(lambda c: c / 100),  # mark price
    ),
    max_size=60,
)
MULT = {"A": 1.0, "B": 1.0, "F": 50.0}


def close(x, y):
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-5)


@settings(max_examples=300, deadline=None)
@given(fills)
def test_invariants_hold_after_every_fill(seq):
    a = Account(1_000_000.0)
    qty = {s: 0 for s in MULT}
    flows = 0.0  # -sum(signed qty * price * multiplier)
    fees = 0.0
    for i, (sym, side, q, px, fee, do_mark, mark) in enumerate(seq):
        r = a.apply_fill(sym, side, q, px, fee, ts=i, multiplier=MULT[sym])
        sgn = 1 if side == "buy" else -1
        qty[sym] += sgn * q
        flows -= sgn * q * px * MULT[sym]
        fees += fee
        if do_mark:
            a.mark(sym, mark)
        assert r.position == qty[sym] == a.position(sym)  # sum of fills == position, exactly
        assert close(a.cash, 1_000_000.0 + flows - fees)
        assert close(a.equity, a.cash + sum(p.qty * p.mark * p.multiplier for p in a.positions.values()))
        assert close(a.equity, a.initial_cash + a.realized + a.unrealized - a.fees)
        assert close(a.realized, sum(t.pnl for t in a.trips))
        assert close(a.fees, fees)
        assert close(sum(t.fees for t in a.trips) + sum(p.open_fees for p in a.positions.values()), fees)
        for p in a.positions.values():
            assert (p.qty == 0) == (p.avg_price == 0.0)


@settings(max_examples=200, deadline=None)
@given(fills, st.integers(1, 200_000).map(lambda c: c / 100))
def test_flat_book_realized_equals_cash_flows(seq, exit_px):
    """Once every position is closed, realized PnL is the sum of cash flows: an independent check."""
    a = Account(0.0)
    flows = 0.0
    exits = 0
    for sym, side, q, px, fee, _m, _mp in seq:
        a.apply_fill(sym, side, q, px, fee, multiplier=MULT[sym])
        flows -= (1 if side == "buy" else -1) * q * px * MULT[sym]
    for sym, p in list(a.positions.items()):
        if p.qty:
            flows -= -p.qty * exit_px * MULT[sym]
            exits += abs(p.qty)
            a.apply_fill(sym, "sell" if p.qty > 0 else "buy", abs(p.qty), exit_px, multiplier=MULT[sym])
    assert all(p.qty == 0 for p in a.positions.values())
    assert close(a.realized, flows)
    assert close(sum(t.pnl for t in a.trips), flows)
    assert close(a.equity, a.cash) and close(a.cash, flows - a.fees)
    # flat book: every unit traded either opened or closed, and as much closed as opened
    traded = sum(q for _s, _sd, q, *_r in seq) + exits
    assert sum(t.qty for t in a.trips) * 2 == traded

"""Fractional quantities (issue 14): quantities on an instrument's step (0.001 BTC) are exact
through the accounting, the exchange, its ledger and a restart; off-step, too-small and
too-cheap orders are refused naming the value; whole-unit instruments print as integers;
a ledger written with integer quantity columns opens and keeps its figures."""

import csv
import os
import random
import sqlite3
import tempfile
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import config as config_mod
from actors.accounting import Account
from actors.exchange_core import ExchangeCore
from actors.instruments import InstrumentError, load
from actors.ledger import Ledger
from actors.strategies.base import Context
from bus.messages import Bar, Fill, Instrument, OrderAck, OrderReject, SubmitOrder
from bus.quantity import fmt, from_atoms, to_atoms
from tests.harness import Log

pytestmark = pytest.mark.timeout(120)

BTC = Instrument(symbol="BTC/USDT", kind="crypto", tick_size=0.01, lot_size=0.001, currency="USDT", base="BTC",
                 min_qty=0.002, min_notional=5.0)
EQ = Instrument(symbol="AAA", kind="equity", tick_size=0.01)
PERP = Instrument(symbol="ETH-PERP", kind="perpetual", tick_size=0.1, lot_size=0.01, multiplier=10.0,
                  min_notional=100.0)
INSTRUMENTS = [BTC, EQ, PERP]
T0 = 1_700_000_000 * 10**9


def make_core(d, events=None, **exchange):
    cfg = msgspec.structs.replace(config_mod.load().exchange, **({"fill_on": "close", "max_position": 10**9,
                                                                    "max_order_notional": 1e12} | exchange))
    led = Ledger(os.path.join(str(d), "ledger.sqlite"))
    led.start_run("r1", "{}", cfg.initial_cash, mode="live")
    ev = events if events is not None else []
    return ExchangeCore(cfg, INSTRUMENTS, led, out_dir=str(d), emit=ev.append, log=Log())


def bar(core, sym, ts, px):
    core.on_bar(Bar(symbol=sym, ts=ts, open=px, high=px, low=px, close=px))


def submit(core, cl_id, sym, side, qty, order_type="market", price=None):
    r = core.submit(SubmitOrder(cl_id=cl_id, symbol=sym, side=side, qty=qty, order_type=order_type, price=price))
    core.settle()
    return r


# ------------------------------------------------------------------ accounting
@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.001, 0.01, 0.1, 0.00000001, 0.5, 0.005]))
def test_ten_thousand_step_sized_fills_sum_exactly(seed, step):
    """The position after 10,000 random fills is the exact decimal sum, never a float's drift
    (summing the same floats as floats is off, which is what this guards against)."""
    rng = random.Random(seed)
    a = Account(1e9)
    exact = Decimal(0)
    dstep = Decimal(repr(step))
    for i in range(10_000):
        n = rng.randint(1, 2_000)
        q = float(n * dstep)  # what a strategy sends: a float on the step
        side = rng.choice(["buy", "sell"])
        a.apply_fill("X", side, q, rng.randint(1, 100_000) / 100, 0.0, i)
        exact += n * dstep if side == "buy" else -n * dstep
        assert to_atoms(a.position("X")) == int(exact.scaleb(9))
    assert a.position("X") == float(exact) or a.position("X") == int(exact)
    assert Decimal(repr(a.position("X"))) == exact.normalize() or exact == 0


def test_float_noise_is_read_as_the_decimal_it_prints():
    a = Account(0.0)
    a.apply_fill("X", "buy", 0.1, 10.0)
    a.apply_fill("X", "buy", 0.2, 10.0)
    assert a.position("X") == 0.3 and a.positions["X"].units == 300_000_000
    a.apply_fill("X", "sell", 0.1 + 0.2, 12.0)  # 0.30000000000000004 as a float
    assert a.position("X") == 0 and type(a.position("X")) is int
    assert a.realized == pytest.approx(0.3 * 2.0)


# ------------------------------------------------------------ exchange + ledger
@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([("BTC/USDT", 1000, 10), ("ETH-PERP", 100, 2)]))
def test_fractional_fills_round_trip_exactly_through_the_ledger(seed, inst):
    """10,000 fills of random step-sized quantities through the exchange and its SQLite
    ledger: the live position, the ledger's positions row and fills, fills.csv and a
    rebuilt exchange all hold the exact decimal sum."""
    sym, per_unit, min_steps = inst  # steps per unit (1 / lot_size); steps that clear min_notional at 500
    with tempfile.TemporaryDirectory() as d:
        core = make_core(d, initial_cash=1e12, max_order_notional=1e13)
        rng = random.Random(seed)
        exact = Decimal(0)
        bar(core, sym, T0, 500.0)
        for i in range(10_000):
            n = rng.randint(min_steps, 900)
            side = "buy" if exact <= 0 or rng.random() < 0.5 else "sell"
            r = submit(core, f"c{i}", sym, side, float(Decimal(n) / per_unit))
            assert isinstance(r, OrderAck), r
            exact += (Decimal(n) if side == "buy" else -Decimal(n)) / per_unit
        want = float(exact) if exact % 1 else int(exact)
        assert core.acct.position(sym) == want
        assert core.ledger.positions()[sym]["qty"] == want
        assert sum(Decimal(repr(r["qty"])) * (1 if r["side"] == "buy" else -1) for r in core.ledger.fills()) == exact
        core.export()
        core.close()
        again = make_core(d)
        assert again.acct.position(sym) == want
        assert again.acct.positions[sym].units == int(exact.scaleb(9))
        assert again.acct.realized == pytest.approx(core.acct.realized, rel=1e-12)
        with open(os.path.join(d, "fills.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 10_000
        decimals = len(str(per_unit)) - 1
        assert all(len(r["qty"].partition(".")[2]) == decimals for r in rows)  # the step's decimals
        assert sum(Decimal(r["qty"]) * (1 if r["side"] == "buy" else -1) for r in rows) == exact
        again.close()


def test_a_ledger_written_with_integer_quantity_columns_opens_and_takes_fractions(tmp_path):
    """A ledger of the code before fractional quantities (qty INTEGER columns, whole-unit
    figures): it opens with its figures, trades fractions, and both survive a restart."""
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
    CREATE TABLE runs (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER,
        config TEXT NOT NULL, previous_run_id TEXT, first_fill_id INTEGER, end_equity REAL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE orders (order_id INTEGER PRIMARY KEY, cl_id TEXT NOT NULL UNIQUE, symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('buy', 'sell')), qty INTEGER NOT NULL CHECK (qty > 0),
        filled INTEGER NOT NULL DEFAULT 0, order_type TEXT NOT NULL, price REAL, tif TEXT NOT NULL,
        status TEXT NOT NULL, ts INTEGER NOT NULL, day INTEGER, reason TEXT NOT NULL DEFAULT '',
        updated INTEGER NOT NULL);
    CREATE TABLE fills (fill_id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(order_id),
        cl_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, qty INTEGER NOT NULL CHECK (qty > 0),
        price REAL NOT NULL, fee REAL NOT NULL, ts INTEGER NOT NULL, multiplier REAL NOT NULL,
        position INTEGER NOT NULL, realized REAL NOT NULL);
    CREATE TABLE positions (symbol TEXT PRIMARY KEY, qty INTEGER NOT NULL, avg_price REAL NOT NULL,
        realized REAL NOT NULL, fees REAL NOT NULL);
    INSERT INTO runs(run_id, start, config) VALUES ('old', 1, '{}');
    INSERT INTO meta VALUES ('initial_cash', '1000000.0'), ('mode', 'live');
    INSERT INTO orders VALUES (1, 'o1', 'AAA', 'buy', 30, 30, 'market', NULL, 'GTC', 'filled', 1, NULL, 'filled', 1);
    INSERT INTO orders VALUES (2, 'o2', 'AAA', 'sell', 10, 10, 'market', NULL, 'GTC', 'filled', 2, NULL, 'filled', 2);
    INSERT INTO fills VALUES (1, 1, 'o1', 'AAA', 'buy', 30, 100.0, 1.0, 1, 1.0, 30, 0.0);
    INSERT INTO fills VALUES (2, 2, 'o2', 'AAA', 'sell', 10, 110.0, 1.0, 2, 1.0, 20, 100.0);
    INSERT INTO positions VALUES ('AAA', 20, 100.0, 100.0, 2.0);
    """)
    db.commit()
    db.close()
    core = make_core(tmp_path)
    assert core.acct.position("AAA") == 20 and type(core.acct.position("AAA")) is int
    assert core.acct.realized == 100.0 and core.acct.cash == 1_000_000 - 3000 - 1 + 1100 - 1
    assert not [ln for ln in core.log.lines if ln[0] == "error"]
    bar(core, "BTC/USDT", T0, 40_000.0)
    assert isinstance(submit(core, "b1", "BTC/USDT", "buy", 0.123), OrderAck)
    assert isinstance(submit(core, "b2", "BTC/USDT", "sell", 0.1), OrderAck)
    core.export()
    core.close()
    core = make_core(tmp_path)
    assert core.acct.position("BTC/USDT") == 0.023 and core.acct.position("AAA") == 20
    assert [r["qty"] for r in core.ledger.fills()] == [30, 10, 0.123, 0.1]
    with open(tmp_path / "fills.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["qty"] for r in rows] == ["30", "10", "0.123", "0.100"]
    assert [r["position"] for r in rows] == ["30", "20", "0.123", "0.023"]
    core.close()


def test_off_step_below_min_qty_and_below_min_notional_are_refused_naming_the_value(tmp_path):
    core = make_core(tmp_path)
    bar(core, "BTC/USDT", T0, 1_000.0)
    bar(core, "ETH-PERP", T0, 2.0)

    def code(sym, qty, **kw):
        r = submit(core, f"x{code.n}", sym, "buy", qty, **kw)
        code.n += 1
        assert isinstance(r, OrderReject), r
        return r.code, r.text
    code.n = 0
    c, t = code("BTC/USDT", 0.0015)
    assert c == "bad-lot-size" and "0.0015" in t and "0.001" in t
    c, t = code("BTC/USDT", 0.001)
    assert c == "below-min-qty" and "0.001" in t and "0.002" in t
    c, t = code("BTC/USDT", 0.004)  # 0.004 * 1000 = 4 < 5
    assert c == "below-min-notional" and "4" in t and "5" in t
    c, t = code("BTC/USDT", 0.004, order_type="limit", price=1100.0)  # 4.4 at the limit price
    assert c == "below-min-notional"
    # min_notional counts the contract size: 4 * 2.0 * 10 = 80 < 100, 5 * 2.0 * 10 = 100
    c, t = code("ETH-PERP", 4)
    assert c == "below-min-notional" and "multiplier 10" in t
    assert isinstance(submit(core, "ok1", "ETH-PERP", "buy", 5), OrderAck)
    assert isinstance(submit(core, "ok2", "BTC/USDT", "buy", 0.005), OrderAck)
    assert core.n_orders == 2  # nothing of the refused ones was written
    core.close()


def test_perpetual_pnl_is_qty_times_price_move_times_contract_size(tmp_path):
    ev = []
    core = make_core(tmp_path, ev)
    bar(core, "ETH-PERP", T0, 2000.0)
    submit(core, "p1", "ETH-PERP", "buy", 0.25)
    bar(core, "ETH-PERP", T0 + 1, 2100.0)
    submit(core, "p2", "ETH-PERP", "sell", 0.25)
    fills = [e for e in ev if isinstance(e, Fill)]
    assert fills[-1].realized == pytest.approx(0.25 * 100.0 * 10.0) and fills[-1].position == 0
    core.close()


def test_whole_unit_instruments_keep_integers_on_the_wire_and_in_the_csv(tmp_path):
    ev = []
    core = make_core(tmp_path, ev)
    bar(core, "AAA", T0, 10.0)
    submit(core, "a1", "AAA", "buy", 10)
    submit(core, "a2", "AAA", "buy", 5.0)  # a whole float is a whole quantity
    fills = [e for e in ev if isinstance(e, Fill)]
    assert [(type(f.qty), f.qty, f.position) for f in fills] == [(int, 10, 10), (int, 5, 15)]
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(fills[1]), type=Fill)
    assert type(wire.qty) is int and type(wire.position) is int
    core.export()
    with open(tmp_path / "fills.csv") as f:
        assert [(r["qty"], r["position"]) for r in csv.DictReader(f)] == [("10", "10"), ("5", "15")]
    core.close()


# ------------------------------------------------------------ strategy API
def test_strategy_helpers_take_fractions_on_the_step_and_refuse_others():
    sent = []
    ctx = Context(INSTRUMENTS, send=sent.append, cl_prefix="s")
    assert ctx.submit("BTC/USDT", "buy", 0.015, "market")
    assert sent[-1].qty == 0.015
    with pytest.raises(ValueError, match=r"0\.0015.*BTC/USDT.*lot size 0\.001"):
        ctx.submit("BTC/USDT", "buy", 0.0015, "market")
    with pytest.raises(ValueError, match="lot size 1"):
        ctx.submit("AAA", "buy", 1.5, "market")
    with pytest.raises(ValueError, match="qty must be a number"):
        ctx.submit("AAA", "buy", float("nan"), "market")
    # target_position counts the in-flight 0.015 exactly: 0.1 + 0.2 more is 0.3 - 0.015
    ctx.target_position("BTC/USDT", 0.1 + 0.2)
    assert sent[-1].qty == 0.285 and sent[-1].side == "buy"
    assert ctx.target_position("BTC/USDT", 0.3) is None  # nothing left to send
    assert ctx.inflight("BTC/USDT") == 0.3


# ---------------------------------------------------------- instrument master
def test_instrument_master_reads_crypto_fx_and_perpetual_rows(tmp_path):
    p = tmp_path / "inst.csv"
    p.write_text("symbol,kind,tick_size,lot_size,multiplier,currency,min_qty,min_notional,base,venue_symbol\n"
                 "BTC/USDT,crypto,0.01,0.00001,,USDT,0.0001,5,BTC,BTCUSDT\n"
                 "EUR/USD,fx,0.00001,1000,,USD,,,EUR,\n"
                 "BTC-PERP,perpetual,0.5,0.001,0.01,USDT,,,,\n")
    insts, _ = load(str(p))
    by = {i.symbol: i for i in insts}
    assert by["BTC/USDT"].lot_size == 0.00001 and by["BTC/USDT"].min_qty == 0.0001
    assert by["BTC/USDT"].currency == "USDT" and by["BTC/USDT"].venue_symbol == "BTCUSDT"
    assert by["EUR/USD"].lot_size == 1000 and type(by["EUR/USD"].lot_size) is int
    assert by["BTC-PERP"].multiplier == 0.01
    p.write_text("symbol,kind,tick_size,lot_size,min_qty\nBTC/USDT,crypto,0.01,0.001,0.0025\n")
    with pytest.raises(InstrumentError, match="min_qty 0.0025 is not a multiple of the lot_size 0.001"):
        load(str(p))


def test_quantity_formatting():
    assert fmt(10, 0) == "10" and fmt(10.0, 0) == "10" and fmt(0.1 + 0.2, 3) == "0.300"
    assert from_atoms(to_atoms(0.1) + to_atoms(0.2)) == 0.3

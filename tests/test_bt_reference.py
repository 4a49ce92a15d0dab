"""Parity of the two reference engines (scripts/bt_reference.py): backtrader and a plain loop.

Pins the semantics the paperbus actors must reproduce (docs/PARITY.md): if backtrader and
the plain loop agree on GOOG and on a crafted series that exercises every edge of the
crossover rule, the plain loop is a trustworthy spec for the actor parity test.
"""

from __future__ import annotations

import pytest

from scripts import bt_reference as ref

pytestmark = pytest.mark.timeout(60)


def _key(fills):
    return [(f.date, f.side, f.qty, f.price) for f in fills]


@pytest.fixture(scope="module")
def goog():
    return ref.run_reference(), ref.run_backtrader()


def test_goog_same_fills_and_final_equity(goog):
    py, bt = goog
    assert len(py.fills) > 0
    assert _key(py.fills) == _key(bt.fills)
    # Same operand order as backtrader's commission: the floats are identical too.
    assert [f.commission for f in py.fills] == [f.commission for f in bt.fills]
    assert round(py.final_equity, 2) == round(bt.final_equity, 2)
    assert py.final_position == bt.final_position
    # Per-bar equity (after the bar's fills, marked at its close) and position agree too:
    # what equity.csv must contain, bar by bar.
    assert len(py.equity) == len(bt.equity) == 2148
    assert py.positions == bt.positions
    assert max(abs(a - b) for a, b in zip(py.equity, bt.equity)) < 1e-6
    assert py.equity[-1] == py.final_equity


def test_tie_heavy_series_same_fills(tmp_path):
    """On a 0.05 price grid the SMAs tie on hundreds of bars: the plain loop decides each tie as
    backtrader does (its SMA is backtrader's fsum), so it is the spec on such data too."""
    path = tmp_path / "ties.csv"
    ref.write_csv(str(path), ref.grid_walk(10_000, seed=5))
    py, bt = ref.run_reference(str(path)), ref.run_backtrader(str(path))
    assert len(py.fills) > 300
    assert py.fills == bt.fills  # commission floats included
    assert py.positions == bt.positions
    assert round(py.final_equity, 2) == round(bt.final_equity, 2)


def test_goog_pinned_figures(goog):
    """Figures the actor parity test can compare against without running backtrader."""
    py, bt = goog
    assert len(py.fills) == 94
    assert py.fills[0] == ref.Fill("2004-11-17", "sell", 100, 169.02, 100 * 0.002 * 169.02)
    assert py.fills[1].qty == 200  # a reversal trades 200
    assert all(f.qty == 200 for f in py.fills[1:])
    assert py.final_position == 100
    assert round(bt.final_equity, 2) == 1108409.28


def test_goog_first_signal_after_warmup():
    bars = ref.load_bars()
    assert len(bars) == 2148
    closes = [b.close for b in bars]
    slow = ref.sma(closes, ref.SLOW)
    assert slow[ref.SLOW - 2] is None and slow[ref.SLOW - 1] is not None
    sig = ref.crossovers(ref.sma(closes, ref.FAST), slow)
    assert not any(sig[: ref.SLOW])  # no signal before (or on) the first slow SMA bar
    # Signals alternate: the rule can never emit two ups in a row.
    s = [x for x in sig if x]
    assert all(a == -b for a, b in zip(s, s[1:]))


# A crafted series with SMA(1) vs SMA(2), so fast - slow = (c[t] - c[t-1]) / 2, exact in
# binary: zero when the close repeats. open = close + 0.25 so fills are at a distinct price.
#   i : close  d=fast-slow  signal
#   0 : 10     -            (slow SMA not yet)
#   1 : 9      -0.5         seed of the non-zero difference, no signal
#   2 : 10     +0.5         UP (prev nzd -0.5) -> buy 100 at open[3] = 10.25
#   3 : 10     0            (nzd stays +0.5)
#   4 : 11     +0.5
#   5 : 11     0
#   6 : 11     0
#   7 : 10     -0.5         DOWN (prev nzd +0.5) -> sell 200 at open[8] = 10.25
#   8 : 10     0            nzd stays -0.5
#   9 : 11     +0.5         UP: a touch then through counts (prev raw d is 0, nzd is -0.5)
#                           -> buy 200 at open[10] = 11.25
#  10 : 11     0
#  11 : 12     +0.5         touch then away on the same side: no signal
#  12 : 12     0
#  13 : 13     +0.5         no signal
#  14 : 12     -0.5         DOWN on the last bar -> order never fills
# cash = 1e6 - 1025 - 2.05 + 2050 - 4.1 - 2250 - 4.5 = 998764.35; position +100;
# final equity = 998764.35 + 100 * 12 = 999964.35.
EDGE_CLOSES = [10, 9, 10, 10, 11, 11, 11, 10, 10, 11, 11, 12, 12, 13, 12]


def _write_edge_csv(path):
    lines = [",Open,High,Low,Close,Volume"]
    for i, c in enumerate(EDGE_CLOSES):
        o = c + 0.25
        lines.append(f"2020-01-{i + 1:02d},{o},{max(o, c)},{min(o, c)},{c},1000")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("engine", ["reference", "backtrader"])
def test_edge_semantics(tmp_path, engine):
    csv_path = tmp_path / "edge.csv"
    _write_edge_csv(csv_path)
    run = ref.run_reference if engine == "reference" else ref.run_backtrader
    r = run(str(csv_path), fast=1, slow=2)
    assert _key(r.fills) == [
        ("2020-01-04", "buy", 100, 10.25),
        ("2020-01-09", "sell", 200, 10.25),
        ("2020-01-11", "buy", 200, 11.25),
    ]
    assert [round(f.commission, 10) for f in r.fills] == [2.05, 4.1, 4.5]
    assert r.final_position == 100  # the sell signalled on the last bar never filled
    assert round(r.final_equity, 2) == 999964.35


def test_crossovers_rule_units():
    # Strict: equality on bar t is not a cross; the seed bar never signals.
    assert ref.crossovers([1.0, 2.0, 2.0, 3.0], [2.0, 2.0, 2.0, 2.0]) == [0, 0, 0, 1]
    assert ref.crossovers([3.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == [0, 0, 0]
    assert ref.crossovers([None, 1.0, 3.0, 1.0], [None, 2.0, 2.0, 2.0]) == [0, 0, 1, -1]
    # A zero seed keeps the rule silent until a non-zero difference is seen.
    assert ref.crossovers([2.0, 3.0, 1.0], [2.0, 2.0, 2.0]) == [0, 0, -1]


def test_load_bars_rejects_wrong_header(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("date,open,high,low,close,volume\n2020-01-01,1,1,1,1,1\n")
    with pytest.raises(ValueError, match="unexpected header"):
        ref.load_bars(str(p))

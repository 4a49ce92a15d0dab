"""A backtest's results in bounded memory (actors/results.py, actors/report.py): the
equity curve spilled to disk in blocks gives exactly the figures and files of the same
curve held whole."""

import json
import math
import os
import random

import pytest

from actors import report, results
from actors.results import EquitySeries

pytestmark = pytest.mark.timeout(60)

T0 = 1_600_000_000 * 10**9
MIN = 60 * 10**9


def curve(n, seed=5):
    rng = random.Random(seed)
    eq, v = [], 1_000_000.0
    for i in range(n):
        v += rng.choice([-1.0, 1.0]) * rng.random() * 900.0
        eq.append((T0 + i * MIN + (i // 7) * 3 * MIN, v))  # uneven spacing: a real median to find
    return eq, [rng.choice([0, 100, -100]) for _ in range(n)]


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(results, "BLOCK", 1000)  # many blocks (and spills) from a small curve


def test_a_spilled_series_gives_the_figures_and_files_of_the_whole_list(tmp_path, small_blocks):
    eq, pos = curve(25_000)
    s = EquitySeries(str(tmp_path / ".equity.bin"))
    for (t, v), p in zip(eq, pos):
        s.record(t, v - 1.0, 0)
        s.record(t, v, p)  # the same timestamp again: the last bar of a timestamp is its row
    assert len(s) == 25_000 and s.spilled > 20_000 and len(s.ts) <= 1000
    assert sum(len(b[0]) for b in s.blocks()) == 25_000
    rng = random.Random(1)
    nets = [rng.uniform(-50, 60) for _ in range(300)]
    fees = [rng.uniform(0, 3) for _ in range(600)]
    whole = report.summarize_series(report.ListSeries(eq, pos), nets, fees)
    assert report.summarize_series(s, nets, fees) == whole
    # the old definitions, on the list: same numbers
    values = [v for _, v in eq]
    rets = report.returns(values)
    mean = math.fsum(rets) / len(rets)
    assert whole["sharpe"] == pytest.approx(mean / math.sqrt(math.fsum((r - mean) ** 2 for r in rets)
                                                            / (len(rets) - 1)) * math.sqrt(whole["bars_per_year"]))
    assert whole["bars_per_year"] == report.bars_per_year([t for t, _ in eq])
    assert whole["max_drawdown"] == max(report.drawdowns(values))
    assert whole["exposure"] == sum(1 for p in pos if p) / len(pos)
    report.write_equity_csv_series(tmp_path / "a.csv", s, 2)
    report.write_equity_csv(tmp_path / "b.csv", eq, pos, 2)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    ts, v, dd = report._series_points(s, len(s))
    assert 2000 < len(ts) < 8001 and ts == sorted(set(ts))
    deepest = values.index(min(values))  # among the points a person must see: the lowest equity
    assert eq[deepest][0] in ts and eq[-1][0] in ts and eq[0][0] in ts
    s.close()
    assert not os.path.exists(tmp_path / ".equity.bin")


def test_write_results_from_a_series(tmp_path, small_blocks):
    eq, pos = curve(3000)
    s = EquitySeries(str(tmp_path / ".equity.bin"))
    for (t, v), p in zip(eq, pos):
        s.record(t, v, p)
    out = tmp_path / "res"
    out.mkdir()
    summary = report.write_results_series(out, s, [1.0, -2.0], [0.5, 0.5], extra={"rows_skipped": 0})
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["bars"] == 3000 and summary["fills"] == 2 and summary["trades"] == 2
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "equity.csv").read_text().splitlines()) == 3001


def test_bad_rows_are_named_in_a_series_too(tmp_path, small_blocks):
    s = EquitySeries(str(tmp_path / ".equity.bin"))
    for i in range(2500):
        s.record(T0 + i * MIN, 100.0 if i != 1700 else math.inf, 0)
    with pytest.raises(ValueError, match="equity row 1700: equity must be a finite number, got inf"):
        report.summarize_series(s)


def test_ratio_texts_are_what_repr_of_round_prints():
    rng = random.Random(3)
    vals = [0.0, 1e-4, 0.99999999995, 9.99999999995e-05, 0.00010000000005, 1.0, 2.5, 1e15, 99999.99999999999]
    for _ in range(50_000):
        vals += [10 ** rng.uniform(-12, 16) * rng.random(), round(rng.random(), rng.randint(0, 12)),
                 rng.random() * rng.choice([1, 10, 100, 1e4, 9.9e4])]
    assert report.ratio_texts(vals) == [repr(round(v, report.RATIO_DECIMALS) + 0.0) for v in vals]


def test_iso_block_is_iso():
    import numpy as np

    ts = [0, 1, 999, 1000, 10**9 - 1, T0, T0 + 123_456_789, -1, -10**9 - 1000]
    assert report.iso_block(np.array(ts, dtype=np.int64)) == [report.iso(t) for t in ts]

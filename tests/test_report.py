"""actors/report.py: summary figures against hand computation, edge cases, writers."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys
from types import SimpleNamespace

import pytest

from actors import report
from actors.report import NS_PER_DAY, Trip

pytestmark = pytest.mark.timeout(60)

T0 = 1_609_718_400 * 10**9  # 2021-01-04T00:00:00Z


def days(n):
    return [T0 + i * NS_PER_DAY for i in range(n)]


def fill(fee):
    return SimpleNamespace(fee=fee)


# The tiny series, by hand:
#   equity   100, 110, 99, 99, 108.9, 119.79
#   returns  +0.1, -0.1, 0, +0.1, +0.1        mean = 0.2 / 5 = 0.04
#   deviations from the mean 0.06, -0.14, -0.04, 0.06, 0.06
#   squares 0.0036 + 0.0196 + 0.0016 + 0.0036 + 0.0036 = 0.032; / (5-1) = 0.008
#   sd = sqrt(0.008); daily spacing -> 252 bars/year
#   volatility = sqrt(0.008 * 252) = sqrt(2.016)              = 1.41985...
#   Sharpe     = 0.04 / sqrt(0.008) * sqrt(252) = sqrt(50.4)  = 7.09929...
#   downside deviation = sqrt((0.1^2) / 5) = sqrt(0.002)
#   Sortino    = 0.04 / sqrt(0.002) * sqrt(252) = sqrt(201.6) = 14.19859...
#   total return = 119.79 / 100 - 1 = 0.1979
#   CAGR: 5 calendar days = 5 / 365.25 years -> 1.1979 ** (365.25 / 5) - 1
#   max drawdown: peak 110 (bar 1), trough 99 (bar 2): 11 / 110 = 0.1;
#     recovered at bar 5 (119.79 >= 110; bar 4's 108.9 is not) -> 4 bars, 4 days
#   positions 0, 100, 100, 0, -100, 0 -> exposure 3 / 6 = 0.5
#   trips: net -10.5 and +25 -> win rate 1/2, profit factor 25 / 10.5 = 2.38095...
#   fills: fees 0.2 + 0.3 + 0.25 + 0.25 = 1.0
EQ = list(zip(days(6), [100.0, 110.0, 99.0, 99.0, 108.9, 119.79]))
POS = [0, 100, 100, 0, -100, 0]
TRIPS = [
    Trip("long", 100, T0 + NS_PER_DAY, 1.00, T0 + 3 * NS_PER_DAY, 0.90, -10.5, 0.5),
    Trip("short", 100, T0 + 4 * NS_PER_DAY, 1.10, T0 + 5 * NS_PER_DAY, 0.85, 25.0, 0.5),
]
FILLS = [fill(0.2), fill(0.3), fill(0.25), fill(0.25)]


def test_summary_matches_hand_computation():
    s = report.summarize(EQ, TRIPS, FILLS, POS)
    approx = pytest.approx
    assert s["start"] == "2021-01-04T00:00:00Z" and s["end"] == "2021-01-09T00:00:00Z"
    assert s["bars"] == 6 and s["bars_per_year"] == 252
    assert s["initial_equity"] == 100.0 and s["final_equity"] == 119.79
    assert s["total_return"] == approx(0.1979, abs=1e-12)
    assert s["cagr"] == approx(1.1979 ** (365.25 / 5) - 1, rel=1e-9)
    assert s["volatility"] == approx(math.sqrt(2.016), rel=1e-9)
    assert s["sharpe"] == approx(math.sqrt(50.4), rel=1e-9)
    assert s["sortino"] == approx(math.sqrt(201.6), rel=1e-9)
    assert s["max_drawdown"] == approx(0.1, abs=1e-12)
    assert s["max_drawdown_peak"] == "2021-01-05T00:00:00Z"
    assert s["max_drawdown_trough"] == "2021-01-06T00:00:00Z"
    assert s["max_drawdown_recovery"] == "2021-01-09T00:00:00Z"
    assert s["max_drawdown_recovered"] is True
    assert s["max_drawdown_duration_bars"] == 4
    assert s["max_drawdown_duration_days"] == 4.0
    assert s["trades"] == 2
    assert s["win_rate"] == 0.5
    assert s["profit_factor"] == approx(25 / 10.5, rel=1e-12)
    assert s["gross_profit"] == 25.0 and s["gross_loss"] == 10.5
    assert s["net_trade_pnl"] == 14.5
    assert s["best_trade_pnl"] == 25.0 and s["worst_trade_pnl"] == -10.5
    assert s["exposure"] == 0.5
    assert s["fills"] == 4 and s["fees"] == approx(1.0, abs=1e-12)


def test_drawdown_not_recovered_runs_to_end():
    # peak 120 at bar 1, trough 90 at bar 2 (30/120 = 0.25), never back to 120.
    eq = list(zip(days(4), [100.0, 120.0, 90.0, 100.0]))
    s = report.summarize(eq)
    assert s["max_drawdown"] == 0.25
    assert s["max_drawdown_recovered"] is False and s["max_drawdown_recovery"] is None
    assert s["max_drawdown_duration_bars"] == 2 and s["max_drawdown_duration_days"] == 2.0
    assert report.drawdowns([100.0, 120.0, 90.0, 100.0]) == [0.0, 0.0, 0.25, 20 / 120]


def test_no_trades():
    s = report.summarize(EQ, [], [], POS)
    assert s["trades"] == 0
    assert s["win_rate"] is None and s["profit_factor"] is None
    assert s["avg_trade_pnl"] is None and s["best_trade_pnl"] is None
    assert s["fills"] == 0 and s["fees"] == 0.0
    assert s["sharpe"] is not None  # equity metrics do not depend on trades
    text = report.format_text_summary(s)
    assert "trades        0" in text and "n/a" in text


def test_flat_equity_has_no_sharpe_and_no_crash():
    eq = list(zip(days(5), [1000.0] * 5))
    s = report.summarize(eq, positions=[0] * 5)
    assert s["volatility"] == 0.0
    assert s["sharpe"] is None and s["sortino"] is None
    assert s["total_return"] == 0.0 and s["cagr"] == 0.0
    assert s["max_drawdown"] == 0.0 and s["max_drawdown_duration_bars"] == 0
    assert s["max_drawdown_peak"] is None
    assert s["exposure"] == 0.0
    report.format_text_summary(s)  # must not raise on the None figures


def test_single_bar():
    s = report.summarize([(T0, 500.0)])
    assert s["bars_per_year"] is None and s["cagr"] is None
    assert s["volatility"] is None and s["sharpe"] is None
    assert s["exposure"] is None  # no positions given: unknown, not zero
    report.format_text_summary(s)


def test_only_winners_profit_factor_is_null_in_json(tmp_path):
    trips = [Trip("long", 1, T0, 1.0, T0 + 1, 2.0, 3.0, 0.1), Trip("long", 1, T0, 1.0, T0 + 1, 2.0, 4.0, 0.1)]
    s = report.summarize(EQ, trips, FILLS, POS)
    assert s["win_rate"] == 1.0
    assert s["gross_loss"] == 0.0 and s["gross_profit"] == 7.0
    assert s["profit_factor"] is None
    p = tmp_path / "summary.json"
    report.write_summary_json(p, s)
    assert json.loads(p.read_text())["profit_factor"] is None
    assert "inf (no losing trade)" in report.format_text_summary(s)


def test_break_even_trips_are_not_wins_and_no_profit_factor():
    trips = [Trip("short", 1, T0, 1.0, T0 + 1, 1.0, 0.0, 0.0)]
    s = report.summarize(EQ, trips, FILLS, POS)
    assert s["win_rate"] == 0.0 and s["profit_factor"] is None
    assert "inf" not in report.format_text_summary(s)


def test_net_is_read_not_gross_pnl():
    # accounting.RoundTrip shape: gross pnl field plus a net property.
    class Gross(SimpleNamespace):
        @property
        def net(self):
            return self.pnl - self.fees

    t = Gross(side="long", qty=1, entry_ts=T0, entry_price=1.0, exit_ts=T0 + 1, exit_price=2.0, pnl=10.0, fees=1.5)
    s = report.summarize(EQ, [t], FILLS, POS)
    assert s["gross_profit"] == 8.5


def test_bars_per_year_rule():
    # Daily with weekends (Mon-Fri, gaps 1 and 3 days): median 1 day -> 252.
    weekdays = [T0 + d * NS_PER_DAY for d in (0, 1, 2, 3, 4, 7, 8, 9, 10, 11)]
    assert report.bars_per_year(weekdays) == 252
    weekly = [T0 + 7 * i * NS_PER_DAY for i in range(10)]
    assert report.bars_per_year(weekly) == pytest.approx(365.25 / 7)
    # 1-minute bars, 390 per session, two sessions.
    minute = 60 * 10**9
    open_ = T0 + int(14.5 * 3600) * 10**9
    intraday = [open_ + i * minute for i in range(390)] + [open_ + NS_PER_DAY + i * minute for i in range(390)]
    assert report.bars_per_year(intraday) == 252 * 390
    assert report.bars_per_year([T0]) is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="empty"):
        report.summarize([])
    with pytest.raises(ValueError, match="row 1: timestamps must increase"):
        report.summarize([(T0, 1.0), (T0, 1.0)])
    with pytest.raises(ValueError, match="row 1: equity must be a finite"):
        report.summarize([(T0, 1.0), (T0 + 1, float("nan"))])
    with pytest.raises(ValueError, match="ts must be int"):
        report.summarize([(1.5, 1.0)])
    with pytest.raises(ValueError, match="initial equity must be > 0"):
        report.summarize([(T0, 0.0)])
    with pytest.raises(ValueError, match="positions has 2 rows, equity has 6"):
        report.summarize(EQ, positions=[0, 0])
    with pytest.raises(ValueError, match="2 round trips but no fills"):
        report.summarize(EQ, TRIPS, [], POS)
    with pytest.raises(ValueError, match="bars per year"):
        report.summarize(EQ, bars_per_year_override=0.0)


def test_equity_csv(tmp_path):
    p = tmp_path / "equity.csv"
    report.write_equity_csv(p, EQ, POS)
    rows = list(csv.reader(p.open()))
    assert rows[0] == ["ts", "time", "equity", "drawdown", "position"]
    assert len(rows) == 7
    assert rows[1] == [str(T0), "2021-01-04T00:00:00Z", "100.00", "0.0", "0"]  # money to the cent
    assert float(rows[3][2]) == 99.0 and float(rows[3][3]) == pytest.approx(0.1)
    assert rows[5][4] == "-100"
    first = p.read_bytes()
    report.write_equity_csv(p, EQ, POS)
    assert p.read_bytes() == first  # deterministic bytes


def test_report_png_is_a_png(tmp_path):
    p = tmp_path / "report.png"
    assert report.write_report_png(p, EQ, title="tiny") is True
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 600)
    assert data[-8:-4] == b"IEND"


def test_report_png_without_matplotlib_logs_and_skips(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import -> ImportError
    seen = []

    class Log:
        def warning(self, event, **kw):
            seen.append((event, kw))

    p = tmp_path / "report.png"
    assert report.write_report_png(p, EQ, log=Log()) is False
    assert not p.exists()
    assert seen and "matplotlib is not installed" in seen[0][0] and seen[0][1]["path"] == str(p)


def test_writers_are_atomic(tmp_path, monkeypatch):
    """A failed write leaves the previous file intact and no temp file behind."""
    s = report.summarize(EQ, TRIPS, FILLS, POS)
    paths = {
        "summary.json": lambda p: report.write_summary_json(p, s),
        "equity.csv": lambda p: report.write_equity_csv(p, EQ, POS),
        "report.png": lambda p: report.write_report_png(p, EQ),
    }
    for name, write in paths.items():
        p = tmp_path / name
        p.write_bytes(b"old")

        def boom(src, dst):
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="disk gone"):
            write(p)
        monkeypatch.undo()
        assert p.read_bytes() == b"old", name
        assert sorted(os.listdir(tmp_path)) == sorted(n for n in paths if (tmp_path / n).exists()), name
        write(p)
        assert p.read_bytes() != b"old"
        assert oct(p.stat().st_mode & 0o777) == oct(report.FILE_MODE)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_summary_json_refuses_nan(tmp_path):
    p = tmp_path / "summary.json"
    with pytest.raises(ValueError):
        report.write_summary_json(p, {"sharpe": math.inf})
    assert not p.exists()


def test_write_results_and_text(tmp_path):
    s = report.write_results(tmp_path, EQ, TRIPS, FILLS, POS, title="tiny")
    assert sorted(os.listdir(tmp_path)) == ["equity.csv", "report.png", "summary.json"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == s
    text = report.format_text_summary(s)
    assert "2021-01-04 -> 2021-01-09 (6 bars)" in text
    assert "100.00 -> 119.79" in text and "total 19.79%" in text
    assert "Sharpe 7.10" in text and "Sortino 14.20" in text
    assert "max drawdown  10.00% over 4 bars (4 days, recovered)" in text
    assert "trades        2  win rate 50.00%  profit factor 2.38" in text
    assert "exposure      50.00%  fills 4  fees 1.00" in text


def test_plot_points_keeps_extremes_of_long_series():
    from actors.report import plot_points

    n = 100_000
    values = [1000.0 + (i % 977) for i in range(n)]
    values[54_321] = 5000.0  # a spike that must show
    values[70_000] = 1.0  # and the deepest point
    dd = [0.0] * n
    dd[70_000] = -99.0
    idx = plot_points(values, dd)
    assert len(idx) < 10_000 and idx == sorted(set(idx))
    assert {0, 54_321, 70_000, n - 1} <= set(idx)
    assert plot_points(values[:100], dd[:100]) == list(range(100))

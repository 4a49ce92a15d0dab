"""Backtest results: summary metrics and the files of the run directory.

Pure functions over plain Python values (no zmq, no pandas, no numpy): any process can
import this cheaply. matplotlib is imported only inside write_report_png, and its absence
is logged, not raised, so a run without it still writes every other result.

Inputs
------
* ``equity``: ``[(ts_ns, equity), ...]``, one row per bar, timestamps strictly increasing,
  equity finite and the first value > 0.
* ``positions``: signed position per bar (same length as ``equity``), for exposure.
* ``trips``: round trips. Any object with ``side, qty, entry_ts, entry_price, exit_ts,
  exit_price, fees`` and ``net`` (PnL net of fees). ``Trip`` below has them, and so does
  actors.accounting.RoundTrip (gross ``pnl`` plus a ``net`` property): always read via
  ``net`` so a gross figure is never mistaken for a net one.
* ``fills``: any objects with ``fee`` (bus.messages.Fill has it).

Conventions (the keys of summary.json)
--------------------------------------
* Returns are per bar: ``r[t] = equity[t] / equity[t-1] - 1``.
* Bars per year (for volatility, Sharpe, Sortino), from the median spacing ``dt`` of the
  timestamps, unless the caller passes ``bars_per_year``:
    - ``20 h <= dt < 4 days``: daily bars -> 252 (trading days; weekends make the gaps
      1-3 days, hence the wide window);
    - ``dt >= 4 days``: 365.25 days / dt (weekly -> 52.2, monthly -> ~12);
    - ``dt < 20 h``: intraday -> 252 x the median number of bars per UTC calendar day
      (1-minute bars of a 390-minute session -> 98,280).
  A 24/7 market on daily bars would want 365: pass ``bars_per_year``.
* Volatility = sample standard deviation (n-1) of the per-bar returns x sqrt(bars/year).
  Sharpe = mean / stdev x sqrt(bars/year), risk-free rate 0. Sortino = mean / downside
  deviation x sqrt(bars/year), downside deviation = sqrt(mean(min(r, 0)^2)) over ALL bars
  (target 0). Each is ``None`` when undefined: fewer than 2 returns, zero deviation (flat
  equity; no losing bar for Sortino), or an equity <= 0 to divide by.
* CAGR uses calendar time: years = (end - start) / 365.25 days. ``None`` if start == end;
  -1.0 if the final equity is <= 0 (everything lost).
* Max drawdown is a positive fraction of the running peak (0.25 = 25 % below the peak).
  Its duration runs from that episode's peak to the first bar back at or above the peak
  (recovery), or to the last bar if it never recovered (``max_drawdown_recovered`` false).
* A trip wins when its net PnL > 0. Profit factor = gross profit / gross loss over net trip
  PnL; with no losing trip it is infinite and written as JSON ``null`` (the gross figures
  are written beside it, so a reader can tell "no losses" from "no trades"); with neither
  a winning nor a losing trip it is undefined, also ``null``.
* Exposure = fraction of bars whose position is non-zero.
* No metric is ever a placeholder zero: what cannot be computed is ``None``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bus.fileio import atomic_write

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
YEAR_NS = 365.25 * NS_PER_DAY
TRADING_DAYS = 252
FILE_MODE = 0o600  # like everything in a run directory: private to the user (the directory is 0700 anyway)
RATIO_DECIMALS = 10  # ratios in summary.json: enough for any figure, none of binary float noise
# summary.json keys that are money: rounded to the instrument's precision (decimals()).
MONEY_KEYS = ("initial_equity", "final_equity", "gross_profit", "gross_loss", "net_trade_pnl", "avg_trade_pnl",
              "best_trade_pnl", "worst_trade_pnl", "fees")


@dataclass(frozen=True, slots=True)
class Trip:
    """A round trip with its PnL already net of fees."""

    side: str  # "long" | "short": direction of the closed position
    qty: int
    entry_ts: int
    entry_price: float
    exit_ts: int
    exit_price: float
    pnl: float  # net of fees
    fees: float

    @property
    def net(self) -> float:
        return self.pnl


# ---------------------------------------------------------------------------- helpers


def iso(ts_ns: int) -> str:
    """UTC ISO-8601 of a nanosecond timestamp (microseconds shown only when non-zero)."""
    d = _dt.datetime.fromtimestamp(ts_ns // NS_PER_S, tz=_dt.timezone.utc)
    us = (ts_ns % NS_PER_S) // 1000
    s = d.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{s}.{us:06d}Z" if us else f"{s}Z"


def decimals(tick_size: float) -> tuple[int, int]:
    """(price decimals, money decimals) for an instrument with this tick size.

    Prices are shown to the tick's decimals (0.01 -> 2, 0.5 -> 1, 0.0001 -> 4); money to
    at least cents, more when the tick is finer (a 0.0001 tick shows PnL to 4 decimals).
    The ledger keeps the exact values; these are for the files a person reads.
    """
    pd = 0
    t = float(tick_size)
    while pd < 10 and abs(t * 10**pd - round(t * 10**pd)) > 1e-9 * max(1.0, t * 10**pd):
        pd += 1
    return pd, max(2, pd)


def rounded(summary: dict[str, Any], money_decimals: int = 2) -> dict[str, Any]:
    """summary with money rounded to ``money_decimals`` and ratios to RATIO_DECIMALS (for summary.json)."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, float):
            v = round(v, money_decimals if k in MONEY_KEYS else RATIO_DECIMALS) + 0.0  # -0.0 -> 0.0
        out[k] = v
    return out


def _validate(equity: Sequence[tuple[int, float]], positions: Sequence[int] | None) -> None:
    if not equity:
        raise ValueError("equity series is empty: need at least one bar")
    prev = None
    for i, row in enumerate(equity):
        if len(row) != 2:
            raise ValueError(f"equity row {i}: expected (ts_ns, equity), got {row!r}")
        ts, eq = row
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise ValueError(f"equity row {i}: ts must be int nanoseconds, got {ts!r}")
        if not isinstance(eq, (int, float)) or not math.isfinite(eq):
            raise ValueError(f"equity row {i}: equity must be a finite number, got {eq!r}")
        if prev is not None and ts <= prev:
            raise ValueError(f"equity row {i}: timestamps must increase ({ts} after {prev})")
        prev = ts
    if equity[0][1] <= 0:
        raise ValueError(f"initial equity must be > 0, got {equity[0][1]!r}")
    if positions is not None and len(positions) != len(equity):
        raise ValueError(f"positions has {len(positions)} rows, equity has {len(equity)}: one per bar each")


def bars_per_year(timestamps: Sequence[int]) -> float | None:
    """Annualisation factor from the median bar spacing (rule in the module docstring)."""
    if len(timestamps) < 2:
        return None
    dt = statistics.median(b - a for a, b in zip(timestamps, timestamps[1:]))
    if dt >= 4 * NS_PER_DAY:
        return YEAR_NS / dt
    if dt >= 20 * 3600 * NS_PER_S:
        return float(TRADING_DAYS)
    per_day: dict[int, int] = {}
    for ts in timestamps:
        per_day[ts // NS_PER_DAY] = per_day.get(ts // NS_PER_DAY, 0) + 1
    return TRADING_DAYS * float(statistics.median(per_day.values()))


def returns(values: Sequence[float]) -> list[float] | None:
    """Per-bar simple returns; None if a bar's base equity is <= 0 (a ratio means nothing)."""
    out = []
    for a, b in zip(values, values[1:]):
        if a <= 0:
            return None
        out.append(b / a - 1.0)
    return out


def drawdowns(values: Sequence[float]) -> list[float]:
    """Per-bar drawdown as a positive fraction of the running peak."""
    peak = -math.inf
    out = []
    for v in values:
        peak = max(peak, v)
        out.append((peak - v) / peak if peak > 0 else 0.0)
    return out


def _max_drawdown(ts: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    dd = drawdowns(values)
    trough = max(range(len(dd)), key=lambda i: (dd[i], -i))  # first bar of the deepest point
    if dd[trough] <= 0.0:
        return {
            "max_drawdown": 0.0,
            "max_drawdown_peak": None,
            "max_drawdown_trough": None,
            "max_drawdown_recovery": None,
            "max_drawdown_recovered": None,
            "max_drawdown_duration_bars": 0,
            "max_drawdown_duration_days": 0.0,
        }
    peak_val = max(values[: trough + 1])
    peak = max(i for i in range(trough + 1) if values[i] == peak_val)
    recovery = next((i for i in range(trough + 1, len(values)) if values[i] >= peak_val), None)
    end = recovery if recovery is not None else len(values) - 1
    return {
        "max_drawdown": dd[trough],
        "max_drawdown_peak": iso(ts[peak]),
        "max_drawdown_trough": iso(ts[trough]),
        "max_drawdown_recovery": iso(ts[recovery]) if recovery is not None else None,
        "max_drawdown_recovered": recovery is not None,
        "max_drawdown_duration_bars": end - peak,
        "max_drawdown_duration_days": (ts[end] - ts[peak]) / NS_PER_DAY,
    }


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------------------- summary


def summarize(
    equity: Sequence[tuple[int, float]],
    trips: Iterable[Any] = (),
    fills: Iterable[Any] = (),
    positions: Sequence[int] | None = None,
    *,
    bars_per_year_override: float | None = None,
) -> dict[str, Any]:
    """Every figure of summary.json, JSON-ready (no inf/NaN: undefined figures are None)."""
    _validate(equity, positions)
    trips = list(trips)
    fills = list(fills)
    if trips and not fills:
        # Every trip comes from fills: without them fees and the fill count would be
        # silent zeros in a summary that has trades.
        raise ValueError(f"{len(trips)} round trips but no fills: pass the fills of the run")
    ts = [t for t, _ in equity]
    values = [float(v) for _, v in equity]
    initial, final = values[0], values[-1]
    span_ns = ts[-1] - ts[0]

    bpy = bars_per_year_override if bars_per_year_override is not None else bars_per_year(ts)
    if bpy is not None and not (math.isfinite(bpy) and bpy > 0):
        raise ValueError(f"bars per year must be a positive finite number, got {bpy!r}")

    if span_ns <= 0:
        cagr = None
    elif final <= 0:
        cagr = -1.0
    else:
        cagr = (final / initial) ** (YEAR_NS / span_ns) - 1.0

    vol = sharpe = sortino = None
    rets = returns(values)
    if rets is not None and len(rets) >= 2 and bpy is not None:
        mean = math.fsum(rets) / len(rets)
        sd = math.sqrt(math.fsum((r - mean) ** 2 for r in rets) / (len(rets) - 1))
        root = math.sqrt(bpy)
        vol = sd * root
        # Below 1e-12 per bar the deviation is float noise on a flat curve, not risk.
        if sd > 1e-12:
            sharpe = mean / sd * root
        down = math.sqrt(math.fsum(min(r, 0.0) ** 2 for r in rets) / len(rets))
        if down > 1e-12:
            sortino = mean / down * root

    nets = [float(t.net) for t in trips]
    gross_profit = math.fsum(n for n in nets if n > 0)
    gross_loss = -math.fsum(n for n in nets if n < 0)
    if gross_loss > 0:
        profit_factor = gross_profit / gross_loss
    elif gross_profit > 0:
        profit_factor = math.inf  # no losing trip: written as null (see docstring)
    else:
        profit_factor = None  # no trips, or only break-even ones: 0/0
    wins = sum(1 for n in nets if n > 0)

    exposure = None
    if positions is not None:
        exposure = sum(1 for p in positions if p != 0) / len(positions)

    summary: dict[str, Any] = {
        "start": iso(ts[0]),
        "end": iso(ts[-1]),
        "start_ts": ts[0],
        "end_ts": ts[-1],
        "bars": len(values),
        "bars_per_year": bpy,
        "initial_equity": initial,
        "final_equity": final,
        "total_return": final / initial - 1.0,
        "cagr": cagr,
        "volatility": vol,
        "sharpe": sharpe,
        "sortino": sortino,
        **_max_drawdown(ts, values),
        "trades": len(nets),
        "win_rate": wins / len(nets) if nets else None,
        "profit_factor": profit_factor,
        "gross_profit": gross_profit,
        "gross_loss": gross_loss,
        "net_trade_pnl": math.fsum(nets),
        "avg_trade_pnl": math.fsum(nets) / len(nets) if nets else None,
        "best_trade_pnl": max(nets) if nets else None,
        "worst_trade_pnl": min(nets) if nets else None,
        "exposure": exposure,
        "fills": len(fills),
        "fees": math.fsum(float(f.fee) for f in fills),
    }
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in summary.items()}


# ---------------------------------------------------------------------------- writers


def write_summary_json(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """summary.json, atomically; inf/NaN are refused (summarize() already maps them to None)."""
    data = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(path, data.encode(), FILE_MODE)


def write_equity_csv(
    path: str | os.PathLike,
    equity: Sequence[tuple[int, float]],
    positions: Sequence[int] | None = None,
    money_decimals: int = 2,
) -> None:
    """equity.csv: ts (ns), time (UTC ISO), equity, drawdown[, position]; one row per bar.

    Equity to ``money_decimals``, drawdown (a fraction) to RATIO_DECIMALS: what a
    person reads, and byte-identical across runs.
    """
    _validate(equity, positions)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ts", "time", "equity", "drawdown"] + (["position"] if positions is not None else []))
    dd = drawdowns([float(v) for _, v in equity])
    for i, (t, v) in enumerate(equity):
        row = [t, iso(t), f"{float(v):.{money_decimals}f}", repr(round(dd[i], RATIO_DECIMALS) + 0.0)]
        if positions is not None:
            row.append(int(positions[i]))
        w.writerow(row)
    atomic_write(path, buf.getvalue().encode(), FILE_MODE)


PLOT_BUCKETS = 2000  # the image is 1000 px wide: more points only cost render time


def plot_points(values: Sequence[float], dd: Sequence[float], buckets: int = PLOT_BUCKETS) -> list[int]:
    """Indices to plot: every point of a short series; for a long one, per bucket
    the first point and the extremes of equity and drawdown, so peaks and the
    deepest drawdown survive. Rendering 1M points would hold the GIL for seconds
    (and starve the exchange's heartbeats)."""
    n = len(values)
    if n <= 4 * buckets:
        return list(range(n))
    step = n / buckets
    keep: set[int] = set()
    for b in range(buckets):
        lo, hi = int(b * step), min(n, int((b + 1) * step))
        if lo >= hi:
            continue
        seg = range(lo, hi)
        keep.update((lo, max(seg, key=values.__getitem__), min(seg, key=values.__getitem__),
                     min(seg, key=dd.__getitem__)))
    keep.add(n - 1)
    return sorted(keep)


def write_report_png(
    path: str | os.PathLike,
    equity: Sequence[tuple[int, float]],
    title: str = "",
    log: Any = None,
) -> bool:
    """report.png: equity curve on top, drawdown below. False (and a log line) if matplotlib
    is missing, so the rest of the results are still written.

    Uses Figure + the Agg canvas directly, not pyplot: no global figure state and no GUI
    backend is ever selected, whatever the process imported before.
    """
    _validate(equity, None)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        if log is None:
            from bus import log as _log

            log = _log.get()
        log.warning("report.png not written: matplotlib is not installed", path=os.fspath(path), error=str(e))
        return False

    values_all = [float(v) for _, v in equity]
    dd_all = [-100.0 * d for d in drawdowns(values_all)]
    idx = plot_points(values_all, dd_all)
    times = [_dt.datetime.fromtimestamp(equity[i][0] / NS_PER_S, tz=_dt.timezone.utc) for i in idx]
    values = [values_all[i] for i in idx]
    dd = [dd_all[i] for i in idx]

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(times, values, color="tab:blue", linewidth=1.0)
    ax1.set_ylabel("equity")
    ax1.ticklabel_format(axis="y", style="plain", useOffset=False)  # money, not "1e6" offsets
    ax1.grid(True, alpha=0.3)
    if title:
        ax1.set_title(title)
    ax2.fill_between(times, dd, 0.0, color="tab:red", alpha=0.4, linewidth=0)
    ax2.plot(times, dd, color="tab:red", linewidth=0.8)
    ax2.set_ylabel("drawdown %")
    ax2.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue(), FILE_MODE)
    return True


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _fmt_num(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_text_summary(s: dict[str, Any]) -> str:
    """The short text printed at the end of a backtest."""
    pf = s["profit_factor"]
    if pf is None and s["gross_loss"] == 0 and s["gross_profit"] > 0:
        pf_txt = "inf (no losing trade)"
    else:
        pf_txt = _fmt_num(pf)
    dd_end = "recovered" if s["max_drawdown_recovered"] else "not recovered"
    lines = [
        f"period        {s['start'][:10]} -> {s['end'][:10]} ({s['bars']} bars)",
        f"equity        {s['initial_equity']:,.2f} -> {s['final_equity']:,.2f}"
        f"  total {_fmt_pct(s['total_return'])}  CAGR {_fmt_pct(s['cagr'])}",
        f"risk          vol {_fmt_pct(s['volatility'])}  Sharpe {_fmt_num(s['sharpe'])}"
        f"  Sortino {_fmt_num(s['sortino'])}",
        f"max drawdown  {_fmt_pct(s['max_drawdown'])}"
        + (
            f" over {s['max_drawdown_duration_bars']} bars"
            f" ({s['max_drawdown_duration_days']:.0f} days, {dd_end})"
            if s["max_drawdown_duration_bars"]
            else ""
        ),
        f"trades        {s['trades']}  win rate {_fmt_pct(s['win_rate'])}  profit factor {pf_txt}",
        f"exposure      {_fmt_pct(s['exposure'])}  fills {s['fills']}  fees {s['fees']:,.2f}",
    ]
    return "\n".join(lines)


def write_results(
    run_dir: str | os.PathLike,
    equity: Sequence[tuple[int, float]],
    trips: Iterable[Any] = (),
    fills: Iterable[Any] = (),
    positions: Sequence[int] | None = None,
    *,
    title: str = "",
    bars_per_year_override: float | None = None,
    log: Any = None,
    money_decimals: int = 2,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """equity.csv, summary.json and report.png in ``run_dir``; returns the summary as written
    (money rounded to ``money_decimals``, see ``rounded``), with ``extra`` keys added."""
    summary = rounded(summarize(equity, trips, fills, positions, bars_per_year_override=bars_per_year_override),
                      money_decimals)
    summary.update(extra or {})
    write_equity_csv(os.path.join(run_dir, "equity.csv"), equity, positions, money_decimals)
    write_summary_json(os.path.join(run_dir, "summary.json"), summary)
    write_report_png(os.path.join(run_dir, "report.png"), equity, title=title, log=log)
    return summary

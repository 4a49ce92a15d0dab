"""Backtest results: summary metrics and the files of the run directory.

Functions over plain values, importable cheaply by any process: numpy is imported only
by the functions that compute over a series, matplotlib only inside the PNG writer, and
its absence is logged, not raised, so a run without it still writes every other result.

Inputs
------
* a series: ``equity``, ``[(ts_ns, equity), ...]`` with ``positions`` beside it, or a
  ``Series`` (``blocks()`` yields (ts, equity, position) numpy arrays in order, so a
  series of 10 million bars is read from disk block by block, never held whole:
  actors/results.py). One row per bar, timestamps strictly increasing, equity finite and
  the first value > 0. Every figure is computed in passes over the blocks and equals the
  whole-list computation exactly (sums are math.fsum's, carried across blocks exactly).
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

import datetime as _dt
import io
import itertools
import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

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


def _median_of_counts(counts: dict[int, int]) -> float:
    """statistics.median of the multiset {value: how many times}: the middle value, or the
    mean of the two middle ones."""
    n = sum(counts.values())
    want = {(n - 1) // 2, n // 2}
    got: dict[int, int] = {}
    seen = 0
    for v in sorted(counts):
        c = counts[v]
        for i in want:
            if seen <= i < seen + c:
                got[i] = v
        seen += c
        if len(got) == len(want):
            break
    if n % 2:
        return got[n // 2]
    return (got[n // 2 - 1] + got[n // 2]) / 2


def _bars_per_year(spacings: dict[int, int], per_day: dict[int, int]) -> float | None:
    """The module docstring's rule, from how often each bar spacing occurs and the bars of each UTC day."""
    if not spacings:
        return None
    dt = _median_of_counts(spacings)
    if dt >= 4 * NS_PER_DAY:
        return YEAR_NS / dt
    if dt >= 20 * 3600 * NS_PER_S:
        return float(TRADING_DAYS)
    return TRADING_DAYS * float(statistics.median(per_day.values()))


def bars_per_year(timestamps: Sequence[int]) -> float | None:
    """Annualisation factor from the median bar spacing (rule in the module docstring)."""
    spacings: dict[int, int] = {}
    for a, b in zip(timestamps, timestamps[1:]):
        spacings[b - a] = spacings.get(b - a, 0) + 1
    per_day: dict[int, int] = {}
    for ts in timestamps:
        per_day[ts // NS_PER_DAY] = per_day.get(ts // NS_PER_DAY, 0) + 1
    return _bars_per_year(spacings, per_day)


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


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _partials(values: list[float]) -> list[float]:
    """Floats whose exact sum is the exact sum of ``values``: fsum, then fsum of what it
    left out, until nothing is. A series' sum is then math.fsum over every block's
    partials, which equals math.fsum over the whole series (both are the exact sum,
    correctly rounded), with one block in memory at a time."""
    out: list[float] = []
    s = math.fsum(values)
    while s != 0.0 and math.isfinite(s):
        out.append(s)
        s = math.fsum(itertools.chain(values, (-x for x in out)))
    if not math.isfinite(s):
        out.append(s)
    return out


# ---------------------------------------------------------------------------- series


class ListSeries:
    """A series in memory, as one block: what summarize() and the writers take lists through."""

    def __init__(self, equity: Sequence[tuple[int, float]], positions: Sequence[int] | None = None):
        self.equity, self.positions = equity, positions

    def __len__(self) -> int:
        return len(self.equity)

    def blocks(self) -> Iterator[tuple[Any, Any, Any]]:
        import numpy as np

        n = len(self.equity)
        ts = np.fromiter((t for t, _ in self.equity), dtype=np.int64, count=n)
        values = np.fromiter((float(v) for _, v in self.equity), dtype=np.float64, count=n)
        pos = np.zeros(n) if self.positions is None else np.asarray(self.positions, dtype=np.float64)
        yield ts, values, pos


class _Walk:
    """One pass over a series' blocks with what every writer needs per row: the running
    peak (for the drawdown) and the row's index, carried across blocks."""

    def __init__(self) -> None:
        self.n = 0
        self.peak = -math.inf

    def drawdown(self, values: Any) -> tuple[Any, Any]:
        """(running peak, drawdown) of a block, continuing the blocks before it."""
        import numpy as np

        peaks = np.maximum.accumulate(np.concatenate(([self.peak], values)))[1:]
        dd = np.zeros(len(values))
        np.divide(peaks - values, peaks, out=dd, where=peaks > 0)
        self.peak = float(peaks[-1])
        return peaks, dd


def _check_block(ts: Any, values: Any, off: int, prev_ts: int | None) -> None:
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"equity row {off + i}: equity must be a finite number, got {float(values[i])!r}")
    full = ts if prev_ts is None else np.concatenate(([prev_ts], ts))
    back = np.flatnonzero(full[1:] <= full[:-1])
    if len(back):
        k = int(back[0])  # full[k + 1] is not after full[k]
        row = off + k + (1 if prev_ts is None else 0)
        raise ValueError(f"equity row {row}: timestamps must increase ({int(full[k + 1])} after {int(full[k])})")


def summarize_series(
    series: Any,
    nets: Sequence[float] = (),
    fees: Sequence[float] = (),
    *,
    exposure_known: bool = True,
    bars_per_year_override: float | None = None,
) -> dict[str, Any]:
    """Every figure of summary.json from a series read block by block (module docstring),
    the round trips' net PnLs and the fills' fees. JSON-ready: undefined figures are None."""
    import numpy as np

    n = 0
    first_ts = last_ts = 0
    initial = final = 0.0
    spacings: dict[int, int] = {}
    per_day: dict[int, int] = {}
    ret_parts: list[float] = []
    down_parts: list[float] = []
    rets_ok = True
    exposed = 0
    walk = _Walk()
    last_att, last_att_ts = -1, 0  # the last bar at its running peak, carried across blocks
    best_dd, trough, trough_ts, peak_i, peak_ts, peak_val = 0.0, -1, 0, -1, 0, 0.0
    prev_ts: int | None = None
    prev_v: float | None = None
    for ts, values, pos in series.blocks():
        m = len(ts)
        if not m:
            continue
        _check_block(ts, values, n, prev_ts)
        if prev_ts is None:
            first_ts, initial = int(ts[0]), float(values[0])
            if initial <= 0:
                raise ValueError(f"initial equity must be > 0, got {initial!r}")
        steps = np.diff(ts) if prev_ts is None else np.diff(ts, prepend=prev_ts)
        for k, c in zip(*(a.tolist() for a in np.unique(steps, return_counts=True))):
            spacings[k] = spacings.get(k, 0) + c
        for k, c in zip(*(a.tolist() for a in np.unique(ts // NS_PER_DAY, return_counts=True))):
            per_day[k] = per_day.get(k, 0) + c
        if rets_ok:
            base = values[:-1] if prev_v is None else np.concatenate(([prev_v], values[:-1]))
            if (base <= 0).any():
                rets_ok = False
            elif len(base):
                r = (values[1:] if prev_v is None else values) / base - 1.0
                ret_parts += _partials(r.tolist())
                down = np.minimum(r, 0.0)
                down_parts += _partials((down * down).tolist())
        exposed += int(np.count_nonzero(pos))
        prev_peak = walk.peak
        peaks, dd = walk.drawdown(values)
        # The last bar at or above the peak before it, for each bar (ts increase, so the
        # largest such ts is the last such bar's).
        before = np.concatenate(([prev_peak], peaks[:-1]))
        at_peak = values >= before
        idx = np.maximum.accumulate(np.concatenate(([last_att], np.where(at_peak, np.arange(n, n + m), -1))))[1:]
        att_ts = np.maximum.accumulate(np.concatenate(([last_att_ts], np.where(at_peak, ts, 0))))[1:]
        j = int(np.argmax(dd))  # the first of the deepest in the block
        if dd[j] > best_dd:
            best_dd, trough, trough_ts = float(dd[j]), n + j, int(ts[j])
            peak_i, peak_ts, peak_val = int(idx[j]), int(att_ts[j]), float(peaks[j])
        last_att, last_att_ts = int(idx[-1]), int(att_ts[-1])
        n += m
        prev_ts, prev_v = int(ts[-1]), float(values[-1])
        last_ts, final = prev_ts, prev_v
    if n == 0:
        raise ValueError("equity series is empty: need at least one bar")
    span_ns = last_ts - first_ts

    bpy = bars_per_year_override if bars_per_year_override is not None else _bars_per_year(spacings, per_day)
    if bpy is not None and not (math.isfinite(bpy) and bpy > 0):
        raise ValueError(f"bars per year must be a positive finite number, got {bpy!r}")
    if span_ns <= 0:
        cagr = None
    elif final <= 0:
        cagr = -1.0
    else:
        cagr = (final / initial) ** (YEAR_NS / span_ns) - 1.0

    # Second pass: the deviation from the mean return, and the bar the deepest drawdown
    # recovered on (the first at or above its peak after the trough).
    n_rets = n - 1
    want_sd = rets_ok and n_rets >= 2 and bpy is not None
    mean = math.fsum(ret_parts) / n_rets if want_sd else 0.0
    var_parts: list[float] = []
    recovery, recovery_ts = None, 0
    if want_sd or best_dd > 0:
        off, prev_v = 0, None
        for ts, values, _pos in series.blocks():
            m = len(ts)
            if want_sd and m:
                base = values[:-1] if prev_v is None else np.concatenate(([prev_v], values[:-1]))
                if len(base):
                    d = (values[1:] if prev_v is None else values) / base - 1.0 - mean
                    var_parts += _partials((d * d).tolist())
            if best_dd > 0 and recovery is None and off + m > trough + 1:
                start = max(0, trough + 1 - off)
                hit = np.flatnonzero(values[start:] >= peak_val)
                if len(hit):
                    recovery = off + start + int(hit[0])
                    recovery_ts = int(ts[start + int(hit[0])])
                    if not want_sd:
                        break
            if m:
                prev_v = float(values[-1])
            off += m

    vol = sharpe = sortino = None
    if want_sd:
        sd = math.sqrt(math.fsum(var_parts) / (n_rets - 1))
        root = math.sqrt(bpy)  # type: ignore[arg-type]
        vol = sd * root
        # Below 1e-12 per bar the deviation is float noise on a flat curve, not risk.
        if sd > 1e-12:
            sharpe = mean / sd * root
        down = math.sqrt(math.fsum(down_parts) / n_rets)
        if down > 1e-12:
            sortino = mean / down * root

    if best_dd <= 0.0:
        dd_figures: dict[str, Any] = {
            "max_drawdown": 0.0, "max_drawdown_peak": None, "max_drawdown_trough": None,
            "max_drawdown_recovery": None, "max_drawdown_recovered": None, "max_drawdown_duration_bars": 0,
            "max_drawdown_duration_days": 0.0,
        }
    else:
        end, end_ts = (recovery, recovery_ts) if recovery is not None else (n - 1, last_ts)
        dd_figures = {
            "max_drawdown": best_dd,
            "max_drawdown_peak": iso(peak_ts),
            "max_drawdown_trough": iso(trough_ts),
            "max_drawdown_recovery": iso(recovery_ts) if recovery is not None else None,
            "max_drawdown_recovered": recovery is not None,
            "max_drawdown_duration_bars": end - peak_i,
            "max_drawdown_duration_days": (end_ts - peak_ts) / NS_PER_DAY,
        }

    nets = [float(x) for x in nets]
    gross_profit = math.fsum(x for x in nets if x > 0)
    gross_loss = -math.fsum(x for x in nets if x < 0)
    if gross_loss > 0:
        profit_factor = gross_profit / gross_loss
    elif gross_profit > 0:
        profit_factor = math.inf  # no losing trip: written as null (see docstring)
    else:
        profit_factor = None  # no trips, or only break-even ones: 0/0
    wins = sum(1 for x in nets if x > 0)

    summary: dict[str, Any] = {
        "start": iso(first_ts),
        "end": iso(last_ts),
        "start_ts": first_ts,
        "end_ts": last_ts,
        "bars": n,
        "bars_per_year": bpy,
        "initial_equity": initial,
        "final_equity": final,
        "total_return": final / initial - 1.0,
        "cagr": cagr,
        "volatility": vol,
        "sharpe": sharpe,
        "sortino": sortino,
        **dd_figures,
        "trades": len(nets),
        "win_rate": wins / len(nets) if nets else None,
        "profit_factor": profit_factor,
        "gross_profit": gross_profit,
        "gross_loss": gross_loss,
        "net_trade_pnl": math.fsum(nets),
        "avg_trade_pnl": math.fsum(nets) / len(nets) if nets else None,
        "best_trade_pnl": max(nets) if nets else None,
        "worst_trade_pnl": min(nets) if nets else None,
        "exposure": exposed / n if exposure_known else None,
        "fills": len(fees),
        "fees": math.fsum(float(f) for f in fees),
    }
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in summary.items()}


def summarize(
    equity: Sequence[tuple[int, float]],
    trips: Iterable[Any] = (),
    fills: Iterable[Any] = (),
    positions: Sequence[int] | None = None,
    *,
    bars_per_year_override: float | None = None,
) -> dict[str, Any]:
    """Every figure of summary.json from lists (summarize_series does the work)."""
    _validate(equity, positions)
    trips = list(trips)
    fills = list(fills)
    if trips and not fills:
        # Every trip comes from fills: without them fees and the fill count would be
        # silent zeros in a summary that has trades.
        raise ValueError(f"{len(trips)} round trips but no fills: pass the fills of the run")
    return summarize_series(ListSeries(equity, positions), [t.net for t in trips], [f.fee for f in fills],
                            exposure_known=positions is not None, bars_per_year_override=bars_per_year_override)


# ---------------------------------------------------------------------------- writers


def write_summary_json(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """summary.json, atomically; inf/NaN are refused (summarize() already maps them to None)."""
    data = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(path, data.encode(), FILE_MODE)


def ratio_texts(values: list[float]) -> list[str]:
    """repr(round(x, RATIO_DECIMALS) + 0.0) of each value, at a third of the cost for the
    usual ones (a drawdown is a fraction): both round the exact binary value to 10
    decimals, and a number of at most 15 significant digits (below 1e5) prints as its own
    shortest repr once trailing zeros go. The others (below 1e-4 repr prints an exponent)
    take the slow way."""
    out = []
    for x in values:
        if 1e-4 <= x < 1e5:
            t = f"{x:.10f}".rstrip("0")
            out.append(t + "0" if t[-1] == "." else t)
        else:
            out.append(repr(round(x, RATIO_DECIMALS) + 0.0))
    return out


def iso_block(ts: Any, z: str = "Z") -> list[str]:
    """iso() of every timestamp of an int64 array, at numpy's speed; ``z=""`` leaves the
    final Z to the caller (one string operation less per row when it formats the row anyway)."""
    import numpy as np

    secs = ts // NS_PER_S
    out = np.datetime_as_string(secs.astype("datetime64[s]"), unit="s").tolist()
    if z:
        out = [s + z for s in out]
    us = (ts % NS_PER_S) // 1000
    for i in np.flatnonzero(us).tolist():  # microseconds only when there are some
        out[i] = f"{out[i][:19]}.{int(us[i]):06d}{z}"
    return out


def _positions(pos: Any) -> list:
    """A block's positions as they print: ints when whole ("100", as equities always did),
    else the shortest float ("0.015"); one vectorised test per block, not one per row."""
    import numpy as np

    whole = np.floor(pos) == pos
    if whole.all():
        return pos.astype(np.int64).tolist()
    return [int(p) if w else p for p, w in zip(pos.tolist(), whole.tolist())]


def write_equity_csv_series(path: str | os.PathLike, series: Any, money_decimals: int = 2,
                            with_positions: bool = True) -> None:
    """equity.csv: ts (ns), time (UTC ISO), equity, drawdown[, position]; one row per bar,
    written block by block. Equity to ``money_decimals``, drawdown (a fraction) to
    RATIO_DECIMALS: what a person reads, and byte-identical across runs."""

    def rows() -> Iterator[bytes]:
        yield ("ts,time,equity,drawdown" + (",position" if with_positions else "") + "\n").encode()
        walk = _Walk()
        spec = f".{money_decimals}f"
        for ts, values, pos in series.blocks():
            if not len(ts):
                continue
            _peaks, dd = walk.drawdown(values)
            times = iso_block(ts, z="")
            ratios = ratio_texts(dd.tolist())
            if with_positions:
                lines = [f"{t},{tm}Z,{v:{spec}},{d},{p}\n"
                         for t, tm, v, d, p in zip(ts.tolist(), times, values.tolist(), ratios, _positions(pos))]
            else:
                lines = [f"{t},{tm}Z,{v:{spec}},{d}\n"
                         for t, tm, v, d in zip(ts.tolist(), times, values.tolist(), ratios)]
            yield "".join(lines).encode()

    atomic_write(path, rows(), FILE_MODE)


def write_equity_csv(
    path: str | os.PathLike,
    equity: Sequence[tuple[int, float]],
    positions: Sequence[int] | None = None,
    money_decimals: int = 2,
) -> None:
    """equity.csv from lists (see write_equity_csv_series)."""
    _validate(equity, positions)
    write_equity_csv_series(path, ListSeries(equity, positions), money_decimals, positions is not None)


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


def _series_points(series: Any, n: int, buckets: int = PLOT_BUCKETS) -> tuple[list[int], list[float], list[float]]:
    """plot_points over a series read block by block: (ts, equity, -100 x drawdown) of the points kept."""
    import numpy as np

    walk = _Walk()
    if n <= 4 * buckets:
        out_ts: list[int] = []
        out_v: list[float] = []
        out_dd: list[float] = []
        for ts, values, _pos in series.blocks():
            _p, dd = walk.drawdown(values)
            out_ts += ts.tolist()
            out_v += values.tolist()
            out_dd += (-100.0 * dd).tolist()
        return out_ts, out_v, out_dd
    step = n / buckets
    edges = [int(b * step) for b in range(buckets)] + [n]
    kept: dict[int, tuple[int, float, float]] = {}  # index -> (ts, equity, -100 x drawdown)
    b = 0
    best: dict[str, tuple[float, int, int, float, float]] = {}  # extreme -> (key, index, ts, v, dd) in bucket b
    off = 0
    for ts, values, _pos in series.blocks():
        m = len(ts)
        _p, dd = walk.drawdown(values)
        ddp = -100.0 * dd
        while b < buckets and edges[b] < off + m:
            lo, hi = max(edges[b], off), min(edges[b + 1], off + m)
            if lo < hi:
                seg = slice(lo - off, hi - off)
                if edges[b] >= off:
                    i = lo - off
                    kept[lo] = (int(ts[i]), float(values[i]), float(ddp[i]))
                for name, arr, pick, sign in (("max", values, np.argmax, -1.0), ("min", values, np.argmin, 1.0),
                                              ("dd", ddp, np.argmin, 1.0)):
                    i = lo - off + int(pick(arr[seg]))
                    key = sign * float(arr[i])
                    if name not in best or key < best[name][0]:  # ties: the earlier point stays
                        best[name] = (key, off + i, int(ts[i]), float(values[i]), float(ddp[i]))
            if edges[b + 1] > off + m:
                break  # the bucket goes on in the next block
            for _key, i, t, v, d in best.values():
                kept[i] = (t, v, d)
            best = {}
            b += 1
        if off + m == n:
            kept[n - 1] = (int(ts[-1]), float(values[-1]), float(ddp[-1]))
        off += m
    order = sorted(kept)
    return [kept[i][0] for i in order], [kept[i][1] for i in order], [kept[i][2] for i in order]


def write_report_png_series(path: str | os.PathLike, series: Any, n: int, title: str = "", log: Any = None) -> bool:
    """report.png: equity curve on top, drawdown below. False (and a log line) if matplotlib
    is missing, so the rest of the results are still written.

    Uses Figure + the Agg canvas directly, not pyplot: no global figure state and no GUI
    backend is ever selected, whatever the process imported before.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        if log is None:
            from bus import log as _log

            log = _log.get()
        log.warning("report.png not written: matplotlib is not installed", path=os.fspath(path), error=str(e))
        return False

    ts, values, dd = _series_points(series, n)
    times = [_dt.datetime.fromtimestamp(t / NS_PER_S, tz=_dt.timezone.utc) for t in ts]

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


def write_report_png(
    path: str | os.PathLike,
    equity: Sequence[tuple[int, float]],
    title: str = "",
    log: Any = None,
) -> bool:
    """report.png from a list (see write_report_png_series)."""
    _validate(equity, None)
    return write_report_png_series(path, ListSeries(equity), len(equity), title=title, log=log)


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


def write_results_series(
    run_dir: str | os.PathLike,
    series: Any,
    nets: Sequence[float] = (),
    fees: Sequence[float] = (),
    *,
    title: str = "",
    bars_per_year_override: float | None = None,
    log: Any = None,
    money_decimals: int = 2,
    extra: dict[str, Any] | None = None,
    with_positions: bool = True,
    png: bool = True,
) -> dict[str, Any]:
    """equity.csv, summary.json and report.png in ``run_dir`` from a series (``len()`` rows);
    returns the summary as written (money rounded to ``money_decimals``, see ``rounded``),
    with ``extra`` keys added. ``png=False``: no report.png (a sweep's trials: drawing it
    costs more than a short backtest)."""
    summary = rounded(summarize_series(series, nets, fees, exposure_known=with_positions,
                                       bars_per_year_override=bars_per_year_override), money_decimals)
    summary.update(extra or {})
    write_equity_csv_series(os.path.join(run_dir, "equity.csv"), series, money_decimals, with_positions)
    write_summary_json(os.path.join(run_dir, "summary.json"), summary)
    if png:
        write_report_png_series(os.path.join(run_dir, "report.png"), series, len(series), title=title, log=log)
    return summary


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
    """write_results_series from lists (trips with ``net``, fills with ``fee``)."""
    _validate(equity, positions)
    trips, fills = list(trips), list(fills)
    if trips and not fills:
        raise ValueError(f"{len(trips)} round trips but no fills: pass the fills of the run")
    return write_results_series(run_dir, ListSeries(equity, positions), [t.net for t in trips],
                                [f.fee for f in fills], title=title, bars_per_year_override=bars_per_year_override,
                                log=log, money_decimals=money_decimals, extra=extra,
                                with_positions=positions is not None)

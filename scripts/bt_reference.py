"""Parity references: the SmaCross backtest run by backtrader and by a plain loop, on any data.

    python scripts/bt_reference.py     # both on GOOG, fill by fill

tests/test_bt_reference.py asserts that the two agree; the end-to-end parity tests
(test_backtest.py, test_parity_ties.py) compare paperbus against them, and
scripts/bench.py times backtrader with it. Here, not under tests/: scripts never
import the test suite.

The data: any daily OHLCV CSV in the layout of data/sample/GOOG.csv (an unnamed date
column, then Open, High, Low, Close, Volume), GOOG by default. ``grid_walk`` generates
series on a coarse price grid, where the two SMAs tie often, and ``write_csv`` writes them;
``paperbus_fills`` reads a paperbus backtest's fills.csv as the same ``Fill`` records.

The scenario (docs/PARITY.md has the reasoning):
  * signal on the close of each daily bar;
  * SMA(fast=10) and SMA(slow=20), each ``math.fsum(window) / period`` (backtrader's
    Average, so the floats are bit-identical);
  * crossover = backtrader's ``bt.ind.CrossOver``: up at bar t when the last NON-ZERO
    value of (fast - slow) before t was < 0 and fast[t] > slow[t]; down symmetric.
    The first bar with a signal is the one after the slow SMA's first value;
  * target position +100 shares on an up cross, -100 on a down cross (a reversal trades
    200), market order placed on the signal bar, filled at the NEXT bar's open; an order
    placed on the last bar never fills;
  * commission 0.2 % of notional per fill, no slippage, cash 1,000,000;
  * final equity = cash + position * last close (backtrader's broker value).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import random
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOG_CSV = os.path.join(ROOT, "data", "sample", "GOOG.csv")

FAST = 10
SLOW = 20
TARGET = 100
COMMISSION = 0.002
CASH = 1_000_000.0


@dataclass(frozen=True)
class Bar:
    date: str  # ISO "YYYY-MM-DD", as in the CSV
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class Fill:
    date: str  # date of the bar whose open filled the order (not the signal bar)
    side: str  # "buy" | "sell"
    qty: int  # always > 0; side carries the sign
    price: float
    commission: float


@dataclass(frozen=True)
class Result:
    fills: list[Fill]
    final_equity: float  # broker value after the last bar, unrounded
    final_position: int
    final_cash: float
    # Per bar, after that bar's fills, marked at its close.
    equity: list[float] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def load_bars(path: str = GOOG_CSV) -> list[Bar]:
    """Read the CSV with the csv module: first (unnamed) column is the date."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        if [h.strip() for h in header[1:6]] != ["Open", "High", "Low", "Close", "Volume"]:
            raise ValueError(f"{path}: unexpected header {header!r}")
        return [
            Bar(r[0], float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]))
            for r in rows
            if r
        ]


def grid_walk(n: int, seed: int = 1, tick_cents: int = 5, start_cents: int = 5000,
              first_day: dt.date = dt.date(1970, 1, 1)) -> list[Bar]:
    """``n`` seeded daily bars whose prices are on a coarse grid, so the SMAs tie often.

    Each close moves -1, 0, 0 or +1 ticks from the last, so over 10 and 20 bars the
    averages meet exactly on about 2 % of the bars. With a tick such as 0.05, which
    binary floats cannot hold exactly, whether they meet is decided by the last bits of
    the sums: the data on which an SMA that is not backtrader's fsum trades differently.
    The open is the previous close moved -1..+1 ticks (market orders fill there), the
    high and low a tick beyond. Prices are ``cents / 100``, the float that "50.05" parses to.
    """
    rng = random.Random(seed)
    steps = (-1, 0, 0, 1)
    out = []
    close = start_cents
    for i in range(n):
        open_ = close + tick_cents * rng.choice(steps)
        close += tick_cents * rng.choice(steps)
        high = max(open_, close) + tick_cents * rng.randint(0, 1)
        low = min(open_, close) - tick_cents * rng.randint(0, 1)
        if low <= 0:
            raise ValueError(f"grid_walk: price reached {low / 100} at bar {i}; raise start_cents")
        out.append(Bar((first_day + dt.timedelta(days=i)).isoformat(), open_ / 100, high / 100, low / 100,
                       close / 100, float(rng.randint(100, 10_000))))
    return out


def write_csv(path: str, bars: list[Bar]) -> None:
    """Bars in GOOG.csv's layout, which both engines and the paperbus replay read.
    ``repr`` is the shortest text that parses back to the same float."""
    with open(path, "w", newline="") as f:
        f.write(",Open,High,Low,Close,Volume\n")
        for b in bars:
            f.write(f"{b.date},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume:.0f}\n")


def paperbus_fills(results_dir: str) -> list[Fill]:
    """The fills.csv of a paperbus backtest (``<run-dir>/latest``) as ``Fill`` records.

    The date is the fill's UTC date (``ts`` is ns); the fee is rounded to the instrument's
    precision there, so compare commissions rounded to the cent."""
    with open(os.path.join(results_dir, "fills.csv"), newline="") as f:
        return [Fill(dt.datetime.fromtimestamp(int(r["ts"]) / 1e9, dt.timezone.utc).date().isoformat(), r["side"],
                     int(r["qty"]), float(r["price"]), float(r["fee"])) for r in csv.DictReader(f)]


def sma(values: list[float], period: int) -> list[float | None]:
    """Simple moving average, None during warm-up (the first period-1 bars).

    math.fsum / period exactly as backtrader's Average does, so a cross decided by the
    last bit of a float goes the same way in both engines.
    """
    out: list[float | None] = [None] * len(values)
    for i in range(period - 1, len(values)):
        out[i] = math.fsum(values[i - period + 1 : i + 1]) / period
    return out


def crossovers(fast: list[float | None], slow: list[float | None]) -> list[int]:
    """+1 / -1 / 0 per bar: backtrader's CrossOver rule with the non-zero-difference memory.

    nzd[t] = fast[t] - slow[t] if that is non-zero, else nzd[t-1]; seeded on the first bar
    where both averages exist. Up at t: nzd[t-1] < 0 and fast[t] > slow[t]. So a touch
    (equal averages) followed by a move through counts as one cross, and a touch followed
    by a move back does not. No signal on the seed bar (nzd[t-1] does not exist there).
    """
    n = len(fast)
    sig = [0] * n
    prev_nzd: float | None = None
    for t in range(n):
        f, s = fast[t], slow[t]
        if f is None or s is None:
            continue
        d = f - s
        if prev_nzd is not None:
            if prev_nzd < 0.0 and f > s:
                sig[t] = 1
            elif prev_nzd > 0.0 and f < s:
                sig[t] = -1
            nzd = d if d else prev_nzd
        else:
            nzd = d  # seed, even if zero (as backtrader's nextstart/oncestart)
        prev_nzd = nzd
    return sig


def run_reference(
    path: str = GOOG_CSV,
    fast: int = FAST,
    slow: int = SLOW,
    target: int = TARGET,
    commission: float = COMMISSION,
    cash: float = CASH,
) -> Result:
    """The independent pure-Python engine: one loop over the bars."""
    bars = load_bars(path)
    closes = [b.close for b in bars]
    sig = crossovers(sma(closes, fast), sma(closes, slow))
    position = 0
    pending: int | None = None  # signed quantity ordered at the previous bar's close
    fills: list[Fill] = []
    equity: list[float] = []
    positions: list[int] = []
    for t, bar in enumerate(bars):
        # The order from bar t-1 fills first, at this bar's open, before the signal of
        # bar t is looked at (backtrader: broker runs before Strategy.next).
        if pending:
            price = bar.open
            comm = abs(pending) * commission * price  # backtrader's operand order: same bits
            cash -= pending * price + comm
            position += pending
            fills.append(Fill(bar.date, "buy" if pending > 0 else "sell", abs(pending), price, comm))
        pending = None
        equity.append(cash + position * bar.close)
        positions.append(position)
        if sig[t]:
            delta = sig[t] * target - position  # order_target_size semantics
            if delta:
                pending = delta
    # pending left here was placed on the last bar: it never fills.
    final = cash + position * bars[-1].close
    return Result(fills, final, position, cash, equity, positions)


def _import_backtrader():
    """Import backtrader on Python >= 3.10.

    backtrader 1.9.78.123 (the last PyPI release) still reads ``collections.Iterable`` in
    LineIterator.bindlines (fixed upstream only in an open PR, mementum/backtrader#520);
    the name moved to collections.abc in 3.10. SmaCross never calls bindlines, but the
    alias makes the reference robust if an indicator that does is added. It only
    restores an old alias of the same class, in the test process.
    """
    import collections
    import collections.abc

    if not hasattr(collections, "Iterable"):
        collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
    import backtrader as bt

    return bt


def run_backtrader(
    path: str = GOOG_CSV,
    fast: int = FAST,
    slow: int = SLOW,
    target: int = TARGET,
    commission: float = COMMISSION,
    cash: float = CASH,
) -> Result:
    """The same scenario in backtrader (default broker: market orders fill at next open)."""
    bt = _import_backtrader()

    fills: list[Fill] = []
    equity: list[float] = []
    positions: list[int] = []

    class SmaCross(bt.Strategy):
        params = (("fast", fast), ("slow", slow), ("target", target))

        def __init__(self):
            sma_fast = bt.ind.SMA(self.data.close, period=self.p.fast)
            sma_slow = bt.ind.SMA(self.data.close, period=self.p.slow)
            self.cross = bt.ind.CrossOver(sma_fast, sma_slow)

        def _mark(self):
            # Called after the broker filled this bar's orders: value at this bar's close.
            equity.append(self.broker.getvalue())
            positions.append(int(self.position.size))

        def prenext(self):  # warm-up bars (SMAs not ready) still count as bars
            self._mark()

        def next(self):
            self._mark()
            if self.cross[0] > 0:
                self.order_target_size(target=self.p.target)
            elif self.cross[0] < 0:
                self.order_target_size(target=-self.p.target)

        def notify_order(self, order):
            if order.status == order.Completed:
                ex = order.executed
                fills.append(
                    Fill(
                        bt.num2date(ex.dt).date().isoformat(),
                        "buy" if order.isbuy() else "sell",
                        int(abs(ex.size)),
                        ex.price,
                        ex.comm,
                    )
                )

    cerebro = bt.Cerebro(stdstats=False)  # no observers: nothing to plot, faster
    data = bt.feeds.GenericCSVData(
        dataname=path,
        dtformat="%Y-%m-%d",
        datetime=0,
        open=1,
        high=2,
        low=3,
        close=4,
        volume=5,
        openinterest=-1,
        headers=True,
    )
    cerebro.adddata(data)
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(cash)
    # Explicit rather than relying on defaults: percentage commission taken as-is
    # (percabs: 0.002 means 0.2 %), stock-like (full notional changes hands, shorts allowed).
    cerebro.broker.setcommission(
        commission=commission,
        commtype=bt.CommInfoBase.COMM_PERC,
        percabs=True,
        stocklike=True,
    )
    # Defaults spelled out: no cheat-on-open/close, no slippage -> fill at next open.
    cerebro.broker.set_coc(False)
    cerebro.broker.set_coo(False)
    strat = cerebro.run()[0]
    broker = cerebro.broker
    position = int(broker.getposition(strat.data).size)
    return Result(fills, broker.getvalue(), position, broker.getcash(), equity, positions)


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    ref = run_reference()
    t1 = time.perf_counter()
    btr = run_backtrader()
    t2 = time.perf_counter()
    print(f"reference: {len(ref.fills)} fills, final {ref.final_equity:.2f} ({t1 - t0:.3f}s)")
    print(f"backtrader: {len(btr.fills)} fills, final {btr.final_equity:.2f} ({t2 - t1:.3f}s)")
    for a, b in zip(ref.fills, btr.fills):
        print(a, "|", b if a != b else "same")

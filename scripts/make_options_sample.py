"""Make the options backtest sample: data/sample/options_intraday.csv (minute bars of an
underlying and of its options, priced by actors/options.py) and its instrument master
data/sample/options_instruments.csv.

    .venv/bin/python scripts/make_options_sample.py [--out data/sample]

What it makes (data/sample/README.md says the same): the underlying UND, a seeded
geometric Brownian motion from 100.00 at 20% annualised volatility, one bar a minute
from 09:30 to 15:59 New York time on the trading days 2026-03-05, 06, 09 and 10 (the US
clocks change on Sunday 2026-03-08, so the same local minutes fall an hour earlier in UTC
after it); calls and puts struck 98..102 expiring 2026-03-06, 2026-03-09 and 2026-03-13 at
16:00 New York (two expire inside the data, so a backtest crosses them), each minute's bar the Black-Scholes price (r = 0, flat 25% implied volatility) of
the underlying's open, high, low and close at that minute (a call's high from the
underlying's high, a put's from its low), on the 0.01 tick, at least one tick. An
option has bars only until its expiry. Same seed, same file.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import random
import sys
from zoneinfo import ZoneInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from actors import options as op  # noqa: E402
from bus.messages import Instrument  # noqa: E402

NY = ZoneInfo("America/New_York")
DAYS = [dt.date(2026, 3, 5), dt.date(2026, 3, 6), dt.date(2026, 3, 9), dt.date(2026, 3, 10)]
EXPIRIES = ["2026-03-06", "2026-03-09", "2026-03-13"]
UNDERLYING = "UND"
VOL_PATH, VOL_IMPLIED, SEED = 0.20, 0.25, 7
MIN_YEAR = 1 / (252 * 390)  # one trading minute of a 252-day year: the path's step


def instruments() -> list[Instrument]:
    u = Instrument(symbol=UNDERLYING, kind="equity", tick_size=0.01)
    return [u, *op.synthetic_chain([u], 100.0, 2, 1.0, EXPIRIES, multiplier=100.0)]


def tick(x: float) -> float:
    return max(0.01, round(round(x / 0.01) * 0.01, 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "sample"))
    a = ap.parse_args(argv)
    insts = instruments()
    chains = op.OptionChains(insts, "16:00", "America/New_York")
    opts = [i for i in insts if i.kind == "option"]
    with open(os.path.join(a.out, "options_instruments.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["symbol", "kind", "tick_size", "lot_size", "multiplier", "currency", "underlying", "strike",
                    "expiry", "right"])
        for i in insts:
            w.writerow([i.symbol, i.kind, i.tick_size, i.lot_size, f"{i.multiplier:g}", i.currency, i.underlying,
                        f"{i.strike:g}" if i.kind == "option" else "", i.expiry, i.right])
    rng = random.Random(SEED)
    s = 100.0
    rows = 0
    with open(os.path.join(a.out, "options_intraday.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "symbol", "open", "high", "low", "close", "volume"])
        for day in DAYS:
            t = dt.datetime.combine(day, dt.time(9, 30), tzinfo=NY)
            while t.time() < dt.time(16, 0):
                ts = int(t.timestamp()) * 10**9
                o = hi = lo = s
                for _ in range(4):  # four steps a minute make the high and low
                    s *= math.exp(-0.5 * VOL_PATH ** 2 * MIN_YEAR / 4 + VOL_PATH * math.sqrt(MIN_YEAR / 4)
                                  * rng.gauss(0, 1))
                    hi, lo = max(hi, s), min(lo, s)
                stamp = t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                w.writerow([stamp, UNDERLYING, tick(o), tick(hi), tick(lo), tick(s), rng.randint(1000, 5000)])
                rows += 1
                for opt in opts:
                    if chains.expiry_of[opt.symbol] <= ts:
                        continue  # expired: no more bars
                    tt = op.years(ts, chains.expiry_of[opt.symbol])
                    px = [op.price(x, opt.strike, tt, 0.0, VOL_IMPLIED, opt.right) for x in (o, hi, lo, s)]
                    w.writerow([stamp, opt.symbol, tick(px[0]), tick(max(px)), tick(min(px)), tick(px[3]),
                                rng.randint(0, 200)])
                    rows += 1
                t += dt.timedelta(minutes=1)
    print(f"wrote {rows} bars of {len(insts)} instruments to {a.out}/options_intraday.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

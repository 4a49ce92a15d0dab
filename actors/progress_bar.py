"""The backtest progress bar on the terminal: bars done, bars/s, time left.

Both kernels draw it: the supervisor from market-data's heartbeat status (so it costs
the actors' data path nothing), the in-process kernel from its own count. Named
ProgressBar, not Progress: ``bus.messages.Progress`` is the actor kernel's flow-control
message.
"""

from __future__ import annotations

from typing import Any


class ProgressBar:
    def __init__(self, out: Any, unit: str = "bars"):
        self.out = out
        self.unit = unit  # what is counted: a backtest's bars, a sweep's trials (scripts/sweep.py)
        self.t0 = 0.0
        self.last_draw = 0.0
        self.drawn = False

    def update(self, now: float, done: int, total: int, final: bool = False) -> None:
        """Redraw (at most every 0.2 s); ``final``: the run is complete, draw it whole."""
        if now - self.last_draw < 0.2 and not final:
            return
        if final and total:
            done = total  # the report of the last bars may not have come yet
        if not done:
            return
        if not self.t0:
            self.t0 = now
        self.last_draw = now
        rate = done / max(now - self.t0, 1e-6)
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (total - done) / rate if rate > 0 else 0.0
            u = self.unit
            line = f"[{bar:<30}] {done:,}/{total:,} {u}  {rate:,.{0 if rate >= 10 else 2}f} {u}/s  {eta:,.1f}s left"
        else:
            line = f"{done:,} {self.unit}  {rate:,.0f} {self.unit}/s"
        self.out.write("\r" + line + "\x1b[K")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line, once: whatever is printed next starts on a line of its own."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False

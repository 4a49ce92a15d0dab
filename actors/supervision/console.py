"""What the supervisor draws on its terminal besides the log: the backtest progress bar."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """Backtest progress on the terminal: items done, items/s, time left.

    Fed from one actor's heartbeat status and READY info, the keys its class
    names in ``progress_bar`` (market-data: ``fseq`` of ``total`` bars), so it
    costs the data path nothing.
    """

    def __init__(self, out: Any, keys: tuple[str, str]):
        self.out = out
        self.done_key, self.total_key = keys
        self.t0 = 0.0
        self.last_draw = 0.0
        self.drawn = False

    def update(self, now: float, status: dict[str, Any], info: dict[str, Any], final: bool = False) -> None:
        """Redraw (at most every 0.2 s); ``final``: the run is complete, draw it whole."""
        if now - self.last_draw < 0.2 and not final:
            return
        done = int(status.get(self.done_key, 0) or 0)
        total = int(info.get(self.total_key, 0) or 0)
        if final and total:
            done = total  # the heartbeat that reports the last items may not have come yet
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
            line = f"[{bar:<30}] {done:,}/{total:,} bars  {rate:,.0f} bars/s  {eta:,.1f}s left"
        else:
            line = f"{done:,} bars  {rate:,.0f} bars/s"
        self.out.write("\r" + line + "\x1b[K")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line, once: whatever is printed next starts on a line of its own."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False

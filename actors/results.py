"""A backtest's equity curve in bounded memory: one row per bar timestamp (ts, equity,
position), kept in arrays of at most BLOCK rows and spilled to a scratch file in the run
directory as they fill, so ten million bars cost 240 MB of disk and a few MB of memory.

``blocks()`` reads it back in order as numpy arrays, as many times as the results need
(actors/report.py computes every figure in passes over the blocks); ``close()`` removes
the scratch file. Conventions: timestamps strictly increase; a row recorded with the
timestamp of the row before replaces it (several symbols share a timestamp: the last bar
of a timestamp has every symbol's price of that time), so the last row stays in memory
until a later timestamp comes.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import Any, Iterator

from bus.faults import disk_error

BLOCK = 65_536  # rows in memory before a spill: 1.5 MB
_HEAD = struct.Struct("<q")  # rows in the block that follows: ts (int64), equity (float64), position (float64)


class EquitySeries:
    def __init__(self, path: str):
        self.path = path
        self.ts = array("q")
        self.eq = array("d")
        # float64: a fractional position (0.015 BTC) as the exchange reports it; whole
        # positions are exact in a double up to 2^53 and print as integers (equity.csv).
        self.pos = array("d")
        self.spilled = 0  # rows in the scratch file
        self._f: Any = None

    def __len__(self) -> int:
        return self.spilled + len(self.ts)

    def record(self, ts: int, equity: float, pos: int | float) -> None:
        t = self.ts
        if t and t[-1] == ts:
            self.eq[-1] = equity
            self.pos[-1] = pos
            return
        if len(t) >= BLOCK:
            self._spill()
        t.append(ts)
        self.eq.append(equity)
        self.pos.append(pos)

    def _spill(self) -> None:
        """All rows but the last (a later bar of its timestamp may still replace it) to the file."""
        n = len(self.ts) - 1
        try:
            if self._f is None:
                self._f = open(self.path, "wb")
            f = self._f
            f.write(_HEAD.pack(n))
            for a in (self.ts, self.eq, self.pos):
                f.write(memoryview(a)[:n])
        except OSError as e:
            raise disk_error(e, "writing", self.path) or e
        self.spilled += n
        for a in (self.ts, self.eq, self.pos):
            del a[:n]

    def blocks(self) -> Iterator[tuple[Any, Any, Any]]:
        """(ts int64, equity float64, position float64) numpy arrays, oldest first."""
        import numpy as np

        if self._f is not None:
            self._f.flush()
            with open(self.path, "rb") as f:
                while True:
                    head = f.read(_HEAD.size)
                    if not head:
                        break
                    (n,) = _HEAD.unpack(head)
                    ts = np.fromfile(f, dtype=np.int64, count=n)
                    eq = np.fromfile(f, dtype=np.float64, count=n)
                    pos = np.fromfile(f, dtype=np.float64, count=n)
                    yield ts, eq, pos
        if self.ts:
            yield (np.frombuffer(self.ts, dtype=np.int64).copy(), np.frombuffer(self.eq, dtype=np.float64).copy(),
                   np.frombuffer(self.pos, dtype=np.float64).copy())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

"""Judging another process silent only on silence seen while we were running.

Heartbeat timeouts compare "now" with the last message from a peer. If *this*
process was not running for a while (CPU starved on a busy machine, SIGSTOPped,
a VM or laptop suspended), that comparison blames the peer for our own gap: the
peer's heartbeats may be queued unread, or the peer was frozen with us. Every
place that judges a peer by silence (supervisor hang detection, the actors'
orphan guard, the Clone client) asks a ``RunGap`` first and restarts its
silence window after a gap.
"""

from __future__ import annotations


class RunGap:
    """Notices gaps between successive looks longer than ``threshold_s``."""

    def __init__(self, threshold_s: float):
        self.threshold_s = threshold_s
        self._last = 0.0

    def gap(self, now: float) -> float:
        """Seconds we were not running since the last call, if over the threshold; else 0."""
        last, self._last = self._last, now
        g = now - last if last else 0.0
        return g if g > self.threshold_s else 0.0

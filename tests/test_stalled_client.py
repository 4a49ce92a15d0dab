"""A SIGSTOPped monitor process: trading goes on, the publisher's memory stays
bounded, and on SIGCONT the monitor finds its gap, resyncs and shows exactly the
publisher's state. The real supervisor, actors and `scripts/monitor.py --json`
(scripts/stall.py, with a short stall; its 30 s run is in docs/BENCHMARKS.md).
No timing is asserted."""

import pytest

from scripts import stall

pytestmark = pytest.mark.timeout(150)

STALL_S = 8.0
# Low enough that 8 s of a few hundred deltas/s overflow it several times over
# (the shipped 10,000 would need a longer stall to prove anything).
PUB_HWM = 1000


def test_sigstopped_monitor_does_not_slow_trading_and_resyncs(procs, run_dir):
    r = stall.run(run_dir, seconds=STALL_S, pub_hwm=PUB_HWM, rate_hz=200.0, baseline_s=2.0, spawn=procs.spawn)
    print("\n" + stall.report(r))

    # The monitor really was stopped, and the stall really overflowed: PUB dropped
    # deltas for it, which it detected as a gap in state_seq (else nothing is proven).
    assert r.monitor_stopped and r.lines_during_stall == 0
    assert r.gaps >= 1 and r.missed >= 1, f"no gap after a {STALL_S:g} s stall with pub_hwm {PUB_HWM}"
    # It told the publisher what it missed when asking for the snapshot.
    assert r.pub_client_missed >= r.missed

    # It resynced, and every line it printed (before and after) equals the
    # publisher's state at that line's state_seq.
    assert r.resync_s is not None and r.client_after["snapshots"] > r.client_before["snapshots"]
    assert r.converged_s is not None
    assert r.compared >= 2 and r.mismatches == []

    # Trading went on during the stall, and the publisher kept publishing to the
    # client that was not stopped: it was never blocked by the stalled one.
    first, last = r.stalled[0], r.stalled[-1]
    assert last.bars > first.bars and last.fills > first.fills
    assert last.pub_seq > first.pub_seq

    # Nothing restarted, nothing was taken for hung.
    assert set(r.pids_before) == set(stall.ACTORS) and r.pids_after == r.pids_before
    assert not any(r.restarts.values()) and r.bad_events == []

    # Memory ceiling: the publisher queues at most pub_hwm messages for the stopped
    # client, each <= 8 KiB (the largest delta is `trades`, 50 trades ~7.3 KB, plus
    # zmq/malloc overhead); kernel socket buffers are not in its RSS. So baseline
    # + 1000 x 8 KiB + 32 MiB slack (allocator, Python objects) = ~40 MB above the
    # baseline; an unbounded queue at ~500 deltas/s of up to 7 KB crosses it.
    assert r.rss_bound_kb() == (PUB_HWM * 8 * 1024 + 32 * 1024 * 1024) // 1024
    assert r.rss_max_during() <= r.rss_before() + r.rss_bound_kb(), stall.report(r)

    assert r.violations == []

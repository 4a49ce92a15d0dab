"""Stalled monitor: a SIGSTOPped client must not slow trading nor grow the publisher.

    python scripts/stall.py [--seconds 30] [--run-dir DIR] [--pub-hwm N] [--rate-hz HZ]

Starts the real supervisor (live mode, synthetic feed at --rate-hz bars/s per
symbol, SmaCross 2/4 filling at the close, so it trades several times a second)
and a real `scripts/monitor.py --json` process that keeps consuming the state
stream. Then:

1. baseline: bars and fills per second processed by the exchange (ctl status),
   the state-publisher's messages per second and its RSS (/proc VmRSS);
2. SIGSTOP the monitor for --seconds while sampling the same figures. The
   stopped monitor reads nothing: the kernel socket buffers fill, then the
   publisher's per-client queue up to state.pub_hwm, then the PUB drops for that
   client only (it never blocks);
3. SIGCONT: the monitor drains what was queued, finds the gap in state_seq,
   fetches a snapshot (resync), and its view must equal the publisher's.

"Equal" is exact: a second, never-stopped Clone client in this process
(`Reference`) can rebuild the publisher's state at any recent state_seq, and
each JSON line the monitor prints (state at seq S) is compared with it at S.

Prints baseline vs stalled throughput, publisher RSS before / max during /
after, the deltas the monitor missed, time to resync after SIGCONT. Exit 1 on a
violation (a gap that did not happen counts: then the stall proved nothing).
Asserts no timings; tests/test_stalled_client.py runs `run()` with a short stall.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bus.clone_client import CloneClient  # noqa: E402
from bus.messages import Delta  # noqa: E402
from scripts import testkit  # noqa: E402
from scripts.testkit import log_events, pid_state, rss_kb, status  # noqa: E402

PY = sys.executable
ACTORS = ("market-data", "paper-exchange", "state-publisher", "strategy")
SAMPLE_S = 0.25  # sampling period of status / RSS during the windows
# Memory ceiling of the publisher while a client is stalled. Its queue for that
# client holds at most pub_hwm messages; the largest Delta is the `trades` key
# (state.last_trades = 50 trades x ~145 B = ~7.3 KB) plus the zmq message and
# malloc overhead of its frames, so <= 8 KiB each. The kernel socket buffers are
# not in the process's RSS. SLACK covers allocator fragmentation and the
# Python objects of a busy publisher; growth beyond this means an unbounded queue.
PER_MSG_BYTES = 8 * 1024
OVERFLOW_FACTOR = 3  # the stall lasts until the publisher sent this many x pub_hwm deltas
SLACK_BYTES = 32 * 1024 * 1024
_MISSING = object()


def config_sets(rate_hz: float, pub_hwm: int | None) -> list[str]:
    # Hang tolerance 5 s (20 x 250 ms): the run loads the machine on purpose, and a
    # hang detection here would be about CPU starvation, not about the stalled client.
    sets = [f"market_data.rate_hz={rate_hz:g}", "strategy.params={ fast = 2, slow = 4, qty = 10 }",
            "exchange.fill_on=close", "supervisor.heartbeat_misses=20"]
    if pub_hwm is not None:
        sets.append(f"state.pub_hwm={pub_hwm}")
    return sets


def _norm(x: Any) -> Any:
    """What the monitor's JSON line makes of a value (dict keys become strings)."""
    return json.loads(json.dumps(x))


class Reference:
    """A Clone client that is never stopped and can rebuild the state at any recent seq.

    Its ``drop`` hook sees every delta before it is applied; for the ones applied
    in order it keeps (seq, key, previous value), so the state at seq S (floor <= S
    <= client.seq) is the current state with the later deltas undone. A resync of
    this client (its own snapshot) starts the history again.
    """

    def __init__(self, run_dir: str, keep: int = 5000):
        self.keep = keep
        self.hist: collections.deque[tuple[int, str, Any]] = collections.deque()
        self.floor: int | None = None
        self._snaps = -1
        self.client = CloneClient(run_dir, name="stall-reference", drop=self._observe)

    def _observe(self, d: Delta) -> bool:
        c = self.client
        if d.state_seq == c.seq + 1:  # in order: the client applies it right after this
            if c.stats["snapshots"] != self._snaps:
                self.hist.clear()
                self.floor, self._snaps = c.seq, c.stats["snapshots"]
            assert c.state is not None
            self.hist.append((d.state_seq, d.key, c.state.get(d.key, _MISSING)))
            if len(self.hist) > self.keep:
                self.floor = self.hist.popleft()[0]
        return False  # observe only: drop nothing

    @property
    def seq(self) -> int:
        return self.client.seq

    def state_at(self, seq: int) -> dict[str, Any] | None:
        c = self.client
        if self.floor is None or c.state is None or c.stats["snapshots"] != self._snaps:
            return None
        if not self.floor <= seq <= c.seq:
            return None
        st = dict(c.state)
        for s, key, old in reversed(self.hist):
            if s <= seq:
                break
            if old is _MISSING:
                st.pop(key, None)
            else:
                st[key] = old
        return st

    def close(self) -> None:
        self.client.close()


class MonitorLines:
    """The monitor's stdout, read without blocking: one JSON object per line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.n = 0

    def read(self) -> list[dict[str, Any]]:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        out = [json.loads(x) for x in lines if x.strip()]
        self.n += len(out)
        return out


@dataclass
class Sample:
    t: float
    bars: int  # bars priced by the exchange
    fills: int
    pub_seq: int  # state_seq the never-stopped reference client has reached
    rss_kb: int | None


@dataclass
class Result:
    seconds: float
    pub_hwm: int
    rate_hz: float
    baseline: list[Sample] = field(default_factory=list)
    stalled: list[Sample] = field(default_factory=list)
    after: list[Sample] = field(default_factory=list)
    monitor_stopped: bool = False  # the kernel said T (stopped) during the stall
    lines_during_stall: int = 0  # JSON lines printed by the monitor while stopped (must be 0)
    client_before: dict[str, int] = field(default_factory=dict)  # monitor's counters before SIGSTOP
    client_after: dict[str, int] = field(default_factory=dict)  # ... when it had resynced
    resync_s: float | None = None  # SIGCONT -> a line showing the new snapshot after a gap
    converged_s: float | None = None  # SIGCONT -> a line whose state equals the publisher's at its seq
    compared: int = 0  # monitor lines compared with the reference
    mismatches: list[str] = field(default_factory=list)
    pub_client_missed: int = 0  # the publisher's own count of deltas its clients reported missing
    pids_before: dict[str, int] = field(default_factory=dict)
    pids_after: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    bad_events: list[str] = field(default_factory=list)  # hang detections, actor exits
    violations: list[str] = field(default_factory=list)

    @property
    def missed(self) -> int:
        return self.client_after.get("missed", 0) - self.client_before.get("missed", 0)

    @property
    def gaps(self) -> int:
        return self.client_after.get("gaps", 0) - self.client_before.get("gaps", 0)

    def rss_bound_kb(self) -> int:
        return (self.pub_hwm * PER_MSG_BYTES + SLACK_BYTES) // 1024

    def rss_before(self) -> int:
        return max((s.rss_kb or 0 for s in self.baseline), default=0)

    def rss_max_during(self) -> int:
        return max((s.rss_kb or 0 for s in self.stalled), default=0)

    def rss_after(self) -> int:
        return self.after[-1].rss_kb or 0 if self.after else 0


def rate(samples: list[Sample], attr: str) -> float:
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return 0.0
    return (getattr(samples[-1], attr) - getattr(samples[0], attr)) / (samples[-1].t - samples[0].t)


class Stall:
    def __init__(self, run_dir: str, seconds: float, pub_hwm: int, rate_hz: float, baseline_s: float,
                 spawn: Callable[..., subprocess.Popen], log: Callable[[str], None]):
        self.run_dir, self.spawn, self.log = run_dir, spawn, log
        self.baseline_s = baseline_s
        self.r = Result(seconds=seconds, pub_hwm=pub_hwm, rate_hz=rate_hz)
        self.sup: subprocess.Popen | None = None
        self.mon: subprocess.Popen | None = None
        self.ref: Reference | None = None
        self.lines: MonitorLines | None = None
        self.last_line: dict[str, Any] | None = None
        # monitor lines not yet compared: (seq, state, printed after the resync)
        self.pending: list[tuple[int, dict[str, Any], bool]] = []
        self.t_cont: float | None = None

    # ------------------------------------------------------------ plumbing
    def status(self) -> dict[str, Any] | None:
        return status(self.run_dir)

    def pump(self, seconds: float) -> None:
        """Keep the reference current and read the monitor's lines for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            assert self.ref is not None and self.lines is not None
            self.ref.client.step(min(0.05, max(0.0, end - time.monotonic())))
            for line in self.lines.read():
                self.on_line(line)
            self.compare_pending()
            if time.monotonic() >= end:
                return

    def on_line(self, line: dict[str, Any]) -> None:
        self.last_line = line
        if line.get("state") is None:
            return
        c = line.get("client") or {}
        if (self.t_cont is not None and self.r.resync_s is None and not line["stale"]
                and c.get("gaps", 0) > self.r.client_before.get("gaps", 0)
                and c.get("snapshots", 0) > self.r.client_before.get("snapshots", 0)):
            self.r.resync_s = time.monotonic() - self.t_cont
            self.r.client_after = dict(c)
        # Every line is compared (a view at an old seq must equal the publisher's
        # at that seq too); convergence counts only lines after the resync.
        self.pending.append((line["state_seq"], line["state"], self.r.resync_s is not None))

    def compare_pending(self) -> None:
        assert self.ref is not None
        keep = []
        for seq, st, resynced in self.pending:
            if seq > self.ref.seq:
                keep.append((seq, st, resynced))  # the reference has not got there yet
                continue
            want = self.ref.state_at(seq)
            if want is None:
                continue  # older than the reference's history: cannot be judged
            self.r.compared += 1
            want = _norm(want)
            if want == st:
                if resynced and self.r.converged_s is None:
                    assert self.t_cont is not None
                    self.r.converged_s = time.monotonic() - self.t_cont
            else:
                diff = sorted(k for k in set(want) | set(st) if want.get(k) != st.get(k))
                self.r.mismatches.append(f"seq {seq}: keys differ: {diff}")
        self.pending = keep[-50:]

    def sample(self, into: list[Sample]) -> None:
        st = self.status()
        assert self.ref is not None
        if st is None:
            self.r.violations.append("supervisor did not answer status")
            return
        ex = st["actors"]["paper-exchange"].get("status", {})
        pub_pid = st["actors"]["state-publisher"]["pid"]
        into.append(Sample(time.monotonic(), ex.get("bars", 0), ex.get("fills", 0), self.ref.seq, rss_kb(pub_pid)))

    def window(self, seconds: float, into: list[Sample], watch_monitor: bool = False) -> None:
        end = time.monotonic() + seconds
        self.sample(into)
        while time.monotonic() < end:
            self.pump(min(SAMPLE_S, max(0.0, end - time.monotonic())))
            self.sample(into)
            if watch_monitor and self.mon is not None and pid_state(self.mon.pid) == "T":
                self.r.monitor_stopped = True

    def pids(self) -> tuple[dict[str, int], dict[str, int]]:
        st = self.status() or {"actors": {}}
        return ({n: a["pid"] for n, a in st["actors"].items()},
                {n: a.get("restarts", 0) for n, a in st["actors"].items()})

    # ------------------------------------------------------------- the run
    def start(self) -> None:
        self.sup_err = open(os.path.join(self.run_dir, "stall-supervisor.console"), "wb")
        self.sup = testkit.start_supervisor(self.run_dir, testkit.DEFAULT_CONFIG,
                                            config_sets(self.r.rate_hz, self.r.pub_hwm), spawn=self.spawn,
                                            timeout=60, stdout=subprocess.DEVNULL, stderr=self.sup_err)
        self.ref = Reference(self.run_dir)
        if not self.ref.client.wait_synced(10):
            raise RuntimeError(f"reference client got no snapshot: {self.ref.client.error}")
        self.mon = self.spawn([PY, "scripts/monitor.py", "--run-dir", self.run_dir, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = MonitorLines(self.mon)
        deadline = time.monotonic() + 30
        while self.last_line is None or self.last_line.get("state") is None:
            if time.monotonic() > deadline or self.mon.poll() is not None:
                raise RuntimeError("the monitor printed no state")
            self.pump(0.1)
        # Trading under way before the baseline: the strategy needs `slow` bars first.
        deadline = time.monotonic() + 30
        while True:
            st = self.status() or {"actors": {}}
            if st["actors"].get("paper-exchange", {}).get("status", {}).get("fills", 0) >= 5:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the strategy does not trade")
            self.pump(0.1)

    def run(self) -> Result:
        r = self.r
        self.start()
        assert self.mon is not None and self.lines is not None and self.last_line is not None
        r.pids_before, _ = self.pids()
        self.log(f"baseline {self.baseline_s:g} s ...")
        self.window(self.baseline_s, r.baseline)

        r.client_before = dict(self.last_line.get("client") or {})
        lines_before = self.lines.n
        self.log(f"SIGSTOP monitor (pid {self.mon.pid}) for {r.seconds:g} s ...")
        os.kill(self.mon.pid, signal.SIGSTOP)
        seq0 = self.ref.seq if self.ref is not None else 0
        try:
            self.window(r.seconds, r.stalled, watch_monitor=True)
            # A slow machine publishes less: stay stopped until the publisher has
            # sent well over what its queue and the kernel can hold for us (else
            # nothing overflowed and the stall proves nothing), within a deadline.
            deadline = time.monotonic() + max(30.0, 3 * r.seconds)
            while (self.ref is not None and self.ref.seq - seq0 < OVERFLOW_FACTOR * r.pub_hwm
                   and time.monotonic() < deadline):
                self.window(SAMPLE_S, r.stalled, watch_monitor=True)
            r.lines_during_stall = self.lines.n - lines_before
        finally:
            os.kill(self.mon.pid, signal.SIGCONT)
        self.t_cont = time.monotonic()
        self.log("SIGCONT; waiting for the resync ...")
        deadline = self.t_cont + max(30.0, r.seconds)
        while r.converged_s is None and time.monotonic() < deadline and self.mon.poll() is None:
            self.pump(0.1)
        self.window(min(2.0, self.baseline_s), r.after)

        r.pids_after, r.restarts = self.pids()
        st = self.status()
        if st is not None:
            # The publisher's own count, reported in its status on the next heartbeat.
            r.pub_client_missed = st["actors"]["state-publisher"].get("status", {}).get("client_missed", 0)
        for e in log_events(self.run_dir):
            if e.get("event", "").startswith(("actor hung", "actor exited", "restart intensity")):
                r.bad_events.append(f"{e['event']} ({e.get('actor')})")
        self.judge()
        return r

    def judge(self) -> None:
        r, v = self.r, self.r.violations
        if not r.monitor_stopped:
            v.append("the monitor was never seen stopped (state T)")
        if r.lines_during_stall:
            v.append(f"the monitor printed {r.lines_during_stall} lines while stopped")
        if r.gaps < 1 or r.missed < 1:
            v.append(f"no gap: the stall did not overflow the publisher's queue (pub_hwm {r.pub_hwm}); "
                     "it proves nothing -- stall longer or lower --pub-hwm")
        if r.resync_s is None:
            v.append("the monitor did not resync (no snapshot after a gap) after SIGCONT")
        if r.converged_s is None:
            v.append("the monitor's view never equalled the publisher's after SIGCONT")
        if r.mismatches:
            v.append(f"{len(r.mismatches)} monitor lines differ from the publisher's state: {r.mismatches[:3]}")
        if len(r.stalled) < 2:
            v.append("too few samples during the stall")
        else:
            a, b = r.stalled[0], r.stalled[-1]
            if b.fills <= a.fills or b.bars <= a.bars:
                v.append(f"trading stopped during the stall: bars {a.bars}->{b.bars}, fills {a.fills}->{b.fills}")
            if b.pub_seq <= a.pub_seq:
                v.append(f"the publisher stopped publishing during the stall: seq {a.pub_seq}->{b.pub_seq}")
            if r.rss_max_during() > r.rss_before() + r.rss_bound_kb():
                v.append(f"publisher RSS {r.rss_max_during()} kB during the stall exceeds baseline "
                         f"{r.rss_before()} kB + bound {r.rss_bound_kb()} kB")
        if r.pids_after != r.pids_before:
            v.append(f"actor pids changed: {r.pids_before} -> {r.pids_after}")
        if any(r.restarts.values()):
            v.append(f"actors restarted: {r.restarts}")
        if r.bad_events:
            v.append(f"supervisor logged: {r.bad_events}")

    def close(self) -> None:
        if self.mon is not None and self.mon.poll() is None:
            os.kill(self.mon.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.mon.terminate()
            try:
                self.mon.wait(5)
            except subprocess.TimeoutExpired:
                self.mon.kill()
                self.mon.wait(5)
        if self.ref is not None:
            self.ref.close()
        if self.sup is not None:
            testkit.shutdown(self.sup, self.run_dir)
        if hasattr(self, "sup_err"):
            self.sup_err.close()


def run(run_dir: str, seconds: float = 30.0, pub_hwm: int = 1000, rate_hz: float = 200.0,
        baseline_s: float = 5.0, spawn: Callable[..., subprocess.Popen] = testkit.spawn,
        log: Callable[[str], None] = lambda s: None) -> Result:
    s = Stall(run_dir, seconds, pub_hwm, rate_hz, baseline_s, spawn, log)
    try:
        return s.run()
    finally:
        s.close()


def report(r: Result) -> str:
    def mb(kb: int) -> str:
        return f"{kb / 1024:.1f} MB"
    rows = [
        f"stall {r.seconds:g} s, state.pub_hwm {r.pub_hwm}, feed {r.rate_hz:g} bars/s per symbol",
        f"{'':22}{'baseline':>12}{'stalled':>12}",
        f"{'exchange bars/s':22}{rate(r.baseline, 'bars'):12.1f}{rate(r.stalled, 'bars'):12.1f}",
        f"{'exchange fills/s':22}{rate(r.baseline, 'fills'):12.1f}{rate(r.stalled, 'fills'):12.1f}",
        f"{'publisher msgs/s':22}{rate(r.baseline, 'pub_seq'):12.1f}{rate(r.stalled, 'pub_seq'):12.1f}",
        f"publisher RSS         before {mb(r.rss_before())}, max during {mb(r.rss_max_during())}, "
        f"after {mb(r.rss_after())} (bound: before + {mb(r.rss_bound_kb())})" if r.stalled else "",
        f"monitor               gaps {r.gaps}, deltas missed {r.missed} (publisher's count {r.pub_client_missed})",
        f"after SIGCONT         resync {r.resync_s:.3f} s" if r.resync_s is not None else
        "after SIGCONT         no resync",
        f"                      view equal to the publisher's {r.converged_s:.3f} s "
        f"({r.compared} lines compared, {len(r.mismatches)} differ)" if r.converged_s is not None else
        "                      view never equal to the publisher's",
        f"actors                pids unchanged: {r.pids_after == r.pids_before}, restarts "
        f"{sum(r.restarts.values())}",
    ]
    return "\n".join(x for x in rows if x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stall.py", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the monitor stays stopped (default 30)")
    ap.add_argument("--run-dir", default="", help="run directory (default: a fresh one in /tmp, removed after)")
    ap.add_argument("--pub-hwm", type=int, default=1000,
                    help="state.pub_hwm for the run (default 1000: a 30 s stall overflows it several times)")
    ap.add_argument("--rate-hz", type=float, default=200.0, help="synthetic bars/s per symbol (default 200)")
    ap.add_argument("--baseline", type=float, default=5.0, help="baseline window in seconds (default 5)")
    args = ap.parse_args(argv)
    tmp = not args.run_dir
    # Short path: ipc socket paths must fit in sun_path (108 bytes).
    run_dir = tempfile.mkdtemp(prefix="pbstall-", dir="/tmp") if tmp else os.path.abspath(args.run_dir)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    try:
        r = run(run_dir, args.seconds, args.pub_hwm, args.rate_hz, args.baseline,
                log=lambda s: print(s, file=sys.stderr, flush=True))
    except (RuntimeError, AssertionError) as e:
        print(f"stall: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(report(r))
    for v in r.violations:
        print(f"VIOLATION: {v}")
    return 1 if r.violations else 0


if __name__ == "__main__":
    sys.exit(main())

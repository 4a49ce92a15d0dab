"""paperbus chaos: kill actors at random while the system trades, and prove nothing is lost.

    python scripts/chaos.py [--minutes N] [--kills K] [--seed S] [--run-dir DIR] [--keep]
                            [--summary-json PATH]

Starts the real supervisor (live mode, synthetic feed, the PingPong strategy
trading every bar, fills at the close, so there are several fills a second) in
a fresh run directory under /tmp, subscribes to the exchange's ``exec`` PUB
before any actor runs and records every Fill published. Then, at random moments
(seeded RNG), it sends SIGKILL or SIGSTOP to a random actor (pid from ``ctl
status``). A SIGSTOPped actor is left to the supervisor's hang detection
(heartbeats every 100 ms, hung after 5 missed) to kill and restart.

After each recovery it checks, each with a deadline (it waits on sockets and
polls; it never sleeps to synchronise):

1. every actor is running again, with a new pid where it was killed (and the
   strategy too when the exchange was killed: ``restart_with``); a SIGSTOPped
   actor was found hung by the supervisor exactly once (its log);
2. no zombie, no orphan: the killed pids are gone (not even zombies), no child
   of the supervisor is a zombie, and the live actor processes of this run
   directory are exactly the four the supervisor reports (= its children);
3. ledger invariants (scripts/testkit.py, shared with the crash and disk
   tests; ``ledger.sqlite`` opened read-only, one read transaction):
   ``PRAGMA integrity_check`` ok; the positions table and each fill's
   ``position``/``realized`` equal a replay of the fills table through
   ``actors.accounting.Account``; per order sum(fill qty) == filled <= qty,
   status filled exactly when fully filled, and every fill matches its order;
   no duplicate cl_id;
4. every Fill published on ``exec`` so far is in the ledger with the same
   fill_id, order_id, cl_id, symbol, side, qty, price and fee;
5. the state-publisher's view (a fresh ``bus.clone_client`` snapshot plus
   deltas) equals the ledger: non-flat positions (qty, avg price, realized,
   fees), the account's cash, realized and fees, and the open orders; and the
   strategy's own positions (its ``ctl status``) equal the ledger's.

Checks 3-5 are made with trading paused, which makes them exact: ``ctl pause``
(the exchange then rejects every new order), wait until the ledger has no open
order (a market order accepted just before the pause fills at the next bar),
then the ledger cannot change; the view and the strategy are polled until they
equal the ledger or the deadline passes (they may lag the exchange by a
message or a heartbeat), then ``ctl resume``. Kills always land while trading runs; only the checking is paused.

An actor restarted although it was not killed (hang detection is a timing
judgement, and a loaded machine can trip it) is reported as an unplanned
restart, not as a violation; the invariants must hold all the same.

At the end it prints kills by signal and by actor, recoveries, time to recover
(kill -> every actor running again) p50/max, fills published/checked and every
violation. Exit 0 when there was no violation, 1 otherwise, 130 when
interrupted. The system is always shut down on exit (``ctl shutdown``, then the
supervisor is waited for and killed as a last resort; it also gets SIGTERM if
this script dies). The run directory is removed unless --keep, --run-dir, or a
violation was found.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import zmq  # noqa: E402

from actors.base import set_pdeathsig  # noqa: E402
from bus.clone_client import CloneClient  # noqa: E402
from bus.codec import ProtocolError, Stamper  # noqa: E402
from bus.messages import Fill  # noqa: E402
import config as config_mod  # noqa: E402
from bus.sockets import Endpoints, Port, open_port  # noqa: E402
from scripts import testkit  # noqa: E402
from scripts.ctl import request  # noqa: E402
from scripts.testkit import (  # noqa: E402
    LedgerState, actor_processes, check_published, children, close_enough, proc_stat, read_ledger, same_process,
)

ACTORS = ["market-data", "paper-exchange", "state-publisher", "strategy"]
SETS = [
    "strategy.plugin=actors.strategies.pingpong:PingPong",
    "strategy.params={ qty = 10 }",
    "exchange.fill_on=close",
    "exchange.commission_pct=0.001",  # fees are booked, so they are checked too
    "market_data.rate_hz=8",  # PingPong on 2 symbols: up to 16 fills/s
    "supervisor.heartbeat_ms=100",
    "supervisor.heartbeat_misses=5",  # a SIGSTOPped actor is hung after 0.5 s
    "supervisor.max_restarts=1000000",  # chaos must never trip the intensity limit
    "supervisor.max_seconds=1",
    "supervisor.backoff_max_ms=1000",
    "supervisor.stable_seconds=2",
    'supervisor.restart_with={ paper-exchange = ["strategy"] }',
]
# Who restarts with whom, read from SETS exactly as the supervisor will read it.
RESTART_WITH = config_mod.load(None, SETS).supervisor.restart_with
START_TIMEOUT_S = 30.0
RECOVER_TIMEOUT_S = 30.0
GONE_TIMEOUT_S = 5.0
QUIET_TIMEOUT_S = 10.0
VIEW_TIMEOUT_S = 10.0
CTL_TIMEOUT_S = 3.0
GAP_S = (0.05, 0.6)  # trading time before each kill, uniform
TOL = 1e-6  # the view rounds money to 6 decimals


# --------------------------------------------------------------------- ledger
def view_diff(state: dict[str, Any], led: LedgerState) -> list[str]:
    """Differences between the state-publisher's view and the ledger's replay ([] = equal)."""
    out = []
    acct = led.acct
    view_pos = state.get("positions") or {}
    want = {s: p for s, p in acct.positions.items() if p.qty != 0}
    for sym in sorted(set(view_pos) | set(want)):
        v, p = view_pos.get(sym), want.get(sym)
        if v is None or p is None:
            out.append(f"positions[{sym}]: view qty {v and v['qty']}, ledger qty {p and p.qty}")
            continue
        if v["qty"] != p.qty:
            out.append(f"positions[{sym}].qty: view {v['qty']}, ledger {p.qty}")
        for k in ("avg_price", "realized", "fees"):
            if not close_enough(v[k], getattr(p, k), TOL):
                out.append(f"positions[{sym}].{k}: view {v[k]}, ledger {getattr(p, k)}")
    a = state.get("account") or {}
    if not a.get("known"):
        out.append("account: not known to the view")
    else:
        for k, want_v in (("cash", acct.cash), ("realized", acct.realized), ("fees", acct.fees)):
            if not close_enough(a[k], want_v, TOL):
                out.append(f"account.{k}: view {a[k]}, ledger {want_v}")
    view_open = {int(k) for k in (state.get("orders") or {})}
    if view_open != led.open_ids:
        out.append(f"open orders: view {sorted(view_open)}, ledger {sorted(led.open_ids)}")
    return out


# ---------------------------------------------------------------------- chaos
@dataclass
class Kill:
    n: int
    actor: str
    sig: str
    pid: int
    recover_s: float | None = None
    check_s: tuple[float, float] = (0.0, 0.0)
    violations: list[str] = field(default_factory=list)


class Interrupted(Exception):
    pass


class Chaos:
    def __init__(self, run_dir: str, seed: int, out: Any = sys.stdout):
        self.run_dir = run_dir
        self.rng = random.Random(seed)
        self.seed = seed
        self.out = out
        self.sup: subprocess.Popen | None = None
        self.ctx: zmq.Context | None = None  # made after the supervisor is spawned (preexec_fn needs no threads)
        self.exec: Port | None = None
        self.published: dict[int, Fill] = {}
        self.bad_exec = 0
        self.kills: list[Kill] = []
        self.violations: list[str] = []
        self.unplanned: list[str] = []
        self.checked = 0
        self.ledger_fills = 0
        self.unseen = 0  # ledger fills never seen on exec
        self._reported: set[str] = set()
        self.stopped: list[tuple[int, int]] = []  # (pid, starttime) we SIGSTOPped, for SIGCONT on abort
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------ waiting
    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` on the exec socket, recording every Fill that arrives."""
        if self.exec is None:
            if timeout > 0:
                time.sleep(min(timeout, 0.02))  # nothing to wait on before endpoints.json exists
            return
        sock = self.exec.sock
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if not sock.poll(max(0, int(left * 1000))):
                return
            while True:
                try:
                    rcv = self.exec.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ProtocolError:
                    self.bad_exec += 1
                    continue
                f = rcv.msg
                if isinstance(f, Fill):
                    old = self.published.get(f.fill_id)
                    if old is not None and old != f:
                        self.violations.append(f"fill_id {f.fill_id} published twice with different contents: "
                                               f"{old} / {f}")
                    self.published[f.fill_id] = f
            if time.monotonic() >= deadline:
                return

    def until(self, pred: Callable[[], Any], timeout: float) -> Any:
        """Poll ``pred`` (recording fills in between) until truthy; None when the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() >= deadline:
                return None
            self.pump(0.02)

    def sup_alive(self) -> bool:
        return self.sup is not None and self.sup.poll() is None

    def status(self) -> dict | None:
        if not self.sup_alive():
            raise Interrupted(f"the supervisor exited with code {self.sup.returncode if self.sup else None}")
        return testkit.status(self.run_dir, CTL_TIMEOUT_S)

    def ctl(self, cmd: str, timeout: float) -> str:
        """Send a ctl command until it succeeds; returns '' or the last error."""
        err = ""

        def attempt() -> bool:
            nonlocal err
            try:
                rep = request(self.run_dir, cmd, timeout=CTL_TIMEOUT_S)
            except RuntimeError as e:
                err = str(e)
                return False
            err = rep.error
            return rep.ok
        return "" if self.until(attempt, timeout) else (err or "timeout")

    def running_status(self) -> dict | None:
        st = self.status()
        return st if testkit.is_running(st) else None

    # ------------------------------------------------------------- start
    def start(self) -> None:
        log = open(os.path.join(self.run_dir, "supervisor.out"), "ab")
        # Not waiting for it to run: the exec subscription must come first (below).
        # SIGTERM on our death: the supervisor then stops the system by itself.
        self.sup = testkit.start_supervisor(self.run_dir, testkit.DEFAULT_CONFIG, SETS, wait_running=False,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            preexec_fn=lambda: set_pdeathsig(signal.SIGTERM))
        log.close()
        self.say(f"chaos: seed {self.seed}, run dir {self.run_dir}, supervisor pid {self.sup.pid}")
        eps = os.path.join(self.run_dir, "endpoints.json")
        if not self.until(lambda: os.path.exists(eps) or not self.sup_alive(), START_TIMEOUT_S) \
                or not self.sup_alive():
            raise Interrupted(f"the supervisor did not publish its endpoints (see {self.run_dir}/supervisor.out)")
        # Subscribed before any actor runs: the exchange publishes nothing before RUN.
        self.ctx = zmq.Context()
        self.exec = open_port(self.ctx, Endpoints.from_run_dir(self.run_dir), "exec", bind=False,
                              stamper=Stamper("chaos", run=""), subscribe=[b"exec.fill."])
        if not self.until(self.running_status, START_TIMEOUT_S):
            raise Interrupted("the system did not reach running")
        # Let trading begin before the first kill.
        if not self.until(lambda: self.published, START_TIMEOUT_S):
            raise Interrupted("no fill was published within "
                              f"{START_TIMEOUT_S:g}s of start: nothing to check")

    # ------------------------------------------------------------- one round
    def round(self, n: int) -> None:
        self.pump(self.rng.uniform(*GAP_S))  # a random moment in the middle of trading
        st = self.until(self.running_status, RECOVER_TIMEOUT_S)
        if st is None:
            raise Interrupted("the system is not running before a kill")
        actor = self.rng.choice(ACTORS)
        sig = self.rng.choice([signal.SIGKILL, signal.SIGSTOP])
        pids = {a: st["actors"][a]["pid"] for a in ACTORS}
        starts = {a: (proc_stat(p) or ("", 0, 0))[2] for a, p in pids.items()}
        affected = [actor, *RESTART_WITH.get(actor, [])]
        k = Kill(n, actor, sig.name, pids[actor])
        before = len(self.violations)
        t0 = time.monotonic()
        try:
            os.kill(pids[actor], sig)
        except ProcessLookupError:  # restarted by the supervisor since the status: pick again next round
            self.say(f"kill {n:3d}: {actor} pid {pids[actor]} already gone, skipped")
            return
        self.kills.append(k)
        if sig == signal.SIGSTOP:
            self.stopped.append((pids[actor], starts[actor]))

        def recovered() -> dict | None:
            s = self.status()
            if not testkit.is_running(s):
                return None
            if any(s["actors"][a]["pid"] == pids[a] for a in affected):
                return None
            return s
        st2 = self.until(recovered, RECOVER_TIMEOUT_S)
        if st2 is None:
            self.violations.append(f"kill {n} ({sig.name} {actor} pid {pids[actor]}): not every actor running "
                                   f"with new pids for {affected} within {RECOVER_TIMEOUT_S:g}s")
            raise Interrupted("no recovery")
        k.recover_s = time.monotonic() - t0
        self.stopped = []
        for a in ACTORS:
            if a not in affected and st2["actors"][a]["pid"] != pids[a]:
                self.unplanned.append(f"kill {n}: {a} restarted (pid {pids[a]} -> {st2['actors'][a]['pid']}: "
                                      f"{self.exit_reason(pids[a])})")
        t1 = time.monotonic()
        if sig == signal.SIGSTOP:
            hangs = self.log_events(pids[actor], "actor hung")
            if hangs != 1:
                self.violations.append(f"kill {n}: the supervisor logged the hang of SIGSTOPped {actor} pid "
                                       f"{pids[actor]} {hangs} times (expected once: detected, killed, restarted)")
        self.check_processes(n, [(pids[a], starts[a]) for a in affected])
        t2 = time.monotonic()
        self.check_state(n)
        k.check_s = (t2 - t1, time.monotonic() - t2)
        k.violations = self.violations[before:]
        self.say(f"kill {n:3d}: {sig.name:7} {actor:15} pid {pids[actor]:>7} -> recovered in "
                 f"{k.recover_s * 1000:6.0f} ms; checks {(k.check_s[0] + k.check_s[1]) * 1000:4.0f} ms; "
                 f"fills published {len(self.published)}, ledger {self.ledger_fills}; "
                 f"{'OK' if not k.violations else 'VIOLATIONS: ' + '; '.join(k.violations)}")

    def supervisor_log(self, pid: int) -> list[dict[str, Any]]:
        """The supervisor's log events about ``pid``."""
        return [e for e in testkit.log_events(self.run_dir) if e.get("pid") == pid]

    def log_events(self, pid: int, prefix: str) -> int:
        return sum(1 for e in self.supervisor_log(pid) if str(e.get("event", "")).startswith(prefix))

    def exit_reason(self, pid: int) -> str:
        """Why the supervisor says ``pid`` ended (its log), for reporting unplanned restarts."""
        why = []
        for e in self.supervisor_log(pid):
            if str(e.get("event", "")).startswith("actor hung"):
                why.append(f"hung, silent {e.get('silent_s')}s")
            elif e.get("event") == "actor exited":
                why.append(str(e.get("how", "?")) + (" (orphan guard)" if e.get("how") == "exit code 3" else ""))
        return ", ".join(why) or "no reason logged"

    def check_processes(self, n: int, killed: list[tuple[int, int]]) -> None:
        if not self.until(lambda: not any(same_process(p, t) for p, t in killed), GONE_TIMEOUT_S):
            left = [(p, (proc_stat(p) or ("?",))[0]) for p, t in killed if same_process(p, t)]
            self.violations.append(f"kill {n}: killed processes still exist (pid, state): {left}")
        assert self.sup is not None
        sup_pid = self.sup.pid
        if not self.until(lambda: "Z" not in children(sup_pid).values(), GONE_TIMEOUT_S):
            self.violations.append(f"kill {n}: zombie children of the supervisor: "
                                   f"{[p for p, s in children(sup_pid).items() if s == 'Z']}")
        seen: dict[str, Any] = {}

        def consistent() -> bool:
            s = self.status()
            if not testkit.is_running(s):
                return False
            reported = {a["pid"] for a in s["actors"].values()}
            live = {p for p, (state, _) in actor_processes(self.run_dir).items() if state != "Z"}
            kids = {p for p, state in children(sup_pid).items() if state != "Z"}
            seen.update(reported=sorted(reported), actor_processes=sorted(live), supervisor_children=sorted(kids))
            return reported == live == kids and len(reported) == len(ACTORS)
        if not self.until(consistent, GONE_TIMEOUT_S):
            self.violations.append(f"kill {n}: actor processes differ from what the supervisor reports: {seen}")

    def check_state(self, n: int) -> None:
        """Ledger invariants, published fills, view == ledger; with trading paused (see the docstring)."""
        err = self.ctl("pause", RECOVER_TIMEOUT_S)
        if err:
            self.violations.append(f"kill {n}: ctl pause failed: {err}")
            return
        try:
            path = os.path.join(self.run_dir, "ledger.sqlite")
            scratch: list[str] = []
            quiet = self.until(lambda: read_ledger(path, scratch).open_orders == 0, QUIET_TIMEOUT_S)
            if not quiet:
                self.violations.append(f"kill {n}: the ledger still has open orders {QUIET_TIMEOUT_S:g}s after pause")
            led = self.check_ledger(path, f"after kill {n}: ")
            self.check_view(n, led)
            self.check_strategy(n, led)
        finally:
            err = self.ctl("resume", RECOVER_TIMEOUT_S)
            if err:
                self.violations.append(f"kill {n}: ctl resume failed: {err}")

    def check_view(self, n: int, led: LedgerState) -> None:
        client = CloneClient(self.run_dir, name="chaos")
        try:
            diff: list[str] = ["no snapshot"]

            def equal() -> bool:
                nonlocal diff
                client.step(0.02)
                if client.state is not None:
                    diff = view_diff(client.state, led)
                return not diff
            if not self.until(equal, VIEW_TIMEOUT_S):
                self.violations.append(f"kill {n}: state view != ledger after {VIEW_TIMEOUT_S:g}s: {'; '.join(diff)}")
        finally:
            client.close()

    def check_strategy(self, n: int, led: LedgerState) -> None:
        """The strategy's own idea of its positions (from its heartbeat status) equals the ledger:
        a strategy that believes a wrong position trades it twice."""
        want = led.held()
        seen: dict[str, Any] = {}

        def equal() -> bool:
            st = self.status()
            info = st["actors"]["strategy"]["status"] if st else {}
            seen.update(positions=info.get("positions"), open_orders=info.get("open_orders"))
            return info.get("positions") == want and info.get("open_orders") == len(led.open_ids)
        if not self.until(equal, VIEW_TIMEOUT_S):
            self.violations.append(f"kill {n}: the strategy's positions/open orders {seen} != ledger {want}, "
                                   f"{len(led.open_ids)} open")

    # ------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Always leaves nothing running: ctl shutdown, wait, SIGTERM, SIGKILL."""
        for pid, t in self.stopped:  # a stopped actor would hold up the ordered shutdown
            if same_process(pid, t):
                os.kill(pid, signal.SIGCONT)
        self.stopped = []
        if self.sup is not None and self.sup.poll() is None:
            testkit.shutdown(self.sup, self.run_dir, timeout=30, say=lambda m: self.say(f"chaos: {m}"))
            self.pump(0)  # fills still queued in our socket
        if self.sup is not None and self.sup.returncode not in (0, None):
            self.violations.append(f"supervisor exited with code {self.sup.returncode} (see "
                                   f"{self.run_dir}/supervisor.out)")
        left = self.until(lambda: not actor_processes(self.run_dir), GONE_TIMEOUT_S) is None
        if left:
            orphans = actor_processes(self.run_dir)
            self.violations.append(f"actor processes left after the supervisor exited: {sorted(orphans)}")
            for pid in orphans:  # started (indirectly) by us: ours to end
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.exec is not None:
            self.exec.close()
            self.exec = None
        if self.ctx is not None and not self.ctx.closed:
            self.ctx.term()

    def check_ledger(self, path: str, where: str) -> LedgerState:
        """Ledger invariants and published fills; a violation is reported once, where first seen."""
        self.pump(0)
        found: list[str] = []
        led = read_ledger(path, found)
        self.ledger_fills = len(led.fills)
        self.checked = check_published(self.published, led, found)
        self.unseen = len(set(led.fills) - set(self.published))
        for v in found:
            if v not in self._reported:
                self._reported.add(v)
                self.violations.append(where + v)
        return led

    def final_check(self) -> None:
        path = os.path.join(self.run_dir, "ledger.sqlite")
        if os.path.exists(path):
            self.check_ledger(path, "after shutdown: ")

    # ------------------------------------------------------------- summary
    def summary(self, interrupted: str = "") -> dict[str, Any]:
        rec = [k.recover_s for k in self.kills if k.recover_s is not None]
        by_sig: dict[str, int] = {}
        by_actor: dict[str, int] = {}
        for k in self.kills:
            by_sig[k.sig] = by_sig.get(k.sig, 0) + 1
            by_actor[k.actor] = by_actor.get(k.actor, 0) + 1
        return {
            "seed": self.seed, "run_dir": self.run_dir, "duration_s": round(time.monotonic() - self.t0, 1),
            "kills": len(self.kills), "by_signal": by_sig, "by_actor": by_actor, "recoveries": len(rec),
            "recover_p50_ms": round(statistics.median(rec) * 1000, 1) if rec else None,
            "recover_max_ms": round(max(rec) * 1000, 1) if rec else None,
            "fills_published": len(self.published), "fills_checked": self.checked,
            "ledger_fills": self.ledger_fills, "bad_exec_messages": self.bad_exec,
            "ledger_fills_not_seen_published": self.unseen,
            "unplanned_restarts": self.unplanned, "violations": self.violations, "interrupted": interrupted,
        }

    def print_summary(self, s: dict[str, Any]) -> None:
        p = self.say
        p("")
        p(f"chaos summary (seed {s['seed']}, {s['duration_s']} s)")
        p(f"  kills        {s['kills']}  by signal {s['by_signal']}")
        p(f"               by actor {s['by_actor']}")
        p(f"  recoveries   {s['recoveries']}  time to recover p50 {s['recover_p50_ms']} ms, max "
          f"{s['recover_max_ms']} ms")
        p(f"  fills        published {s['fills_published']}, checked against the ledger {s['fills_checked']}, "
          f"in the ledger {s['ledger_fills']} ({s['ledger_fills_not_seen_published']} committed but not seen on "
          f"exec: lost with a killed exchange's send queue, or sent while our SUB reconnected)")
        if s["unplanned_restarts"]:
            p(f"  unplanned restarts ({len(s['unplanned_restarts'])}): {'; '.join(s['unplanned_restarts'])}")
        if s["interrupted"]:
            p(f"  stopped early: {s['interrupted']}")
        p(f"  violations   {len(s['violations'])}")
        for v in s["violations"]:
            p(f"    - {v}")


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chaos.py", description="kill actors at random and check nothing is lost")
    ap.add_argument("--minutes", type=float, default=None, help="run this long (default 1 unless --kills)")
    ap.add_argument("--kills", type=int, default=None, help="stop after this many kills")
    ap.add_argument("--seed", type=int, default=1, help="RNG seed: which actor, which signal, when (default 1)")
    ap.add_argument("--run-dir", default=None, help="run directory (default: a fresh temp dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp run directory")
    ap.add_argument("--summary-json", default=None, help="also write the summary as JSON to this file")
    args = ap.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0 or args.kills is not None and args.kills <= 0:
        ap.error("--minutes and --kills must be > 0")
    minutes = args.minutes if args.minutes is not None or args.kills is not None else 1.0
    if args.run_dir:
        run_dir = os.path.abspath(args.run_dir)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
    else:
        run_dir = tempfile.mkdtemp(prefix="chaos-", dir="/tmp")  # short: ipc paths must fit sun_path
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Python leaves SIGINT ignored when it was ignored at exec (a `cmd &` in a
    # non-interactive shell, nohup): Ctrl+C / kill -INT must stop us in order anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    chaos = Chaos(run_dir, args.seed)
    interrupted = ""
    try:
        chaos.start()
        end = time.monotonic() + minutes * 60 if minutes is not None else math.inf
        n = 0
        while (args.kills is None or len(chaos.kills) < args.kills) and time.monotonic() < end:
            n += 1
            chaos.round(n)
    except Interrupted as e:
        interrupted = str(e)
        chaos.violations.append(f"stopped early: {e}")
    except KeyboardInterrupt as e:
        interrupted = f"interrupted ({e or 'SIGINT'})"
    except Exception as e:  # a bug here must still shut the system down and say what happened
        traceback.print_exc()
        interrupted = f"chaos.py failed: {type(e).__name__}: {e}"
        chaos.violations.append(interrupted)
    finally:
        try:
            chaos.shutdown()
        except KeyboardInterrupt:
            chaos.shutdown()
    chaos.final_check()
    s = chaos.summary(interrupted)
    chaos.print_summary(s)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(s, f, indent=2)
    if s["violations"]:
        chaos.say(f"chaos: run directory kept: {run_dir}")
        return 1
    if not (args.keep or args.run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

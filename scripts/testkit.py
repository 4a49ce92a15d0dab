"""Drive a real paperbus system from outside, for the tests and for the scripts that
measure or torture it (bench.py, chaos.py, stall.py): start a supervisor, wait until it
runs, ask its status, read its processes in /proc, stop it, check its ledger.

It lives in ``scripts`` (an installed package, like ``structlog.testing`` inside
structlog) and not under ``tests/``: the scripts must never import the test suite, and
someone testing their own strategy or actor against an installed paperbus can use it too.
It is a client of the running system, as ctl.py is (whose ``request`` it uses), and it
replays the ledger through ``actors.accounting``: so not in ``bus``, the transport layer,
which imports no actor.

Waiting is always a poll with a deadline (``wait_for``), never a sleep that hopes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from actors.accounting import Account  # noqa: E402
from bus.messages import Fill  # noqa: E402
from scripts.ctl import request  # noqa: E402

PY = sys.executable
DEFAULT_CONFIG = "config/default.toml"
BACKTEST_CONFIG = "config/backtest.toml"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.01,
             step: Callable[[], Any] | None = None) -> Any:
    """Poll ``pred`` until truthy (returned) or the deadline passes (AssertionError naming ``what``).

    ``step``: what to do between polls instead of sleeping ``interval`` (e.g. pump a socket
    with a short timeout: the wait then is on the socket)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if step is not None:
            step()
        else:
            # Nothing in particular to block on: callers that can wait on a socket or a pipe do so instead.
            time.sleep(interval)


# ---------------------------------------------------------------------- /proc
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) from /proc/<pid>/stat, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return None
    rest = st[st.rindex(b")") + 2:].split()  # after "pid (comm) ": comm may hold spaces and parens
    return rest[0].decode(), int(rest[1]), int(rest[19])


def pid_state(pid: int) -> str | None:
    """The kernel's one-letter state (R, S, D, T, Z...), or None when there is no such process."""
    st = proc_stat(pid)
    return st[0] if st is not None else None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return pid_state(pid) not in (None, "Z")


def same_process(pid: int, starttime: int) -> bool:
    """True while ``pid`` is still the process once seen with ``starttime`` (pids are reused)."""
    st = proc_stat(pid)
    return st is not None and st[2] == starttime


def rss_kb(pid: int, key: str = "VmRSS") -> int | None:
    """A memory figure of /proc/<pid>/status in kB (VmRSS now, VmHWM the peak); None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(ppid: int) -> dict[int, str]:
    """Children of ``ppid``: pid -> state (zombies included)."""
    out = {}
    for pid in _pids():
        st = proc_stat(pid)
        if st is not None and st[1] == ppid:
            out[pid] = st[0]
    return out


def pids_with_env(name: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has ``name=value``: children inherit it,
    so this finds every descendant of a process started with it, even one reparented to init."""
    needle = f"{name}={value}".encode()
    out = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if pid_alive(pid):
            out.append(pid)
    return out


def actor_processes(run_dir: str) -> dict[int, tuple[str, int]]:
    """Every actor process of this run directory (``python -m MODULE --run-dir RUN_DIR``):
    pid -> (state, ppid)."""
    out = {}
    want = os.fsencode(run_dir)
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"-m" not in argv or b"--run-dir" not in argv:
            continue
        j = argv.index(b"--run-dir")
        if argv.index(b"-m") + 1 < len(argv) and j + 1 < len(argv) and argv[j + 1] == want:
            st = proc_stat(pid)
            if st is not None:
                out[pid] = (st[0], st[1])
    return out


def wait_gone(pids: list[int], timeout: float) -> float:
    """Wait until none of ``pids`` is alive (zombies count as gone); returns the seconds it took."""
    t0 = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout, f"pids {pids} gone", interval=0.001)
    return time.monotonic() - t0


# ----------------------------------------------------------------- supervisor
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process we start: this checkout first on the import path, and
    not marked as a child of some other supervisor (the orphan guard reads that)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PAPERBUS_SUPERVISOR_PID", None)
    if extra:
        env.update(extra)
    return env


def spawn(args: list[str], *, env: dict[str, str] | None = None, new_session: bool = True,
          **popen: Any) -> subprocess.Popen:
    """Start a process from the project directory, in its own session by default (a
    terminal's Ctrl+C then reaches only us, and we stop the system in order)."""
    return subprocess.Popen(args, env=child_env(env), cwd=popen.pop("cwd", ROOT), start_new_session=new_session,
                            **popen)


def supervisor_args(run_dir: str, config: str | None = DEFAULT_CONFIG, sets: list[str] | tuple[str, ...] = ()
                    ) -> list[str]:
    """The supervisor's command line: ``--config`` (None: built-in defaults), ``--set`` each of ``sets``."""
    args = [PY, "supervisor.py", "--run-dir", run_dir]
    if config is not None:
        args += ["--config", config]
    for s in sets:
        args += ["--set", s]
    return args


def start_supervisor(run_dir: str, config: str | None = DEFAULT_CONFIG, sets: list[str] | tuple[str, ...] = (),
                     env: dict[str, str] | None = None, *, spawn: Callable[..., subprocess.Popen] = spawn,
                     wait_running: bool = True, timeout: float = 30.0, **popen: Any) -> subprocess.Popen:
    """Start ``supervisor.py`` and (by default) wait until it and every actor run.

    ``spawn`` makes the process (the tests pass their ``procs.spawn``, which tags it for
    teardown); ``popen`` goes to it (stdout, stderr, preexec_fn...). When it does not
    reach running in time it is shut down before the error is raised: the caller never
    held it, so nobody else would."""
    p = spawn(supervisor_args(run_dir, config, sets), env=env, **popen)
    if wait_running:
        try:
            wait_until_running(p, run_dir, timeout)
        except BaseException:
            shutdown(p, run_dir, timeout=10)
            raise
    return p


def wait_until_running(proc: subprocess.Popen, run_dir: str, timeout: float = 30.0) -> dict:
    """Poll until the supervisor and every actor are running; returns that status. A
    supervisor that exits first is a RuntimeError with its exit code and stderr (if piped)."""
    st = wait_for(lambda: proc.poll() is not None or running_status(run_dir), timeout, "supervisor running")
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else "(stderr not captured)"
        raise RuntimeError(f"supervisor exited {proc.returncode} before running: {err}")
    return st


def run_backtest(run_dir: str, sets: list[str] | tuple[str, ...] = (), config: str = BACKTEST_CONFIG, *,
                 spawn: Callable[..., subprocess.Popen] = spawn, timeout: float = 100.0,
                 env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a backtest to its end: (exit code, stdout, stderr). Results are in ``<run_dir>/latest``."""
    p = spawn(supervisor_args(run_dir, config, sets), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def bars_and_fills(ctx: Any, run_dir: str) -> Any:
    """A SUB socket on the run's md.bar.* and exec.fill.* streams (what a latency or
    throughput measurement counts); the caller closes it."""
    import zmq

    from bus.sockets import Endpoints

    eps = Endpoints.from_run_dir(run_dir)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for t in (b"md.bar.", b"exec.fill."):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(eps["md"])
    sub.connect(eps["exec"])
    return sub


def status(run_dir: str, timeout: float = 2.0) -> dict | None:
    """The supervisor's ``ctl status`` data, or None when it does not answer (yet) in time."""
    if not os.path.exists(os.path.join(run_dir, "endpoints.json")):
        return None
    try:
        return request(run_dir, "status", timeout=timeout).data
    except RuntimeError:
        return None


def status_now(run_dir: str, timeout: float = 10.0) -> dict:
    """The status, asking again if one request times out on a loaded machine."""
    return wait_for(lambda: status(run_dir), timeout, "a status reply")


def field(run_dir: str, *keys: str, default: Any = None) -> Any:
    """One value of the status, or ``default`` when there is no reply or no such key yet:
    safe inside wait_for."""
    d: Any = status(run_dir)
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def is_running(st: dict | None) -> bool:
    """The supervisor is running and so is every actor, each with a pid."""
    return bool(st) and st["phase"] == "running" and all(
        a["state"] == "running" and a["pid"] for a in st["actors"].values())


def running_status(run_dir: str) -> dict | None:
    st = status(run_dir)
    return st if is_running(st) else None


def phase(run_dir: str) -> str | None:
    """"running" once the supervisor and every actor run; else the supervisor's phase, or None."""
    st = status(run_dir)
    if st is None:
        return None
    return "running" if is_running(st) else st["phase"]


def actor_pids(run_dir: str) -> dict[str, int]:
    """Actor name -> pid, from the status ({} without a reply)."""
    return {n: a["pid"] for n, a in (status(run_dir) or {}).get("actors", {}).items()}


def log_events(run_dir: str, process: str = "supervisor") -> list[dict]:
    """The events of ``logs/<process>.jsonl`` so far ([] before it exists); a line still
    being written (no newline yet) is left for the next read."""
    try:
        with open(os.path.join(run_dir, "logs", f"{process}.jsonl")) as f:
            return [json.loads(line) for line in f if line.endswith("\n") and line.strip()]
    except FileNotFoundError:
        return []


def shutdown(proc: subprocess.Popen, run_dir: str, timeout: float = 30.0,
             say: Callable[[str], None] = lambda s: None) -> int | None:
    """Stop a supervisor in order (``ctl shutdown``), then by SIGTERM, then SIGKILL, each
    given ``timeout`` seconds. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        request(run_dir, "shutdown", timeout=3.0)
    except RuntimeError as e:
        say(f"ctl shutdown failed ({e}); sending SIGTERM")
        proc.terminate()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            say(f"supervisor still running, sending {sig.name}")
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


# --------------------------------------------------------------------- ledger
# The ledger's invariants, checked one way by chaos.py and by the crash and disk tests.
# ``read_ledger`` opens ledger.sqlite read-only in one read transaction (a consistent
# snapshot even while the exchange writes) and reports every broken invariant as a
# sentence: integrity_check ok; each fill's position/realized and the positions table
# equal a replay of the fills through actors.accounting.Account; per order sum(fill qty)
# == filled <= qty, status "filled" exactly when filled == qty, every fill matches its
# order; no cl_id used twice. ``check_published``: every Fill seen on exec is in the
# ledger, field for field.
OPEN = ("new", "partially-filled")  # actors/exchange_core.py OPEN
FILL_FIELDS = ("order_id", "cl_id", "symbol", "side", "qty", "price", "fee")


@dataclass
class LedgerState:
    fills: dict[int, sqlite3.Row]  # fill_id -> row, in fill_id order
    orders: dict[int, sqlite3.Row]  # order_id -> row
    acct: Account  # the replay of every fill
    open_ids: set[int]  # order_ids still open (new, partially-filled)
    runs: list[dict[str, Any]]  # runs table: run_id, previous_run_id, in order

    @property
    def open_orders(self) -> int:
        return len(self.open_ids)

    def held(self) -> dict[str, int]:
        """Non-flat positions of the replay: symbol -> qty."""
        return {s: p.qty for s, p in self.acct.positions.items() if p.qty}


def close_enough(a: float, b: float, tol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=tol)


def read_ledger(path: str, violations: list[str]) -> LedgerState:
    """Check the ledger's invariants (appending to ``violations``) and return its replay."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("BEGIN")  # one read transaction: a consistent snapshot of every table
        ic = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if ic != ["ok"]:
            violations.append(f"ledger integrity_check: {ic[:5]}")
        initial = float(db.execute("SELECT value FROM meta WHERE key = 'initial_cash'").fetchone()[0])
        orders = {r["order_id"]: r for r in db.execute("SELECT * FROM orders")}
        fills = {r["fill_id"]: r for r in db.execute("SELECT * FROM fills ORDER BY fill_id")}
        table = {r["symbol"]: r for r in db.execute("SELECT * FROM positions")}
        dups = db.execute("SELECT cl_id, COUNT(*) FROM orders GROUP BY cl_id HAVING COUNT(*) > 1").fetchall()
        runs = [dict(r) for r in db.execute("SELECT run_id, previous_run_id FROM runs ORDER BY id")]
        db.execute("COMMIT")
    finally:
        db.close()
    for cl_id, n in dups:
        violations.append(f"ledger: cl_id {cl_id!r} used by {n} orders")
    acct = Account(initial)
    per_order: dict[int, int] = {}
    for fid, f in fills.items():
        res = acct.apply_fill(f["symbol"], f["side"], f["qty"], f["price"], f["fee"], f["ts"], f["multiplier"])
        if res.position != f["position"] or not close_enough(res.realized, f["realized"]):
            violations.append(f"ledger: fill {fid} records position {f['position']} realized {f['realized']}, "
                              f"replay gives {res.position} {res.realized}")
        per_order[f["order_id"]] = per_order.get(f["order_id"], 0) + f["qty"]
        o = orders.get(f["order_id"])
        if o is None:
            violations.append(f"ledger: fill {fid} references missing order {f['order_id']}")
        elif (o["cl_id"], o["symbol"], o["side"]) != (f["cl_id"], f["symbol"], f["side"]):
            violations.append(f"ledger: fill {fid} ({f['cl_id']} {f['symbol']} {f['side']}) does not match order "
                              f"{o['order_id']} ({o['cl_id']} {o['symbol']} {o['side']})")
    for oid, o in orders.items():
        got = per_order.get(oid, 0)
        if got != o["filled"] or o["filled"] > o["qty"]:
            violations.append(f"ledger: order {oid} ({o['cl_id']}) qty {o['qty']} filled {o['filled']}, "
                              f"its fills sum to {got}")
        if (o["status"] == "filled") != (o["filled"] == o["qty"]):
            violations.append(f"ledger: order {oid} ({o['cl_id']}) has status {o['status']} with "
                              f"{o['filled']} of {o['qty']} filled")
    for sym in sorted(set(table) | set(acct.positions)):
        t, p = table.get(sym), acct.positions.get(sym)
        if t is None or p is None:
            violations.append(f"ledger: positions table has {sym} {'missing' if t is None else 'without fills'}")
            continue
        if t["qty"] != p.qty or not all(close_enough(t[k], getattr(p, k)) for k in ("avg_price", "realized", "fees")):
            violations.append(f"ledger: positions[{sym}] = qty {t['qty']} avg {t['avg_price']} realized "
                              f"{t['realized']} fees {t['fees']}; replay of fills gives qty {p.qty} avg "
                              f"{p.avg_price} realized {p.realized} fees {p.fees}")
    open_ids = {oid for oid, o in orders.items() if o["status"] in OPEN}
    return LedgerState(fills, orders, acct, open_ids, runs)


def check_published(published: dict[int, Fill], led: LedgerState, violations: list[str]) -> int:
    """Every fill seen on exec is in the ledger, field for field. Returns how many were checked."""
    for fid, f in published.items():
        r = led.fills.get(fid)
        if r is None:
            violations.append(f"published fill {fid} ({f.symbol} {f.side} {f.qty} @ {f.price}) is not in the ledger")
            continue
        bad = [k for k in FILL_FIELDS if getattr(f, k) != r[k]]
        if bad:
            violations.append(f"published fill {fid} differs from the ledger in {', '.join(bad)}: "
                              f"{[getattr(f, k) for k in bad]} vs {[r[k] for k in bad]}")
    return len(published)


# ------------------------------------------------------------------ dashboard
def start_dashboard(run_dir: str, args: list[str] | tuple[str, ...] = (), *,
                    spawn: Callable[..., subprocess.Popen] = spawn, timeout: float = 20.0
                    ) -> tuple[subprocess.Popen, str]:
    """Start ``scripts/dashboard.py`` on a free port: (its process, the URL it printed).

    The URL is the first line it prints that starts with ``dashboard: http`` (after the
    token line on a non-loopback bind); stdout is a pipe, stderr goes to ours."""
    import select

    # Unbuffered: a line read must not pull the next one into a buffer select() cannot see.
    p = spawn([PY, "scripts/dashboard.py", "--run-dir", run_dir, "--port", "0", *args], stdout=subprocess.PIPE,
              bufsize=0)
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 0.1)[0]:
            line = p.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("dashboard: http"):
                return p, line.split()[1]
        elif p.poll() is not None:
            break
    stop_dashboard(p)
    raise RuntimeError(f"dashboard did not print its URL within {timeout}s (exit {p.poll()}): {''.join(lines)}")


def stop_dashboard(p: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM (uvicorn stops in order), then SIGKILL."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p.stdout:
        p.stdout.close()
    return p.returncode

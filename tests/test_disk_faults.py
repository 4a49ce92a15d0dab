"""Disk trouble: a run directory that fills up, turns read-only or refuses a write.

The whole system trades on the synthetic feed; then the disk breaks. Expected:
the supervisor exits 1 naming the actor and the disk error, after an ordered
shutdown (nothing restarted, no process left); the ledger passes
integrity_check, its positions equal a replay of its fills, and every fill
published on the exec stream is in it. Once the disk is fixed, a new supervisor
on the same run directory resumes from that ledger and trades on.

Real faults where the machine allows them (root, mount): a tmpfs filled to the
last byte (ENOSPC), an ext4 image that the kernel turns read-only on an error
(errors=remount-ro, as a failing disk does). Everywhere: the PAPERBUS_FAULT
test hook (bus/faults.py) fails a chosen ledger commit.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile

import pytest
import zmq

import config as config_mod
from actors.ledger import Ledger
from bus import faults
from bus import log as logmod
from bus.codec import Stamper
from bus.faults import DiskError
from bus.fileio import atomic_write
from bus.messages import ActorEvent, Fill, OrderInfo, OrderUpdate
from bus.sockets import Endpoints, open_port
from scripts.ctl import request
from tests.harness import PY, wait_for
from scripts.testkit import LedgerState, check_published, read_ledger
from tests.sup_util import field, log_events, pid_alive, start_supervisor, status_now

pytestmark = pytest.mark.timeout(90)

DEFAULT = "config/default.toml"
TRADE = ["strategy.params={ fast = 2, slow = 4, qty = 10 }", "exchange.fill_on=close", "market_data.rate_hz=50"]
EXIT_DEADLINE_S = 30  # fault -> supervisor gone (ordered shutdown of four actors on a loaded machine)


# --------------------------------------------------------------------- helpers
def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def umount(d: str) -> None:
    if os.path.ismount(d) and run("umount", d).returncode:
        run("umount", "-l", d)  # still busy after a failure: detach it anyway


class Tap:
    """Subscribes to the exchange's exec stream and the supervisor's actor events before the
    system starts, so it sees every fill and every restart."""

    def __init__(self, run_dir: str):
        self.ctx = zmq.Context()
        eps = Endpoints.from_config(run_dir, config_mod.load(DEFAULT).bus)
        st = Stamper("test", "")
        self.exec = open_port(self.ctx, eps, "exec", bind=False, stamper=st, subscribe=[b"exec.", b"acct."])
        self.events = open_port(self.ctx, eps, "events", bind=False, stamper=st, subscribe=[b"events."])
        self.seqs: list[int] = []
        self.fills: list[Fill] = []
        self.filled_orders: set[int] = set()
        self.actor_events: list[ActorEvent] = []

    def drain(self) -> None:
        """Take what was published; the publishers are gone, so a short quiet poll means the end."""
        for port in (self.exec, self.events):
            while port.sock.poll(300):
                while True:
                    try:
                        rcv = port.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    m = rcv.msg
                    if isinstance(m, ActorEvent):
                        self.actor_events.append(m)
                        continue
                    self.seqs.append(rcv.env.seq)
                    if isinstance(m, Fill):
                        self.fills.append(m)
                    elif isinstance(m, OrderUpdate) and m.order.status == "filled":
                        self.filled_orders.add(m.order.order_id)

    def close(self) -> None:
        self.exec.close()
        self.events.close()
        self.ctx.term()


def ledger_snapshot(run_dir: str) -> LedgerState:
    """A copy of the ledger (db + WAL, as a crash leaves them), its invariants checked (scripts/testkit.py).

    A copy, so the real files are first reopened by the exchange of the next run
    (and a read-only filesystem needs no -shm file created on it).
    """
    d = tempfile.mkdtemp(prefix="pb-ledger-")
    try:
        for suffix in ("", "-wal"):
            src = os.path.join(run_dir, "ledger.sqlite" + suffix)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(d, "ledger.sqlite" + suffix))
        bad: list[str] = []
        led = read_ledger(os.path.join(d, "ledger.sqlite"), bad)
        assert bad == [], bad
        return led
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fill_rows(led: LedgerState) -> list[dict]:
    return [dict(r) for r in led.fills.values()]


def exchange_info(run_dir: str) -> dict:
    return field(run_dir, "actors", "paper-exchange", "status", default={})


def fault_then_recover(procs, run_dir: str, *, env: dict | None, break_disk, fix_disk, expect: str,
                       min_fills: int = 3) -> tuple[dict, Tap, str]:
    """Trade, break the disk, check the shutdown and the ledger, fix the disk, resume from the ledger.

    Returns the ledger as the fault left it, what the exec stream carried, and the failing actor.
    """
    tap = Tap(run_dir)
    try:
        p = start_supervisor(procs, run_dir, config=DEFAULT, sets=TRADE, env=env)
        actors = status_now(run_dir)["actors"]
        wait_for(lambda: p.poll() is not None or exchange_info(run_dir).get("fills", 0) >= min_fills, 60,
                 f"{min_fills} fills")
        break_disk()
        try:
            rc = p.wait(EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor still running {EXIT_DEADLINE_S}s after the disk broke")
        err = p.stderr.read().decode()
        assert rc == 1, f"supervisor exit {rc}: {err}"
        m = re.search(r"^supervisor: ([a-z-]+): disk error: (\w+) (\S+): (.*)$", err, re.M)
        assert m, f"no disk error message on the supervisor's stderr: {err!r}"
        assert m.group(1) in actors and m.group(3).startswith(run_dir + "/"), m.group(0)
        assert re.search(expect, m.group(4)), m.group(0)
        print(f"\n{m.group(0)}")
        # Nothing left: every actor of the run is gone with the supervisor.
        assert not [n for n, a in actors.items() if pid_alive(a["pid"])]
        tap.drain()
    finally:
        tap.close()

    snap = ledger_snapshot(run_dir)
    held = snap.held()
    assert len(snap.fills) >= min_fills
    # The exec stream had no gap from the first message the tap saw, fills among them, and every
    # fill on it is in the ledger. (The tap connects before the exchange has bound exec, so it may
    # miss the first messages, as any late subscriber does; the actors subscribe before RUN.)
    first = tap.seqs[0] if tap.seqs else 0
    assert tap.seqs == list(range(first, first + len(tap.seqs))), tap.seqs[:5]
    assert tap.fills, "the tap saw no fill: nothing below would be checked"
    bad: list[str] = []
    check_published({f.fill_id: f for f in tap.fills}, snap, bad)
    assert bad == [], bad
    assert all(snap.orders[oid]["status"] == "filled" for oid in tap.filled_orders)
    # Not retried: no actor was restarted, and the failing one is reported failed with the reason.
    assert tap.actor_events and not [e for e in tap.actor_events if e.state == "restarting" or e.restarts]
    assert [e for e in tap.actor_events if e.actor == m.group(1) and e.state == "failed" and "disk error" in e.detail]

    fix_disk()
    # A new supervisor on the same run directory: the exchange reopens the ledger and reports the
    # positions it held (the strategy queries them before its first order), then trading goes on.
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=TRADE)
    st = status_now(run_dir)
    run_id = st["run_id"]
    assert st["actors"]["paper-exchange"]["info"]["fills"] == len(snap.fills)
    recovered = [e for e in log_events(run_dir, "strategy") if e["event"] == "position recovered"
                 and e["run_id"] == run_id]
    assert recovered and recovered[0]["positions"] == held
    wait_for(lambda: exchange_info(run_dir).get("fills", 0) > len(snap.fills), 60, "trading resumes")
    assert request(run_dir, "shutdown", timeout=3.0).ok
    assert p.wait(30) == 0
    after = ledger_snapshot(run_dir)
    assert fill_rows(after)[:len(snap.fills)] == fill_rows(snap)
    return snap, tap, m.group(1)


# ------------------------------------------------------------ whole system
def test_injected_fill_commit_failure_stops_in_order_and_resumes(procs, run_dir):
    """Works anywhere: the 6th fill's commit fails as on a full disk (PAPERBUS_FAULT)."""
    snap, tap, actor = fault_then_recover(
        procs, run_dir, env={faults.ENV: "ledger.fill:ENOSPC:after=5"}, min_fills=5,
        break_disk=lambda: None, fix_disk=lambda: None,  # the fault breaks the disk; the next run goes without it
        expect=r"^\[Errno 28\] No space left on device$")
    # The five committed fills, and not a trace of the sixth: not booked, not published.
    assert actor == "paper-exchange"
    assert list(snap.fills) == [1, 2, 3, 4, 5]
    # (A late-joining tap may have missed the first; it saw the rest, up to the fifth and no further.)
    seen = [f.fill_id for f in tap.fills]
    assert seen and seen == list(range(seen[0], 6)) and len(tap.filled_orders) == len(seen)
    ev = [e for e in log_events(run_dir, "paper-exchange") if e["event"] == "disk error"]
    assert len(ev) == 1 and ev[0]["op"] == "writing" and ev[0]["path"] == os.path.join(run_dir, "ledger.sqlite")
    # The supervisor of the first run: no restart; the others STOPped in reverse start order, each exiting 0.
    first = log_events(run_dir)
    first = first[:next(i for i, e in enumerate(first) if e["event"] == "supervisor exiting") + 1]
    exits = [(e["event"], e["actor"], e.get("how")) for e in first
             if e["event"] in ("actor stopped on a disk error", "actor exited")]
    assert exits == [("actor stopped on a disk error", "paper-exchange", None),
                     ("actor exited", "strategy", "exit code 0"), ("actor exited", "state-publisher", "exit code 0"),
                     ("actor exited", "market-data", "exit code 0")]
    assert not [e for e in first if e["event"] == "actor started" and e["actor"] == "paper-exchange"][1:]
    assert first[-1]["exit_code"] == 1


def test_injected_status_write_failure_stops_in_order(procs, run_dir):
    """The state-publisher's status.json write fails (read-only, PAPERBUS_FAULT): it stops the system too."""
    snap, _tap, actor = fault_then_recover(
        procs, run_dir, env={faults.ENV: "write:EROFS:after=12"}, min_fills=1,
        break_disk=lambda: None, fix_disk=lambda: None, expect=r"^\[Errno 30\] Read-only file system$")
    assert actor == "state-publisher"
    ev = [e for e in log_events(run_dir, "state-publisher") if e["event"] == "disk error"]
    assert len(ev) == 1 and ev[0]["path"] == os.path.join(run_dir, "status.json")
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))  # no half-written file left behind


@pytest.mark.parametrize("after, what", [(1, "endpoints.json"), (2, "run.json")])
def test_supervisor_start_failing_after_bind_leaves_nothing_behind(procs, run_dir, after, what):
    """The supervisor's own write fails once its sockets are bound: a clear error, exit 1,
    and no socket file, endpoints.json or temp file left for a client to trip over."""
    p = procs.spawn([PY, "supervisor.py", "--run-dir", run_dir], env={faults.ENV: f"write:ENOSPC:after={after}"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.wait(20) == 1
    err = p.stderr.read().decode()
    assert what in err and "No space left on device" in err, err
    left = [f for f in os.listdir(run_dir) if f.endswith(".sock") or f == "endpoints.json" or f.startswith(".tmp-")]
    assert left == [], left


@pytest.fixture
def tmpfs_dir():
    d = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
    r = run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", d)
    if r.returncode:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected variant covers a full disk")
    try:
        yield d
    finally:
        umount(d)
        shutil.rmtree(d, ignore_errors=True)


def test_disk_full_stops_in_order_and_resumes(tmpfs_dir, procs):
    """A real full disk: another file takes every free byte of the run directory's filesystem."""
    filler = os.path.join(tmpfs_dir, "filler")

    def fill() -> None:
        chunk = b"\0" * 65536
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        for size in (4096, 512, 1):  # the last partial chunk and page
            fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
            finally:
                os.close(fd)

    fault_then_recover(procs, tmpfs_dir, env=None, break_disk=fill, fix_disk=lambda: os.unlink(filler),
                       expect=r"No space left on device|database or disk is full")


@pytest.fixture
def ext4_dir():
    """An ext4 image mounted with errors=remount-ro; yields (run_dir, make_read_only, fix)."""
    missing = [t for t in ("mkfs.ext4", "fsfreeze", "e2fsck", "findmnt") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}; the injected variant covers a failing disk")
    fd, img = tempfile.mkstemp(prefix="pb-img-")
    os.close(fd)
    d = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
    try:
        os.truncate(img, 32 << 20)
        r = run("mkfs.ext4", "-q", "-F", img)
        if r.returncode == 0:
            r = run("mount", "-o", "loop,errors=remount-ro", img, d)
        if r.returncode:
            pytest.skip(f"cannot mount an ext4 image here ({r.stderr.strip()}); the injected variant still runs")
        dev = os.path.basename(run("findmnt", "-no", "SOURCE", d).stdout.strip())
        trigger = f"/sys/fs/ext4/{dev}/trigger_fs_error"
        if not os.path.exists(trigger):
            pytest.skip(f"kernel has no {trigger}; the injected variant still runs")

        def make_read_only() -> None:
            # Freeze first so everything written so far is on the image (the error aborts
            # ext4's journal, as a power cut would); then the kernel's own error path.
            assert run("fsfreeze", "-f", d).returncode == 0
            try:
                with open(trigger, "w") as f:
                    f.write("paperbus test: disk turns read-only\n")
            finally:
                run("fsfreeze", "-u", d)

        def fix() -> None:
            assert run("umount", d).returncode == 0
            assert run("e2fsck", "-fy", img).returncode in (0, 1)
            assert run("mount", "-o", "loop,errors=remount-ro", img, d).returncode == 0

        yield d, make_read_only, fix
    finally:
        umount(d)
        shutil.rmtree(d, ignore_errors=True)
        os.unlink(img)


def test_read_only_disk_stops_in_order_and_resumes(ext4_dir, procs):
    d, make_read_only, fix = ext4_dir
    fault_then_recover(procs, d, env=None, break_disk=make_read_only, fix_disk=fix,
                       expect=r"Read-only file system|disk I/O error|readonly database")


# ----------------------------------------------------------------- units
def _ledger_with_order(path: str) -> Ledger:
    led = Ledger(path)
    led.start_run("r1", "{}", 1000.0)
    led.insert_order(OrderInfo(order_id=1, cl_id="c1", symbol="SYN1", side="buy", qty=10, order_type="market",
                               status="new", ts=1), None)
    return led


def _fill(fid: int = 1) -> tuple:
    return (fid, 1, "c1", "SYN1", "buy", 10, 100.0, 0.0, 5, 1.0, 10, 0.0)


def _state(path: str) -> tuple:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA integrity_check").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM fills").fetchone()[0],
                db.execute("SELECT status, filled FROM orders WHERE order_id = 1").fetchone(),
                db.execute("SELECT COUNT(*) FROM positions").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def disarm():
    yield
    faults.arm(None)


def test_failing_commit_in_record_fill_rolls_back_everything(tmp_path, disarm):
    path = str(tmp_path / "ledger.sqlite")
    led = _ledger_with_order(path)
    faults.arm("ledger.fill:ENOSPC")
    with pytest.raises(DiskError) as ei:
        led.record_fill(_fill(), (1, "filled", 10, "filled"), ("SYN1", 10, 100.0, 0.0, 0.0))
    assert str(ei.value) == f"disk error: writing {path}: [Errno 28] No space left on device"
    assert not led.db.in_transaction
    # All three statements ran before COMMIT failed; none of them stays.
    assert _state(path) == ("ok", 0, ("new", 0), 0)
    faults.arm(None)  # the disk is fixed: the same ledger takes the fill
    led.record_fill(_fill(), (1, "filled", 10, "filled"), ("SYN1", 10, 100.0, 0.0, 0.0))
    assert _state(path) == ("ok", 1, ("filled", 10), 1)
    led.close()


def test_real_sqlite_full_mid_transaction_rolls_back(tmp_path):
    """SQLite's own SQLITE_FULL (max_page_count), on the third statement of record_fill."""
    path = str(tmp_path / "ledger.sqlite")
    led = _ledger_with_order(path)
    pages = led.db.execute("PRAGMA page_count").fetchone()[0]
    led.db.execute(f"PRAGMA max_page_count = {pages}")
    big = "S" * 20000  # the position row needs overflow pages the file may not grow to
    with pytest.raises(DiskError) as ei:
        led.record_fill(_fill(), (1, "filled", 10, "filled"), (big, 10, 100.0, 0.0, 0.0))
    assert str(ei.value) == f"disk error: writing {path}: database or disk is full (SQLITE_FULL)"
    assert ei.value.errno == errno.ENOSPC
    assert not led.db.in_transaction
    assert _state(path) == ("ok", 0, ("new", 0), 0)
    led.record_fill(_fill(), (1, "filled", 10, "filled"), ("SYN1", 10, 100.0, 0.0, 0.0))  # room for this one
    assert _state(path) == ("ok", 1, ("filled", 10), 1)
    led.close()


def test_atomic_write_failure_keeps_the_old_file(tmp_path, disarm):
    path = tmp_path / "status.json"
    atomic_write(path, b"old")
    faults.arm("write:EROFS")
    with pytest.raises(DiskError) as ei:
        atomic_write(path, b"new")
    assert str(ei.value) == f"disk error: writing {path}: [Errno 30] Read-only file system"
    assert path.read_bytes() == b"old" and glob.glob(str(tmp_path / ".tmp-*")) == []


def test_logging_to_a_full_disk_is_counted_not_raised():
    sink = logmod._Sink("/dev/full", False, 20)  # every write: ENOSPC
    sink.write({"event": "x"})
    sink.write({"event": "y"})
    assert sink.errors == 2
    ro = logmod._Sink("/nonexistent-pb/x.jsonl", False, 20)  # cannot even be opened
    ro.write({"event": "x"})
    assert ro.fd is None and ro.errors == 2


SHORT_WRITE = """
import os, resource, signal, sys
from bus import log as logmod
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not death
resource.setrlimit(resource.RLIMIT_FSIZE, (120, 120))
path = sys.argv[1]
sink = logmod._Sink(path, False, 20)
sink.write({"event": "first", "pad": "x" * 40})   # fits
sink.write({"event": "second", "pad": "y" * 60})  # only part of it fits: a short write
sink.write({"event": "third"})                    # fits again once the part is cut off
print(sink.errors)
"""


def test_log_line_the_disk_takes_only_part_of_is_cut_off(procs, tmp_path):
    path = tmp_path / "x.jsonl"
    p = procs.python("-c", SHORT_WRITE, str(path), stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and out.decode().strip() == "1"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["event"] for x in lines[:-1]] == ["first", "third"]


@pytest.mark.parametrize("spec, says", [
    ("ledger", "expected POINT:ERRNO"), ("ledger:ENOPE", "unknown errno name 'ENOPE'"),
    ("ledger:ENOSPC:after=x", "expected after=N"),
])
def test_bad_fault_spec_is_refused(spec, says, disarm):
    with pytest.raises(ValueError, match=re.escape(says)):
        faults.arm(spec)


def test_disk_errors_are_told_apart():
    assert faults.disk_error(OSError(errno.ENOENT, "No such file or directory", "/x")) is None
    assert faults.disk_error(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    e = faults.disk_error(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/r/fills.csv"))
    assert str(e) == f"disk error: accessing /r/fills.csv: [Errno {errno.EDQUOT}] Disk quota exceeded"

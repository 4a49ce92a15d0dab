"""A real actor process: READY -> RUN -> heartbeats -> STOP -> exit 0, and its failure modes."""

import json

import pytest

from bus.messages import (CommandReply, Command, Heartbeat, InitFailed, Ready, Stopped)
from tests.harness import FakeSupervisor, actor_cmd, read_log

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sup(run_dir):
    s = FakeSupervisor(run_dir)
    yield s
    s.close()


def start(procs, sup, mode="ok"):
    cfg_path = sup.write_config()
    return procs.spawn(actor_cmd("tests.fixtures.dummy_actor", sup.run_dir, cfg_path),
                       env={"DUMMY_MODE": mode})


def test_ready_run_heartbeat_command_stop(procs, sup):
    p = start(procs, sup)
    ready = sup.wait_msg("dummy", Ready, 10)
    assert ready.info == {"mode": "ok", "instruments": 3}
    sup.run("dummy")
    # heartbeats flow actor -> supervisor, with status info after RUN
    hb = sup.wait_msg("dummy", Heartbeat, 5)
    assert hb is not None
    sup.send("dummy", Command(id=7, cmd="echo", args={"k": "v"}))
    rep = sup.wait_msg("dummy", CommandReply, 5)
    assert rep.ok and rep.id == 7 and rep.data == {"echo": {"k": "v"}}
    sup.send("dummy", Command(id=8, cmd="nope"))
    sup.events.clear()
    rep = sup.wait_msg("dummy", CommandReply, 5)
    assert not rep.ok and "unknown command" in rep.error
    sup.stop("dummy")
    sup.wait_msg("dummy", Stopped, 5)
    assert p.wait(10) == 0
    lines = [json.loads(x) for x in read_log(sup.run_dir, "dummy").splitlines()]
    events = [x["event"] for x in lines]
    assert events[:2] == ["ready", "run"] and "stopped" in events
    assert all(x["run_id"] and x["pid"] == p.pid and x["process"] == "dummy" and x["level"] for x in lines)


def test_exception_in_run_exits_nonzero_with_traceback(procs, sup):
    p = start(procs, sup, "raise-in-run")
    sup.wait_msg("dummy", Ready, 10)
    sup.run("dummy")
    assert p.wait(10) == 1
    log = read_log(sup.run_dir, "dummy")
    assert "unhandled exception" in log and "Traceback" in log and "dummy exploded on purpose" in log


def test_init_failure_reports_reason_and_exits_1(procs, sup):
    p = start(procs, sup, "fail-init")
    failed = sup.wait_msg("dummy", InitFailed, 10)
    assert "instrument file missing" in failed.reason
    assert p.wait(10) == 1
    assert "Traceback" in read_log(sup.run_dir, "dummy")


def test_orphan_guard_when_supervisor_heartbeats_stop(procs, sup):
    p = start(procs, sup)
    sup.wait_msg("dummy", Ready, 10)
    sup.run("dummy")
    sup.wait_msg("dummy", Heartbeat, 5)
    sup.heartbeating = False
    # heartbeat_ms=250 x misses=8 = 2 s of silence; keep draining while we wait.
    code = None
    for _ in range(100):
        sup.pump(0.1)
        code = p.poll()
        if code is not None:
            break
    assert code == 3
    assert "orphan guard" in read_log(sup.run_dir, "dummy")


def test_sigterm_is_a_clean_stop(procs, sup):
    import signal
    p = start(procs, sup)
    sup.wait_msg("dummy", Ready, 10)
    sup.run("dummy")
    p.send_signal(signal.SIGTERM)
    sup.wait_msg("dummy", Stopped, 5)
    assert p.wait(10) == 0


def test_run_dir_and_ipc_files_are_private(procs, sup):
    import os
    import stat
    start(procs, sup)
    sup.wait_msg("dummy", Ready, 10)
    assert stat.S_IMODE(os.stat(sup.run_dir).st_mode) == 0o700
    sock = os.path.join(sup.run_dir, "lifecycle.sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    sup.stop("dummy")
    sup.wait_msg("dummy", Stopped, 5)

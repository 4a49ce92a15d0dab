"""The real supervisor in a temporary run directory, driven over its real endpoints."""

import os
import signal
import subprocess
import time

import pytest
import zmq

from tests.harness import PY, ROOT, wait_for
from tests.sup_util import log_events, pid_alive, start_supervisor, status, wait_gone

pytestmark = pytest.mark.timeout(60)


def actor_pids(run_dir):
    st = status(run_dir)
    return {n: a["pid"] for n, a in st["actors"].items()}


def test_start_order_and_run_barrier(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    ev = log_events(run_dir)
    seq = [(e["event"], e.get("actor")) for e in ev if e["event"] in ("actor started", "actor ready", "actor running")]
    # each actor starts only after the one it depends on is READY
    assert seq[:6] == [("actor started", "a"), ("actor ready", "a"), ("actor started", "b"), ("actor ready", "b"),
                       ("actor started", "c"), ("actor ready", "c")]
    # RUN goes out only once all are READY
    assert [s for s in seq[6:9]] == [("actor running", "a"), ("actor running", "b"), ("actor running", "c")]
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_terminal_ctrl_c_reaches_only_supervisor_and_stops_in_reverse_order(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    pids = actor_pids(run_dir)
    # Actors live in their own process groups, not the supervisor's.
    for pid in pids.values():
        assert os.getpgid(pid) != os.getpgid(p.pid)
    os.killpg(os.getpgid(p.pid), signal.SIGINT)  # what a terminal Ctrl+C does
    assert p.wait(10) == 0
    stops = [e["actor"] for e in log_events(run_dir) if e["event"] == "actor stopped"]
    assert stops == ["c", "b", "a"]
    assert not any(pid_alive(x) for x in pids.values())
    # a clean shutdown removes the ipc socket files and endpoints.json
    assert not [f for f in os.listdir(run_dir) if f.endswith(".sock") or f == "endpoints.json"]


def test_sigkill_supervisor_leaves_no_actor(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    pids = list(actor_pids(run_dir).values())
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    # PR_SET_PDEATHSIG: target is 100 ms; allow slack on a loaded CI machine.
    wait_gone(pids, 5)


def test_sigkill_actor_is_restarted(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    old = actor_pids(run_dir)["a"]
    os.kill(old, signal.SIGKILL)

    def back():
        st = status(run_dir)
        a = st and st["actors"]["a"]
        return a and a["state"] == "running" and a["pid"] != old and a["restarts"] == 1
    wait_for(back, 10, "a restarted and running")
    ev = [e for e in log_events(run_dir) if e["event"] == "actor exited" and e["actor"] == "a"]
    assert ev[0]["how"] == "killed by SIGKILL" and ev[0]["pid"] == old and "restart in" in ev[0]["next"]
    assert "uptime_s" in ev[0]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0


def test_restart_with_restarts_dependants(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    before = actor_pids(run_dir)
    os.kill(before["b"], signal.SIGKILL)

    def both_new():
        st = status(run_dir)
        return st and all(st["actors"][n]["state"] == "running" and st["actors"][n]["pid"] != before[n]
                          for n in ("b", "c"))
    wait_for(both_new, 10, "b and c restarted")
    assert actor_pids(run_dir)["a"] == before["a"]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0


def test_hung_actor_is_detected_and_restarted(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    old = actor_pids(run_dir)["c"]
    os.kill(old, signal.SIGSTOP)
    wait_for(lambda: (status(run_dir) or {}).get("actors", {}).get("c", {}).get("pid") not in (old, None)
             and status(run_dir)["actors"]["c"]["state"] == "running", 15, "c replaced")
    assert any(e["event"].startswith("actor hung") and e["actor"] == "c" for e in log_events(run_dir))
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0


def test_restart_intensity_exceeded_stops_everything(procs, run_dir):
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_b": "raise-in-run"}, wait_running=False)
    assert p.wait(30) == 1
    err = p.stderr.read().decode()
    assert "restart intensity exceeded: b" in err and "restarts within 30s" in err
    stops = [e["actor"] for e in log_events(run_dir) if e["event"] == "actor stopped"]
    assert stops[-1] == "a"  # stopped in order, a last
    # exponential backoff between the counted restarts: 50 ms, doubling (tests/fixtures/dummies.toml)
    delays = [e["next"] for e in log_events(run_dir) if e["event"] == "actor exited" and e["actor"] == "b"]
    assert delays[:3] == ["restart in 0.050s", "restart in 0.100s", "restart in 0.200s"]


def test_temporary_actor_is_not_restarted(procs, run_dir):
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_c": "exit-after-run"},
                         sets=["actors.c.restart=temporary"], wait_running=False)
    wait_for(lambda: (status(run_dir) or {}).get("actors", {}).get("c", {}).get("state") == "exited", 10,
             "c exited")
    st = status(run_dir)
    assert st["actors"]["c"]["restarts"] == 0 and st["actors"]["a"]["state"] == "running"
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_second_instance_refused_with_live_pid(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    r = subprocess.run([PY, "supervisor.py", "--config", "tests/fixtures/dummies.toml", "--run-dir", run_dir],
                       cwd=ROOT, capture_output=True, text=True, timeout=10, env=procs.env())
    assert r.returncode == 1
    assert f"already running (pid {p.pid}, since " in r.stderr
    assert status(run_dir)["phase"] == "running"  # the first one is untouched
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_stale_lock_from_killed_supervisor_is_recovered(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    old = list(actor_pids(run_dir).values())
    p.kill()
    p.wait(5)
    wait_gone(old, 5)
    p2 = start_supervisor(procs, run_dir)
    assert status(run_dir)["pid"] == p2.pid
    p2.send_signal(signal.SIGINT)
    assert p2.wait(10) == 0


def test_ctl_without_supervisor_fails_fast(run_dir):
    t0 = time.monotonic()
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "status"], cwd=ROOT, capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "no supervisor running" in r.stderr
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir + "/nope", "status"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "no run directory" in r.stderr
    assert time.monotonic() - t0 < 8  # two interpreter start-ups, each well under 2 s


def test_ctl_usage_errors_exit_2(run_dir):
    for args in (["bogus"], ["restart"], ["status", "extra"]):
        r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 2, args


def test_malformed_control_messages_get_error_replies(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    import json
    from bus.codec import Stamper, codec
    from bus.messages import CtlRequest, Query
    ep = json.load(open(os.path.join(run_dir, "endpoints.json")))["control"]
    ctx = zmq.Context()
    try:
        for sock_type in (zmq.DEALER, zmq.REQ):
            s = ctx.socket(sock_type)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ep)
            st = Stamper("fuzz", "")
            bad = [
                [b"\x00\xffgarbage"],
                [st.encode("orders", Query())],  # a type from another channel
                [st.encode("control", CtlRequest(cmd="launch-missiles"))],
                [st.encode("control", CtlRequest(cmd="restart", arg="nobody"))],
            ]
            if sock_type == zmq.DEALER:
                bad.append([b"a", b"b", b"c"])  # wrong frame count
            for frames in bad:
                s.send_multipart(frames)
                assert s.poll(2000), f"no reply to {frames!r}"
                reply = codec("control").decode(s.recv_multipart()[-1]).msg
                assert reply.ok is False and reply.error, frames
            s.close()
    finally:
        ctx.term()
    assert status(run_dir)["phase"] == "running"
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_actor_init_failure_aborts_cleanly(procs, run_dir):
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_b": "fail-init"}, wait_running=False)
    assert p.wait(20) == 1
    ev = log_events(run_dir)
    failed = [e for e in ev if e["event"] == "actor init failed"]
    assert failed and failed[0]["actor"] == "b" and "instrument file missing" in failed[0]["reason"]
    assert not any(e["event"] == "actor started" and e.get("actor") == "c" for e in ev)
    # c was loaded (spawned with the others) but never initialised; it and a stop in reverse order.
    assert [e["actor"] for e in ev if e["event"] == "actor stopped"] == ["c", "a"]
    assert "b exited before READY" in p.stderr.read().decode()


def test_actor_start_timeout_aborts(procs, run_dir):
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_a": "hang-init"}, sets=["actors.a.start_timeout=1.0"],
                         wait_running=False)
    assert p.wait(20) == 1
    assert "a: no READY within start_timeout 1s" in p.stderr.read().decode()


def test_config_cycle_exits_2(run_dir):
    r = subprocess.run([PY, "supervisor.py", "--config", "tests/fixtures/dummies.toml", "--run-dir", run_dir,
                        "--set", "actors.a.after=[\"c\"]"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "cycle" in r.stderr


def test_second_ctrl_c_forces_shutdown(procs, run_dir):
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_c": "slow-stop"}, sets=["actors.c.stop_timeout=30"])
    pids = list(actor_pids(run_dir).values())
    p.send_signal(signal.SIGINT)
    wait_for(lambda: any(e["event"] == "shutting down" for e in log_events(run_dir)), 5, "shutdown begun")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.wait(10)
    assert time.monotonic() - t0 < 5
    wait_gone(pids, 5)


def test_ctl_status_and_restart_over_cli(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "--json", "status"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    import json
    data = json.loads(r.stdout)["data"]
    assert data["run_id"] and set(data["actors"]) == {"a", "b", "c"}
    for a in data["actors"].values():
        assert a["state"] == "running" and a["pid"] and a["heartbeat_age_s"] is not None
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "restart", "a"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "shutdown"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    assert p.wait(10) == 0


def test_every_supervisor_state_is_a_valid_actor_event():
    """Subscribers reject unknown states, so every internal state must map to one."""
    import typing

    from bus.actor_states import ActorState
    from bus.messages import ActorEvent
    allowed = set(typing.get_args(typing.get_type_hints(ActorEvent)["state"]))
    assert allowed and {s.event for s in ActorState} == allowed


@pytest.mark.parametrize("first", ["supervisor", "actors"])
def test_whole_machine_frozen_is_not_a_hang(procs, run_dir, first):
    """A frozen machine (VM paused, laptop suspended, CPU starved) stops everyone at
    once. Whoever runs first afterwards must not blame the others for its own
    gap: the supervisor kills no actor as hung, no actor exits on its orphan
    guard, nothing restarts (bus/liveness.py)."""
    import threading
    p = start_supervisor(procs, run_dir, sets=["supervisor.heartbeat_ms=50", "supervisor.heartbeat_misses=4"])
    pids = actor_pids(run_dir)
    everyone = [p.pid, *pids.values()]
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    # The fault itself: frozen for 5x the 0.2 s hang timeout (not a synchronisation).
    threading.Event().wait(1.0)
    order = everyone if first == "supervisor" else [*pids.values(), p.pid]
    for pid in order:
        os.kill(pid, signal.SIGCONT)
    who = "supervisor" if first == "supervisor" else "a"
    wait_for(lambda: any(e["event"].endswith("was not running; liveness windows restarted")
                         or e["event"].endswith("orphan guard window restarted")
                         for e in log_events(run_dir, who)), 5, f"{who} to notice its own gap")

    def fresh():  # every actor heard from since the thaw, same pids, no restart
        st = status(run_dir)
        return st and all(a["state"] == "running" and a["restarts"] == 0 and a["heartbeat_age_s"] < 0.2
                          for a in st["actors"].values()) and actor_pids(run_dir) == pids
    wait_for(fresh, 5, "actors alive and heard from")
    events = {e["event"] for e in log_events(run_dir)}
    assert not events & {"actor hung: heartbeats missed, killing", "actor exited"}, events
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_deliberate_restarts_are_not_counted_and_logged_at_info(procs, run_dir):
    """`ctl restart` is an operator's decision, not a failure: more of them than
    max_restarts (3 in dummies.toml) leave the service up, each logged at info."""
    from tests.sup_util import field
    p = start_supervisor(procs, run_dir)
    for i in range(5):
        old = actor_pids(run_dir)["a"]
        r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "restart", "a"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: (field(run_dir, "actors", "a") or {}).get("state") == "running"
                 and field(run_dir, "actors", "a", "pid") not in (old, None), 10, f"a back after restart {i + 1}")
    assert p.poll() is None and status(run_dir)["phase"] == "running"
    exits = [e for e in log_events(run_dir) if e["event"] == "actor exited" and e["actor"] == "a"]
    assert len(exits) == 5
    for e in exits:
        assert e["level"] == "info", e
        assert e["next"] == "restart now (ctl restart; not counted toward restart intensity)", e
    assert not any(e["event"] == "restart intensity exceeded" for e in log_events(run_dir))
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_disabled_actor_stays_down_and_the_others_keep_their_budget(procs, run_dir):
    """on_give_up = disable: past the intensity limit the actor is left failed, naming
    its exception; the others run on, with the whole budget still theirs."""
    from tests.sup_util import field
    p = start_supervisor(procs, run_dir, env={"DUMMY_MODE_c": "raise-in-run"}, sets=["actors.c.on_give_up=disable"],
                         wait_running=False)
    wait_for(lambda: field(run_dir, "actors", "c", "state") == "failed", 30, "c disabled")
    st = status(run_dir)
    import inspect

    from tests.fixtures.dummy_actor import Dummy
    line = inspect.getsourcelines(Dummy._boom)[1] + 1
    assert st["actors"]["c"]["detail"] == (
        f"exit code 1: ValueError: dummy exploded on purpose (at tests/fixtures/dummy_actor.py:{line} in _boom); "
            "disabled: restart intensity exceeded (4 restarts "
        "within 30s, max_restarts=3); `ctl restart c` re-enables it")
    assert [st["actors"][n]["state"] for n in ("a", "b")] == ["running", "running"]
    for i in range(3):  # max_restarts crashes of b: c's crash loop used none of that budget
        old = actor_pids(run_dir)["b"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: field(run_dir, "actors", "b", "state") == "running"
                 and field(run_dir, "actors", "b", "pid") not in (old, None), 10, f"b back ({i + 1})")
    st = status(run_dir)
    assert st["phase"] == "running" and st["actors"]["c"]["state"] == "failed"  # restart_with skips it
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_ctl_usage_help_and_checks_are_the_command_table():
    """One table (actors/supervision/control.py) for the supervisor and ctl: every
    command's help is in `ctl --help`, its argument count is what ctl enforces,
    and each is answered by the supervisor or by ctl itself, never neither."""
    import textwrap

    from actors.supervision.control import CONTROL
    r = subprocess.run([PY, "scripts/ctl.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                       env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for c in CONTROL.values():
        assert " ".join(textwrap.wrap(c.help, 10_000)) in text, c.name
        assert f"{c.name} {c.usage}".strip() in text, c.name
        assert (c.handler is None) != (c.name not in ("runs", "keygen")), c.name
        assert bool(c.fanout) <= (c.handler is not None), c.name
    for cmd, args, err in (("restart", [], "ctl: restart needs ACTOR"),
                           ("send", [], "ctl: send needs ACTOR [COMMAND [KEY=VALUE ...]]"),
                           ("pause", ["x"], "ctl: unrecognized arguments: x (pause takes no argument)"),
                           ("send", ["a", "echo", "oops"], "ctl: send: argument 'oops': expected KEY=VALUE")):
        r = subprocess.run([PY, "scripts/ctl.py", cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        assert (r.returncode, r.stderr) == (2, err + "\n"), (cmd, args)


def test_ctl_send_reaches_a_declared_command(procs, run_dir):
    p = start_supervisor(procs, run_dir)
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "send", "b", "echo", "k=v", "n=3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout == "send: ok\n  b: echo={'k': 'v', 'n': 3}\n", r
    r = subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, "--json", "pause"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "no actor here takes pause: none declares the role exchange or order-sender" in r.stdout
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0

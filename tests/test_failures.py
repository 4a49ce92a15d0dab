"""Every failure names its cause on the console, tty or not (issue 12, item 3).

The supervisor runs with stderr a pipe (as under nohup, systemd, CI or
``2>file``): its last line must carry the actor's own reason, a bad plugin,
plugin param or data file must exit 2 like a config error, and the console gets
plain log lines that never block the supervisor.
"""

import fcntl
import inspect
import os
import re
import subprocess
import time

import pytest
import zmq

from tests.harness import PY, ROOT, wait_for
from tests.sup_util import phase, status

pytestmark = pytest.mark.timeout(60)

SUPERVISOR = str(ROOT / "supervisor.py")
BACKTEST = str(ROOT / "config" / "backtest.toml")
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named only from Python 3.10 on some builds
PLAIN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error|critical) supervisor: \S")


def run(procs, args, cwd=ROOT, env=None, timeout=45):
    """Run the supervisor to its end with stdout and stderr as pipes; (exit code, stderr lines)."""
    p = procs.spawn([PY, SUPERVISOR, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err.decode().rstrip("\n").split("\n")


def assert_plain_console(lines):
    """Everything before the last line is the supervisor's log, one plain line per event."""
    assert len(lines) > 5, lines
    bad = [ln for ln in lines[:-1] if not PLAIN.match(ln)]
    assert not bad, bad[:5]


# ------------------------------------------------------------------ start failures: user errors exit 2
def test_plugin_that_cannot_be_imported(procs, run_dir):
    rc, lines = run(procs, ["--run-dir", run_dir, "--set", "strategy.plugin=mystrats.nope:Nope"])
    assert rc == 2
    assert lines[-1] == ("supervisor: config error: strategy: strategy plugin 'mystrats.nope:Nope': cannot import "
                         "module 'mystrats.nope': No module named 'mystrats'")
    assert_plain_console(lines)
    assert any(" error supervisor: actor exited before READY actor=strategy " in ln and 'how="exit code 2"' in ln
               for ln in lines)


def test_bad_plugin_param(procs, run_dir):
    rc, lines = run(procs, ["--run-dir", run_dir, "--set", "strategy.params.fastt=5"])
    assert rc == 2
    assert lines[-1] == ("supervisor: config error: strategy: strategy plugin 'actors.strategies.sma_cross:SmaCross': "
                         "bad strategy.params {'fast': 10, 'slow': 30, 'qty': 10, 'fastt': 5}: "
                         "SmaCross.__init__() got an unexpected keyword argument 'fastt'")
    assert_plain_console(lines)


def test_strategy_symbol_not_in_the_instrument_master(procs, run_dir):
    rc, lines = run(procs, ["--run-dir", run_dir, "--set", 'strategy.symbols=["SYN1", "NOPE"]'])
    assert rc == 2
    assert lines[-1] == ("supervisor: config error: strategy: strategy.symbols ['NOPE'] not in the instrument master "
                         "(2 instruments)")


KERNELS = pytest.mark.parametrize("kernel", ["inprocess", "actors"])  # the two kernels fail alike


@KERNELS
def test_replay_file_with_a_missing_column(procs, run_dir, kernel):
    path = os.path.join(run_dir, "nocl.csv")
    with open(path, "w") as f:
        f.write("Date,Open,High,Low,Volume\n2004-08-19,100,104.06,95.96,22351900\n")
    rc, lines = run(procs, ["--config", BACKTEST, "--run-dir", os.path.join(run_dir, "r"),
                            "--set", f"market_data.path={path}", "--set", f"service.kernel={kernel}"])
    assert rc == 2
    assert lines[-1] == (f"supervisor: config error: market-data: {path}: no column for 'close' in "
                         "['Date', 'Open', 'High', 'Low', 'Volume']; "
                         "map it with market_data.columns = { close = \"<column>\" }")
    assert_plain_console(lines)


@KERNELS
def test_replay_file_that_does_not_exist(procs, run_dir, kernel):
    path = os.path.join(run_dir, "missing.csv")
    rc, lines = run(procs, ["--config", BACKTEST, "--run-dir", os.path.join(run_dir, "r"),
                            "--set", f"market_data.path={path}", "--set", f"service.kernel={kernel}"])
    assert rc == 2
    assert lines[-1] == f"supervisor: config error: market-data: replay file not found: {path}"
    assert_plain_console(lines)


# ------------------------------------------------------------------ run failures: bugs exit 1
BOOM = """\
from actors.strategies.base import Strategy

class Boom(Strategy):
    seen = 0

    def on_bar(self, bar):
        self.seen += 1
        if self.seen == 50:
            bar.close / 0
"""


@pytest.mark.parametrize("kernel,how", [("inprocess", "failed during the backtest"),
                                         ("actors", "exited during the backtest (exit code 1)")])
def test_strategy_raising_in_on_bar_during_a_backtest(procs, run_dir, kernel, how):
    """A bug in the user's plugin: the last line says what it raised and where, in the user's file."""
    os.mkdir(os.path.join(run_dir, "mystrats"))
    with open(os.path.join(run_dir, "mystrats", "boom.py"), "w") as f:
        f.write(BOOM)
    # Run from the plugin's directory, as a user does; a new plugin drops SmaCross's params.
    rc, lines = run(procs, ["--config", BACKTEST, "--run-dir", os.path.join(run_dir, "r"),
                            "--set", "strategy.plugin=mystrats.boom:Boom", "--set", f"service.kernel={kernel}"],
                    cwd=run_dir)
    assert rc == 1
    assert lines[-1] == (f"supervisor: strategy {how}: "
                         "ZeroDivisionError: float division by zero (at mystrats/boom.py:9 in on_bar)")
    assert_plain_console(lines)


def test_crash_loop_past_restart_intensity_names_the_last_error(procs, run_dir):
    from tests.fixtures.dummy_actor import Dummy

    line = inspect.getsourcelines(Dummy._boom)[1] + 1
    rc, lines = run(procs, ["--config", "tests/fixtures/dummies.toml", "--run-dir", run_dir],
                    env={"DUMMY_MODE_b": "raise-in-run"})
    assert rc == 1
    assert lines[-1] == ("supervisor: restart intensity exceeded: b exited (exit code 1); 4 restarts within 30s "
                         "(max_restarts=3); last error: ValueError: dummy exploded on purpose "
                         f"(at tests/fixtures/dummy_actor.py:{line} in _boom)")
    # Each restart says why, too.
    exits = [ln for ln in lines if " supervisor: actor exited actor=b " in ln]
    assert exits and all('reason="ValueError: dummy exploded on purpose' in ln for ln in exits), exits
    assert_plain_console(lines)


# ------------------------------------------------------------------ the console itself
def test_a_console_nobody_reads_never_blocks_the_supervisor(procs, run_dir):
    """stderr a pipe that is not read (e.g. `supervisor.py 2>&1 | less`, then no scrolling):
    log lines are dropped, counted and said so once the pipe drains; the supervisor keeps
    answering and heartbeating meanwhile."""
    fd, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)  # one page: a few dozen lines fill it
        p = procs.spawn([PY, SUPERVISOR, "--config", "tests/fixtures/dummies.toml", "--run-dir", run_dir],
                        stdout=subprocess.DEVNULL, stderr=w)
    finally:
        os.close(w)
    try:
        _flood_and_drain(p, fd, run_dir)
    finally:
        os.close(fd)


def _flood_and_drain(p, fd, run_dir):
    wait_for(lambda: p.poll() is not None or phase(run_dir) == "running", 15, "supervisor running")
    from bus.codec import Stamper, codec
    from bus.messages import CtlRequest
    import json
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(json.load(open(os.path.join(run_dir, "endpoints.json")))["control"])
    st = Stamper("test", "")
    try:
        # Every request but status (a dashboard asks it every second: logged at debug) logs a
        # line at info: ~80 bytes each, far more than the pipe holds. An unknown command is
        # answered (refused) and changes nothing.
        for i in range(300):
            s.send(st.encode("control", CtlRequest(id=str(i), cmd="no-such-command")))
            assert s.poll(5000), f"supervisor stopped answering at request {i} (blocked on its console?)"
            r = codec("control").decode(s.recv()).msg
            assert not r.ok and "no-such-command" in r.error
    finally:
        s.close()
        ctx.term()
    assert all(a["state"] == "running" and a["restarts"] == 0 for a in status(run_dir)["actors"].values())
    os.set_blocking(fd, False)
    seen = b""
    while True:  # what got through before the pipe filled: plain lines, whole
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        seen += chunk
    first = seen.decode().split("\n")
    assert first[-1] == "" and all(PLAIN.match(ln) for ln in first[:-1]), first[-3:]
    assert "supervisor: supervisor started" in first[0]
    _refused_request(run_dir)  # one more line, now that the pipe has room: it tells what was dropped
    note = wait_for(lambda: _read_some(fd), 5, "a line after the drain").decode()
    assert re.match(rf"^\[\d+ log lines not shown: stderr was not being read \(all are in "
                    rf"{re.escape(run_dir)}/logs/supervisor.jsonl\)\]\n", note), note
    p.send_signal(2)
    assert p.wait(10) == 0


def _refused_request(run_dir):
    """One ctl request that logs a line at info (an unknown command: refused, changes nothing)."""
    import json

    from bus.codec import Stamper, codec
    from bus.messages import CtlRequest

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(json.load(open(os.path.join(run_dir, "endpoints.json")))["control"])
    try:
        s.send(Stamper("test", "").encode("control", CtlRequest(id="x", cmd="no-such-command")))
        assert s.poll(5000), "no reply from the supervisor"
        assert not codec("control").decode(s.recv()).msg.ok
    finally:
        s.close()
        ctx.term()


def _read_some(fd):
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def test_plain_console_format():
    """One line per event whatever the values hold; strings quoted only when they must be."""
    from bus.log import format_console

    ev = {"timestamp": "2025-01-31T03:19:07.335123+00:00", "level": "error", "process": "supervisor",
          "pid": os.getpid(), "run_id": "r1", "event": "actor exited", "actor": "strategy", "other_pid": 7,
          "how": "exit code 1", "ok": False, "order": ["a", "b"], "reason": 'bad "x"\nsecond line',
          "exception": "Traceback (most recent call last):\n  File ...\nValueError: boom"}
    assert format_console(ev, plain=True) == (
        '2025-01-31T03:19:07.335Z error supervisor: actor exited actor=strategy other_pid=7 how="exit code 1" '
        'ok=false order=["a","b"] reason="bad \\"x\\"\\nsecond line" '
        'exception="Traceback (most recent call last):\\n  File ...\\nValueError: boom"\n')


def test_exit_reason_locates_a_bug_and_keeps_a_user_error_as_is():
    from actors.base import UserError, exit_reason

    def plugin_code():
        return {}["missing"]

    try:
        plugin_code()
    except KeyError as e:
        line = inspect.getsourcelines(plugin_code)[1] + 1
        assert exit_reason(e) == f"KeyError: 'missing' (at tests/test_failures.py:{line} in plugin_code)"
    assert exit_reason(UserError("replay file not found: /x.csv")) == "replay file not found: /x.csv"
    assert exit_reason(RuntimeError("two\n  lines")) == "RuntimeError: two lines"

"""scripts/testkit.py: the one module that starts and watches a system for the tests and the
scripts (issue 13, item 7); and the rule that makes it the one: no script imports the tests."""

from __future__ import annotations

import ast
import os
import subprocess

import pytest

from scripts import testkit
from tests.harness import ROOT, Procs

pytestmark = pytest.mark.timeout(60)


def imports_of(path: str) -> list[str]:
    """Every module a Python file imports, by absolute name (relative imports as written)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def test_no_script_imports_the_tests():
    scripts = sorted(p for p in (ROOT / "scripts").glob("*.py"))
    assert len(scripts) >= 8
    bad = {p.name: m for p in scripts for m in imports_of(str(p)) if m == "tests" or m.startswith("tests.")}
    assert not bad, f"scripts must not import the test suite (move what they need to scripts/testkit.py): {bad}"


def test_the_import_check_sees_every_form(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("import tests.harness\nfrom tests import sup_util\nfrom tests.ledger_check import read_ledger\n"
                 "def f():\n    import tests\n")
    assert [m for m in imports_of(str(p)) if m.split(".")[0] == "tests"] == [
        "tests.harness", "tests", "tests.sup_util", "tests.ledger_check", "tests.ledger_check.read_ledger", "tests"]


def test_start_wait_status_pids_proc_shutdown(procs: Procs, run_dir):
    """One supervisor of the three dummy actors, driven only through the testkit."""
    p = testkit.start_supervisor(run_dir, "tests/fixtures/dummies.toml", ["supervisor.heartbeat_ms=50"],
                                 spawn=procs.spawn, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    st = testkit.status_now(run_dir)
    assert testkit.is_running(st) and testkit.phase(run_dir) == "running"
    pids = testkit.actor_pids(run_dir)
    assert sorted(pids) == ["a", "b", "c"]
    assert testkit.field(run_dir, "actors", "a", "pid") == pids["a"]
    assert testkit.field(run_dir, "no", "such", "key", default="x") == "x"
    for pid in pids.values():
        assert testkit.pid_alive(pid) and testkit.pid_state(pid) in ("R", "S", "D")
        assert testkit.proc_stat(pid)[1] == p.pid  # the supervisor's children
        assert testkit.rss_kb(pid) > 1000 and testkit.rss_kb(pid, "VmHWM") >= testkit.rss_kb(pid)
    assert {pid for pid, state in testkit.children(p.pid).items() if state != "Z"} == set(pids.values())
    assert set(testkit.actor_processes(run_dir)) == set(pids.values())
    assert set(pids.values()) <= set(testkit.pids_with_env("PAPERBUS_TEST_TAG", procs.tag))
    assert any(e["event"] == "all actors running" for e in testkit.log_events(run_dir))

    assert testkit.shutdown(p, run_dir, timeout=20) == 0
    testkit.wait_gone(list(pids.values()), 5)
    assert testkit.actor_processes(run_dir) == {} and testkit.rss_kb(pids["a"]) is None
    assert testkit.status(run_dir) is None


def test_a_supervisor_that_exits_early_is_an_error_naming_its_exit(procs: Procs, run_dir):
    with pytest.raises(RuntimeError, match=r"supervisor exited 2 before running: .*no_such_key"):
        testkit.start_supervisor(run_dir, "tests/fixtures/dummies.toml", ["supervisor.no_such_key=1"],
                                 spawn=procs.spawn, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_proc_stat_reads_a_process_name_with_spaces_and_parens(procs: Procs):
    # comm is "pid (comm) state ...": a name holding ") S 1 (" must not shift the fields.
    child = procs.python("-c", "open('/proc/self/comm', 'w').write(') S 1 ('); input()",
                         stdin=subprocess.PIPE, new_session=False)
    try:
        testkit.wait_for(lambda: open(f"/proc/{child.pid}/comm").read().strip() == ") S 1 (", 10, "renamed")
        state, ppid, start = testkit.proc_stat(child.pid)
        assert ppid == os.getpid() and state in ("R", "S") and start > 0
        assert testkit.same_process(child.pid, start) and not testkit.same_process(child.pid, start + 1)
    finally:
        child.communicate(b"\n", timeout=10)
    assert testkit.pid_state(child.pid) is None  # reaped

"""README.md's "Writing a strategy" example works verbatim, from a directory of its own.

The Python and TOML blocks and the command are parsed out of the README, so this
breaks as soon as the README drifts from what works.
"""

import os
import re
import shlex
import signal
import subprocess

import pytest

from tests.harness import PY, ROOT, wait_for
from tests.sup_util import field, phase


def readme_example():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a strategy"):]
    section = section[:section.index("\n## ", 1)]
    blocks = {lang: body for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S)}
    return blocks["python"], blocks["toml"], blocks["sh"].strip(), section


def set_up(tmp):
    """The README's files where it says to put them; returns the supervisor's argv."""
    py, toml, cmd, _ = readme_example()
    plugin = re.search(r'^plugin = "([\w.]+):(\w+)"', toml, re.M)
    module, cls = plugin.groups()
    assert f"class {cls}(" in py
    path = os.path.join(tmp, *module.split(".")) + ".py"
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(py)
    argv = shlex.split(cmd)
    assert argv[:2] == ["/path/to/paperbus/.venv/bin/python", "/path/to/paperbus/supervisor.py"], argv
    conf = argv[argv.index("--config") + 1]
    with open(os.path.join(tmp, conf), "w") as f:
        f.write(toml)
    return [PY, str(ROOT / "supervisor.py"), *argv[2:]], conf, f"{module}:{cls}"


@pytest.mark.timeout(60)
def test_readme_strategy_runs_live_from_its_own_directory(procs, run_dir):
    argv, _, plugin = set_up(run_dir)
    p = procs.spawn(argv, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rd = os.path.join(run_dir, "run")  # the default run directory, under the directory it was started in
    wait_for(lambda: p.poll() is not None or phase(rd) == "running", 30, "every actor running")
    assert p.poll() is None, p.communicate()[1].decode()[-3000:]
    assert field(rd, "actors", "strategy", "info", "plugin") == plugin  # its READY info
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err.decode()[-3000:]


@pytest.mark.timeout(90)
def test_readme_strategy_backtests_with_base_backtest(procs, run_dir):
    argv, conf, _ = set_up(run_dir)
    _, toml, _, section = readme_example()
    assert 'With `base = "backtest"` instead, the same file backtests' in section
    with open(os.path.join(run_dir, conf), "w") as f:
        f.write(toml.replace('base = "default"', 'base = "backtest"', 1))
    p = procs.spawn(argv, cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=80)
    assert p.returncode == 0, err.decode()[-3000:]
    assert "period        2004-08-19 -> 2013-03-01 (2148 bars)" in out.decode()
    with open(os.path.join(run_dir, "run-backtest", "latest", "fills.csv")) as f:
        assert sum(1 for _ in f) > 1  # the breakout traded

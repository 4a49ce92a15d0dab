"""Every command the README shows runs as written from a fresh clone.

Commands come from the README's ``sh`` blocks and from inline code that starts
with ``.venv/bin/python`` or ``make``: each names a program that exists, with
options and sub-commands that program accepts; a supervisor command's config and
``--set`` values load. A command written as plain ``python`` would only work
with the venv activated, so the README always writes ``.venv/bin/python``.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess

import pytest

import config as config_mod
from supervisor import parse_args
from tests.harness import PY, ROOT

pytestmark = pytest.mark.timeout(120)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.startswith((".venv/bin/python ", "python ", "make ")):
            cmds.append(span.strip())
    return cmds


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    r = subprocess.run([PY, script, "--help"], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 0, f"{script} --help: {r.stderr.decode()}"
    return r.stdout.decode()


def optional(words: list[str]) -> list[str]:
    """A synopsis like `[--config PATH] [--set k=v ...]`: its options, placeholders dropped."""
    return [w.strip("[]") for w in words if w.strip("[]").startswith("--")]


def test_readme_has_commands():
    cmds = readme_commands()
    assert any(c.startswith(".venv/bin/python supervisor.py") for c in cmds)
    assert any(c.startswith(".venv/bin/python scripts/ctl.py") for c in cmds)


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs_as_written(cmd):
    words = shlex.split(cmd)
    if words[0].startswith("/path/to/paperbus/"):
        # Run from the user's own directory: tests/test_readme_strategy.py runs it for real.
        words = [w.replace("/path/to/paperbus/", "") for w in words]
        assert words[0] == ".venv/bin/python" and (ROOT / words[1]).is_file(), cmd
        return
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        r = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        return
    assert words[0] == ".venv/bin/python", f"{cmd!r}: write .venv/bin/python (works without activating the venv)"
    script = words[1]
    assert (ROOT / script).is_file(), f"{cmd!r}: no {script}"
    args = words[2:]
    if any("[" in w or w.isupper() for w in args):  # a synopsis: check the options it names exist
        for opt in optional(args):
            assert opt in help_text(script), f"{cmd!r}: {script} has no option {opt}"
        return
    if script == "supervisor.py":
        ns = parse_args(args)
        config_mod.load(str(ROOT / ns.config) if ns.config else None, ns.sets)  # raises ConfigError naming the key
        return
    text = help_text(script)
    for w in args:
        if w.startswith("--"):
            assert w.split("=")[0] in text, f"{cmd!r}: {script} has no option {w}"
    if script == "scripts/ctl.py":
        sub = [w for w in args if not w.startswith("-")]
        if sub:
            assert re.search(r"\{[^}]*\b" + re.escape(sub[0]) + r"\b", text), f"{cmd!r}: ctl has no command {sub[0]}"

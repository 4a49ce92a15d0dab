"""A client that knows only docs/PROTOCOL.md drives the real system.

tests/conformance_client.py uses plain pyzmq, the ``msgpack`` package and the
standard library (checked below) and runs isolated (``python -I``: the project
is not importable). It connects to a real supervisor started from
config/default.toml, and walks through what the document promises: ctl status,
market data and state subscriptions, snapshots, limit and market orders on its
own DEALER identity, acks, fills, query-reply, rejects and errors with their
codes, cancels, reply order, an oversized frame, 64-bit ns times, contiguous
seq on every stream, unknown fields ignored. Then the state view and the status
it saw are held to the doc's tables.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys

import pytest

from actors.state_view import KEYS
from scripts import protocol_doc as pd
from tests.harness import PY, ROOT
from tests.sup_util import start_supervisor

pytestmark = pytest.mark.timeout(120)

CLIENT = ROOT / "tests" / "conformance_client.py"
FAST = ["market_data.rate_hz=50", "strategy.params={ fast = 2, slow = 4, qty = 10 }"]


def client_imports() -> set[str]:
    tree = ast.parse(CLIENT.read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return mods | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_a_client_written_from_the_doc_works_against_the_real_system(procs, run_dir):
    assert client_imports() - set(sys.stdlib_module_names) == {"zmq", "msgpack"}
    sup = start_supervisor(procs, run_dir, config="config/default.toml", sets=FAST, timeout=30)
    try:
        client = procs.spawn([PY, "-I", str(CLIENT), run_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = client.communicate(timeout=90)
        assert client.returncode == 0, err.decode()
        report = json.loads(out)
        assert len(report["checked"]) >= 15, report["checked"]
        # The view it was served is the documented one: every key, every field it saw.
        assert set(report["state"]) == set(KEYS)
        assert pd.view_problems(pd.view_shape(report["state"]), require_all=False) == []
    finally:
        sup.send_signal(signal.SIGINT)
        assert sup.wait(30) == 0

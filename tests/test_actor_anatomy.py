"""A fifth actor in an hour (docs/ARCHITECTURE.md, "Anatomy of an actor").

``Greeter`` below is a whole actor, defined in this one file: it runs under the
real supervisor with nothing edited anywhere else, takes its params from its
own config table, and answers a ctl command. The shipped example
(actors/echo.py) runs beside it, with an endpoint and a channel of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Annotated, Any

import msgspec
import pytest
import zmq

import config
from actors.base import Actor, main
from actors.echo import Echo, Ping, Pong
from bus.codec import Stamper
from bus.sockets import EndpointError, Endpoints, open_port
from tests.harness import PY, ROOT
from tests.sup_util import start_supervisor, status

pytestmark = pytest.mark.timeout(60)


class GreeterParams(config.Params):
    greeting: str = "hello"
    times: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1


class Greeter(Actor):
    name = "greeter"
    Params = GreeterParams
    commands = {"greet": "greet name=NAME, `times` times"}

    def init(self) -> dict[str, Any]:
        return {"greeting": self.params.greeting}

    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"message": " ".join([f"{self.params.greeting} {args.get('name', 'world')}"] * self.params.times)}


if __name__ == "__main__":
    main(Greeter)


CONFIG = """\
[supervisor]
heartbeat_ms = 100

[actors.greeter]
module = "tests.test_actor_anatomy"
params = { greeting = "hi", times = 2 }

[actors.echo]
module = "actors.echo"
params = { times = 3, prefix = "> " }
"""


@pytest.fixture
def config_file(run_dir):
    path = os.path.join(run_dir, "two.toml")
    with open(path, "w") as f:
        f.write(CONFIG)
    return path


def ctl(run_dir, *args):
    return subprocess.run([PY, "scripts/ctl.py", "--run-dir", run_dir, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=20)


def test_an_actor_in_one_file_runs_takes_its_params_and_answers_ctl(procs, run_dir, config_file):
    rd = os.path.join(run_dir, "r")
    p = start_supervisor(procs, rd, config=config_file)
    assert status(rd)["actors"]["greeter"]["info"] == {"greeting": "hi"}
    r = ctl(rd, "send", "greeter", "greet", "name=bob")
    assert r.returncode == 0 and r.stdout == "send: ok\n  greeter: hi bob hi bob\n", r
    r = ctl(rd, "send", "greeter")
    assert r.returncode == 0 and r.stdout == "send: ok: commands of greeter:\n  greet: greet name=NAME, `times` times\n"
    r = ctl(rd, "send", "greeter", "wave")
    assert r.returncode == 1 and r.stderr == (
        "ctl: send failed: greeter has no command 'wave' (its commands: greet; `ctl send greeter` lists them)\n")
    r = ctl(rd, "send", "nobody", "greet")
    assert r.returncode == 1 and "unknown actor 'nobody' (actors: greeter, echo)" in r.stderr
    r = ctl(rd, "send", "greeter", "greet", "name")
    assert r.returncode == 2 and r.stderr == "ctl: send: argument 'name': expected KEY=VALUE\n"

    # The example's own endpoint and channel: a client names the declaration it talks to.
    eps = Endpoints.from_run_dir(rd, declared=Echo.declared_endpoints("echo"))
    ctx = zmq.Context()
    try:
        port = open_port(ctx, eps, "echo.ping", bind=False, stamper=Stamper("test", ""))
        port.send(Ping(text="yo"))
        assert port.sock.poll(5000)
        assert port.recv().msg == Pong(text="> yo yo yo", n=1)
        port.close()
    finally:
        ctx.term()
    r = ctl(rd, "send", "echo", "stats")
    assert r.returncode == 0 and r.stdout == "send: ok\n  echo: 1 ping(s) answered\n", r
    assert json.load(open(os.path.join(rd, "endpoints.json")))["echo.ping"] == f"ipc://{rd}/echo.ping.sock"
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0
    assert not [f for f in os.listdir(rd) if f.endswith(".sock")]  # the binder removed echo.ping.sock too


@pytest.mark.parametrize("sets,where,error", [
    (["actors.greeter.params.times=lots"], " (with --set overrides)",
     "key actors.greeter.params.times: Expected `int`, got `str`"),
    (["actors.greeter.params.times=0"], " (with --set overrides)",
     "key actors.greeter.params.times: Expected `int` >= 1"),
    (["actors.greeter.params.tiems=3"], " (with --set overrides)", "unknown key actors.greeter.params.tiems"),
    (["actors.echo.params={ times = 2, colour = \"red\" }"], " (with --set overrides)",
     "unknown key actors.echo.params.colour"),
    (["actors.greeter.module=tests.no_such_actor"], " (with --set overrides)",
     "key actors.greeter.module: cannot import 'tests.no_such_actor': No module named 'tests.no_such_actor'"),
    (["actors.greeter.module=tests.harness"], " (with --set overrides)",
     "key actors.greeter.module: module 'tests.harness' defines 0 Actor classes; an actor module defines exactly one"),
])
def test_a_bad_param_is_a_config_error_naming_the_key_and_touches_nothing(procs, run_dir, config_file, sets, where,
                                                                         error):
    rd = os.path.join(run_dir, "r")
    args = [PY, "supervisor.py", "--config", config_file, "--run-dir", rd]
    for s in sets:
        args += ["--set", s]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.decode().splitlines()[-1] == f"supervisor: config error: {config_file}{where}: {error}"
    assert not os.path.exists(rd)  # refused before anything was created


def test_a_bad_param_in_the_file_names_the_file(procs, run_dir, config_file):
    with open(config_file, "w") as f:
        f.write(CONFIG.replace('params = { greeting = "hi", times = 2 }', "[actors.greeter.params]\ngreeting = 5"))
    r = subprocess.run([PY, "supervisor.py", "--config", config_file, "--run-dir", os.path.join(run_dir, "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"supervisor: config error: {config_file}: key actors.greeter.params.greeting: "
                                         "Expected `str`, got `int`")


def test_the_shipped_actors_import_light():
    """The supervisor imports every configured actor's module to read its declarations:
    none may pull in a heavy library at import time (they do it in init())."""
    mods = ["actors.market_data", "actors.exchange", "actors.strategy", "actors.state_publisher", "actors.echo"]
    code = (f"import sys; import {', '.join(mods)}; "
            "print(sorted(m for m in ('pandas', 'pyarrow', 'matplotlib', 'numpy') if m in sys.modules))")
    r = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_declaration_mistakes_fail_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"\.Params must derive from config\.Params"):
        type("Bad", (Actor,), {"Params": dict})
    with pytest.raises(TypeError, match=r"\.commands maps each command name to its help text"):
        type("Bad", (Actor,), {"commands": {"go": ""}})
    with pytest.raises(ValueError, match="declares channel 'orders', which is the engine's"):
        type("Bad", (Actor,), {"channels": {"orders": (Ping, 1024)}})


def test_a_channel_or_endpoint_clash_is_refused(run_dir):
    with pytest.raises(ValueError, match="declares channel 'echo' differently from an earlier declaration"):
        type("Bad", (Actor,), {"channels": {"echo": (Ping, 1024)}})
    with pytest.raises(EndpointError, match="endpoint 'md.ref' declared by md is the engine's"):
        Endpoints(run_dir, declared=type("Md", (Actor,), {"binds": {"ref": Echo.binds["ping"]}})
                  .declared_endpoints("md"))


def test_the_engine_actors_declare_the_commands_the_fanouts_send():
    """ctl's fan-outs address roles; every actor with a role answers what is sent to that role."""
    from actors.exchange import PaperExchange
    from actors.strategy import StrategyActor
    from actors.supervision.control import CONTROL
    for cmd in CONTROL.values():
        for step in cmd.fanout:
            for cls in (PaperExchange, StrategyActor):
                if step.role in cls.roles:
                    assert step.command in cls.commands, (cmd.name, cls.__name__, step.command)


def test_an_actor_run_alone_checks_its_params_too(procs, run_dir):
    cfg = config.load(None, ["actors.echo.module=actors.echo", "actors.echo.params.times=0"])
    path = os.path.join(run_dir, "config.json")
    with open(path, "wb") as f:
        f.write(config.to_json_bytes(cfg))
    r = subprocess.run([PY, "-m", "actors.echo", "--run-dir", run_dir, "--config", path], cwd=ROOT,
                       capture_output=True, text=True, timeout=30, env=procs.env())
    assert r.returncode == 2
    assert r.stderr == f"echo: config error: {path}: key actors.echo.params.times: Expected `int` >= 1\n"

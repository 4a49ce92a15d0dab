"""Security: nothing on tcp by default, a private run directory, CurveZMQ on tcp.

Real supervisor, real actors, real sockets. On tcp every endpoint is a CURVE
server behind a ZAP handler that lets in only the allowed client keys: a client
without keys, or with a key that is not allowed, gets nothing (no reply, no
data on a PUB) and the binding process logs the refusal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess

import pytest
import zmq
import zmq.auth

import config as config_mod
from bus.codec import Stamper
from bus.messages import CtlRequest
from bus.security import CurveKeys, keygen
from bus.sockets import SPECS, EndpointError, Endpoints, open_port
from scripts.ctl import request
from tests.harness import PY, curve_sets, free_ports, wait_for
from tests.sup_util import log_events, start_supervisor, status

pytestmark = pytest.mark.timeout(120)

DEFAULT = "config/default.toml"
REFUSED_WAIT_MS = 1500  # long enough for a CURVE handshake on a loaded machine; a refused client never gets one


def system_pids(sup: subprocess.Popen, run_dir: str) -> list[int]:
    st = status(run_dir)
    return [sup.pid] + [a["pid"] for a in st["actors"].values() if a.get("pid")]


def _addr(hexaddr: str) -> str:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    host = ".".join(map(str, raw)) if len(raw) == 4 else raw.hex(":", 2)
    return f"{host}:{int(port, 16)}"


def tcp_listeners(pids: list[int]) -> list[str]:
    """Local addresses of LISTEN tcp/tcp6 sockets held by any of ``pids``."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                c = line.split()
                if c[3] == "0A" and c[9] in inodes:  # 0A = TCP_LISTEN
                    out.append(_addr(c[1]))
    return out


def not_private(root: str) -> list[str]:
    """Every file and directory under root that group or others can access at all."""
    bad = []
    for d, dirs, files in os.walk(root):
        for p in [d, *(os.path.join(d, f) for f in files)]:
            try:
                mode = os.stat(p).st_mode
            except FileNotFoundError:  # an atomic write's temp file, renamed meanwhile
                continue
            if mode & 0o077:
                bad.append(f"{p} {stat.filemode(mode)}")
    return bad


def test_default_system_listens_on_no_tcp_and_keeps_its_files_private(procs, run_dir):
    os.chmod(run_dir, 0o755)  # the supervisor must make it private itself
    p = start_supervisor(procs, run_dir, config=DEFAULT)
    pids = system_pids(p, run_dir)
    assert len(pids) == 5
    assert tcp_listeners(pids) == []
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    socks = sorted(f[:-5] for f in os.listdir(run_dir) if f.endswith(".sock"))
    assert socks == sorted(SPECS)
    wait_for(lambda: os.path.exists(os.path.join(run_dir, "status.json")), 10, "status.json")
    assert os.path.exists(os.path.join(run_dir, "ledger.sqlite"))
    assert not_private(run_dir) == []
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0
    assert not_private(run_dir) == []  # fills.csv, trades.csv written at shutdown too


def _run(procs, *args: str, timeout: float = 20) -> tuple[int, str, str]:
    p = procs.spawn([PY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def test_keygen_makes_private_keys_and_refuses_to_overwrite(procs, tmp_path):
    d = str(tmp_path / "keys")
    rc, out, err = _run(procs, "scripts/ctl.py", "keygen", d)
    assert rc == 0, err
    assert f'curve_server_key = "{d}/server.key"' in out and f'curve_allowed_clients = "{d}/allowed"' in out
    names = sorted(os.listdir(d))
    assert names == ["allowed", "client.key", "client.key_secret", "server.key", "server.key_secret"]
    assert not_private(d) == []
    with open(os.path.join(d, "client.key"), "rb") as a, open(os.path.join(d, "allowed", "client.key"), "rb") as b:
        assert a.read() == b.read()
    spub, ssec = zmq.auth.load_certificate(os.path.join(d, "server.key_secret"))
    cpub, csec = zmq.auth.load_certificate(os.path.join(d, "client.key_secret"))
    assert ssec and csec and spub != cpub
    assert zmq.auth.load_certificate(os.path.join(d, "server.key"))[1] is None  # the public file has no secret

    rc, _, err = _run(procs, "scripts/ctl.py", "keygen", d)
    assert rc == 1 and "keys exist already" in err and "--force" in err
    assert zmq.auth.load_certificate(os.path.join(d, "server.key_secret")) == (spub, ssec)  # untouched

    rc, _, err = _run(procs, "scripts/ctl.py", "keygen", d, "--force")
    assert rc == 0, err
    assert zmq.auth.load_certificate(os.path.join(d, "server.key_secret"))[0] != spub

    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    rc, _, err = _run(procs, "scripts/ctl.py", "keygen", str(not_dir))
    assert rc == 2 and "not a directory" in err
    rc, _, err = _run(procs, "scripts/ctl.py", "keygen", d, "extra")
    assert rc == 2 and "unrecognized arguments" in err
    rc, _, err = _run(procs, "scripts/ctl.py", "--force", "status")
    assert rc == 2 and "--force is only for keygen" in err


def refused(run_dir: str, process: str) -> list[dict]:
    try:
        return [e for e in log_events(run_dir, process) if e["event"] == "connection refused"]
    except FileNotFoundError:
        return []


def test_tcp_endpoints_require_an_allowed_curve_key(procs, run_dir, tmp_path):
    keys = str(tmp_path / "keys")
    base = free_ports(len(SPECS))
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=[
        "bus.transport=tcp", f"bus.tcp_base_port={base}", *curve_sets(keys)])
    # ctl status (start_supervisor used it) works with the installation's client key
    st = status(run_dir)
    assert all(a["state"] == "running" for a in st["actors"].values())
    with open(os.path.join(run_dir, "endpoints.json"), "rb") as f:
        raw = f.read()
    eps = json.loads(raw)
    assert eps["control"] == f"tcp://127.0.0.1:{base}"
    assert set(eps["curve"]) == {"server_key", "server_public", "client_key"}
    for name in ("server.key_secret", "client.key_secret"):  # paths and public keys only, never a secret
        assert zmq.auth.load_certificate(os.path.join(keys, name))[1] not in raw
    listening = tcp_listeners(system_pids(p, run_dir))
    assert sorted(int(a.rsplit(":", 1)[1]) for a in listening) == list(range(base, base + len(SPECS)))
    assert all(a.startswith("127.0.0.1:") for a in listening), listening

    # A client without CURVE: a well-formed request, and no reply.
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(eps["control"])
        s.send(Stamper("intruder", "").encode("control", CtlRequest(id="x", cmd="status", arg="")))
        assert s.poll(REFUSED_WAIT_MS) == 0
        # A subscriber without CURVE gets no market data, while one with the key does.
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(b"")
        sub.connect(eps["md"])
        good = open_port(ctx, Endpoints.from_run_dir(run_dir), "md", bind=False, stamper=Stamper("t", ""),
                         subscribe=["md."])
        assert good.sock.poll(10_000), "a subscriber with the allowed key receives bars"
        good.close()
        assert sub.poll(REFUSED_WAIT_MS) == 0
    finally:
        ctx.destroy(linger=0)

    # A valid key pair that is not in the allowed directory.
    other = str(tmp_path / "other")
    keygen(other)
    other_key = os.path.join(other, "client.key_secret")
    other_pub = zmq.auth.load_certificate(other_key)[0].decode()
    with pytest.raises(RuntimeError, match="no reply from the supervisor"):
        request(run_dir, "status", timeout=REFUSED_WAIT_MS / 1000, key=other_key)
    rc, _, err = _run(procs, "scripts/monitor.py", "--run-dir", run_dir, "--once", "--timeout", "2",
                      "--key", other_key)
    assert rc == 1 and "no state" in err

    # Both refusals are logged by the binder, naming the endpoint, the peer and the key.
    wait_for(lambda: {e.get("client_key") for e in refused(run_dir, "supervisor")} >= {"", other_pub}, 10,
             "both control refusals in the supervisor's log")
    ev = refused(run_dir, "supervisor")
    nokey = next(e for e in ev if e["client_key"] == "")
    assert nokey["endpoint"] == "control" and nokey["addr"] == eps["control"] and nokey["level"] == "warning"
    assert "CURVE" in nokey["reason"]
    badkey = next(e for e in ev if e["client_key"] == other_pub)
    assert badkey["endpoint"] == "control" and badkey["reason"] == "client key not allowed"
    assert badkey["peer"] == "127.0.0.1"
    wait_for(lambda: any(e["endpoint"] == "md" for e in refused(run_dir, "market-data")), 10,
             "the subscriber's refusal in market-data's log")

    # The monitor works over tcp with the installation's key ...
    rc, out, err = _run(procs, "scripts/monitor.py", "--run-dir", run_dir, "--once", "--json")
    assert rc == 0, err
    assert json.loads(out)["run_id"] == st["run_id"]
    # ... and a key added to the allowed directory is let in, without a restart.
    shutil.copy(os.path.join(other, "client.key"), os.path.join(keys, "allowed", "other.key"))
    assert request(run_dir, "status", timeout=5, key=other_key).ok
    # A remote user: a copy of endpoints.json (whose key paths mean nothing on
    # their host) and their own key are all ctl needs.
    remote = tmp_path / "remote"
    remote.mkdir(mode=0o700)
    eps["curve"] = {**eps["curve"], "server_key": "/elsewhere/server.key", "client_key": "/elsewhere/c.key_secret"}
    (remote / "endpoints.json").write_text(json.dumps(eps))
    rc, out, err = _run(procs, "scripts/ctl.py", "--run-dir", str(remote), "--key", other_key, "--json", "status")
    assert rc == 0, err
    assert json.loads(out)["data"]["run_id"] == st["run_id"]

    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0


def _bad_keys(kind: str, keys: str, base: int) -> list[str]:
    sets = ["bus.transport=tcp", f"bus.tcp_base_port={base}"]
    if kind == "no keys":
        return sets
    if kind == "tcp override, no keys":
        return [f'bus.endpoints={{ orders = "tcp://127.0.0.1:{base}" }}']
    sets += curve_sets(keys)
    if kind == "missing file":
        sets.append(f"bus.curve_client_key={keys}/nope.key_secret")
    elif kind == "world-readable secret":
        os.chmod(os.path.join(keys, "client.key_secret"), 0o644)
    elif kind == "group-readable server secret":
        os.chmod(os.path.join(keys, "server.key_secret"), 0o640)
    elif kind == "no allowed keys":
        os.unlink(os.path.join(keys, "allowed", "client.key"))
    return sets


@pytest.mark.parametrize("kind, needles", [
    ("no keys", ["key bus.curve_server_key", "bus.transport = tcp", "ctl.py keygen"]),
    ("tcp override, no keys", ["key bus.curve_server_key", "tcp://127.0.0.1:"]),
    ("missing file", ["nope.key_secret", "No such file"]),
    ("world-readable secret", ["client.key_secret is accessible by group/others", "0644", "chmod 600"]),
    ("group-readable server secret", ["server.key_secret is accessible by group/others", "0640"]),
    ("no allowed keys", ["allowed", "no *.key certificate"]),
])
def test_bad_curve_config_is_a_config_error(procs, run_dir, tmp_path, kind, needles):
    keys = str(tmp_path / "keys")
    base = free_ports(len(SPECS))
    p = start_supervisor(procs, run_dir, config=DEFAULT, sets=_bad_keys(kind, keys, base), wait_running=False)
    assert p.wait(20) == 2
    err = p.stderr.read().decode()
    assert "config error" in err and all(n in err for n in needles), err


def test_no_plain_tcp_socket_can_be_opened(run_dir):
    """Fail closed below the config: a tcp endpoint without keys is an error, not an open port."""
    eps = Endpoints(run_dir, transport="tcp", tcp_base_port=free_ports(len(SPECS)))
    ctx = zmq.Context()
    try:
        for bind in (True, False):
            with pytest.raises(EndpointError, match="tcp endpoints need CurveZMQ keys"):
                open_port(ctx, eps, "orders", bind=bind, stamper=Stamper("t", ""))
    finally:
        ctx.term()


def test_closing_a_curve_server_releases_its_monitor(run_dir, tmp_path):
    """Each CURVE server socket has a monitor the ZAP guard reads; closing the socket must close
    the guard's end too (MONITOR_STOPPED), or every bind/close cycle leaks a socket."""
    import gc
    keys = keygen(str(tmp_path / "keys"))
    ctx = zmq.Context()

    def monitors() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, zmq.Socket) and o.context is ctx
                   and not o.closed and o.type == zmq.PAIR)
    try:
        for _ in range(3):
            eps = Endpoints(run_dir, overrides={"orders": f"tcp://127.0.0.1:{free_ports(1)}"})
            eps.curve = CurveKeys(keys["server"], keys["client_secret"], keys["allowed"])
            open_port(ctx, eps, "orders", bind=True, stamper=Stamper("t", "")).close()
        wait_for(lambda: monitors() == 0, 10, "the guard to close the monitors of closed sockets")
    finally:
        ctx.term()


def test_key_paths_are_made_absolute(tmp_path, monkeypatch):
    """Relative key paths: to the config file's directory; in --set, to the current directory."""
    keygen(str(tmp_path / "conf" / "keys"))
    cfg_file = tmp_path / "conf" / "my.toml"
    cfg_file.write_text('base = "%s"\n[bus]\ntransport = "tcp"\ncurve_server_key = "keys/server.key"\n'
                        'curve_client_key = "keys/client.key_secret"\ncurve_allowed_clients = "keys/allowed"\n'
                        % os.path.abspath(DEFAULT))
    cfg = config_mod.load(cfg_file)
    assert cfg.bus.curve_server_key == str(tmp_path / "conf" / "keys" / "server.key")
    assert cfg.bus.curve_allowed_clients == str(tmp_path / "conf" / "keys" / "allowed")
    # Inherited through `base` from another directory: still relative to the file that names them.
    child = tmp_path / "elsewhere" / "child.toml"
    child.parent.mkdir()
    child.write_text('base = "../conf/my.toml"\n')
    assert config_mod.load(child).bus.curve_server_key == str(tmp_path / "conf" / "keys" / "server.key")
    monkeypatch.chdir(tmp_path)
    cfg = config_mod.load(cfg_file, ["bus.curve_client_key=conf/keys/client.key_secret"])
    assert cfg.bus.curve_client_key == str(tmp_path / "conf" / "keys" / "client.key_secret")

"""CurveZMQ for tcp endpoints; used only by bus/sockets.py (and ``ctl.py keygen``).

ipc endpoints need nothing here: they are files in a 0700 run directory, 0600
each. Every tcp endpoint is CURVE: the binder is a CURVE server holding the
deployment's server secret; every connector is a CURVE client that knows the
server's public key and has its own key pair. Which client keys get in is
decided by a ZAP handler (RFC 27) that this module runs in one thread per
zmq.Context that binds tcp: it lets in only keys found in the allowed-clients
directory, refuses everything else, and logs each refusal (endpoint, address,
peer, client key, reason). A socket monitor on each CURVE socket catches the
refusals ZAP never sees (a client without CURVE at all, a wrong server key).

Keys are zmq.auth certificate files (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys and must be
0600 (a group/world-readable secret is refused).
"""

from __future__ import annotations

import contextvars
import os
import queue
import socket
import stat
import struct
import threading
import time
import weakref
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
KEYGEN_HINT = "make keys with `python scripts/ctl.py keygen`"
# MONITOR_STOPPED included: libzmq sends it on close only when asked, and it is
# what tells the guard to close its end (else one PAIR leaks per closed socket).
_MONITORED = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_MONITOR_STOPPED)
REPEAT_LOG_S = 10.0  # the same refusal (endpoint + key or reason) is logged at most once per this, with a count
_PROTOCOL_NAMES = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):].lower() for n in dir(zmq)
                   if n.startswith("PROTOCOL_ERROR_")}


class SecurityError(ValueError):
    """A key file that is missing, unreadable, malformed or not private; names the file."""


def _check_private(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise SecurityError(f"CurveZMQ key file {path}: {e.strerror} ({KEYGEN_HINT})") from None
    if st.st_mode & 0o077:
        raise SecurityError(f"CurveZMQ secret key file {path} is accessible by group/others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it: chmod 600 {path}")


def _load(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    if secret:
        _check_private(path)
    elif not os.path.isfile(path):
        raise SecurityError(f"CurveZMQ key file {path}: no such file ({KEYGEN_HINT})")
    try:
        pub, sec = zmq.auth.load_certificate(path)
    except OSError as e:
        why = e.strerror or "no such file"
        raise SecurityError(f"CurveZMQ key file {path}: cannot read it: {why} ({KEYGEN_HINT})") from None
    except ValueError as e:
        raise SecurityError(f"CurveZMQ key file {path}: {e}") from None
    for what, k in (("public", pub), ("secret", sec)):
        if k is None:
            continue
        try:
            if len(k) != 40 or len(z85.decode(k)) != 32:
                raise ValueError
        except ValueError:
            raise SecurityError(f"CurveZMQ key file {path}: {what}-key is not a 40-character Z85 key") from None
    if secret and sec is None:
        raise SecurityError(f"CurveZMQ key file {path}: no secret-key in it (a public certificate? "
                            f"use the .key_secret file)")
    return pub, sec


def load_allowed(directory: str) -> set[bytes]:
    """Public keys (Z85) of every ``*.key`` certificate in ``directory``."""
    if not os.path.isdir(directory):
        raise SecurityError(f"CurveZMQ allowed-clients directory {directory}: not a directory ({KEYGEN_HINT})")
    try:
        keys = set(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as e:
        raise SecurityError(f"CurveZMQ allowed-clients directory {directory}: {e}") from None
    if not keys:
        raise SecurityError(f"CurveZMQ allowed-clients directory {directory}: no *.key certificate in it, "
                            f"so no client could connect")
    return keys


class CurveKeys:
    """Where this process's CURVE keys are, loaded and checked at construction.

    ``server_key``: the server certificate (public ``.key``; a binder reads the
    secret from ``<server_key>_secret``). ``client_key``: this installation's
    client secret certificate (connectors). ``allowed_clients``: directory of
    allowed client public certificates (binders). Empty = not available to this
    process: binding (or connecting) tcp then fails with a clear error.
    """

    def __init__(self, server_key: str, client_key: str = "", allowed_clients: str = "", *,
                 server_secret: bool = True, server_public: bytes | None = None):
        self.server_key = os.path.abspath(server_key) if server_key else ""
        self.client_key = os.path.abspath(client_key) if client_key else ""
        self.allowed_clients = os.path.abspath(allowed_clients) if allowed_clients else ""
        if not self.server_key:
            raise SecurityError(f"no CurveZMQ server key given ({KEYGEN_HINT})")
        # A client given the public key (endpoints.json) needs no file: a copy of
        # endpoints.json is all a remote client needs besides its own key.
        self.server_public = server_public or _load(self.server_key, secret=False)[0]
        self.server_secret: bytes | None = None
        if server_secret:
            p = self.server_key if self.server_key.endswith("_secret") else self.server_key + "_secret"
            pub, self.server_secret = _load(p, secret=True)
            if pub != self.server_public:
                raise SecurityError(f"CurveZMQ key files {self.server_key} and {p} are not one key pair")
        self.client_public: bytes | None = None
        self.client_secret: bytes | None = None
        if self.client_key:
            self.client_public, self.client_secret = _load(self.client_key, secret=True)
        if self.allowed_clients:
            load_allowed(self.allowed_clients)

    def published(self) -> dict[str, str]:
        """What a client needs, for endpoints.json: paths and public keys, never a secret."""
        return {"server_key": self.server_key, "server_public": self.server_public.decode(),
                "client_key": self.client_key}

    @classmethod
    def from_published(cls, d: dict[str, Any], client_key: str | None = None) -> "CurveKeys":
        """Client side (ctl, monitor): the server's public key and a client key pair."""
        if not isinstance(d, dict) or not isinstance(d.get("server_key"), str):
            raise SecurityError("endpoints.json: 'curve' is not a map with server_key")
        pub = d.get("server_public")
        if pub is not None:
            try:
                if not isinstance(pub, str) or len(pub) != 40 or len(z85.decode(pub.encode())) != 32:
                    raise ValueError
            except ValueError:
                raise SecurityError("endpoints.json: curve.server_public is not a 40-character Z85 key") from None
        return cls(d["server_key"], client_key or str(d.get("client_key") or ""), server_secret=False,
                   server_public=pub.encode() if pub else None)

    # ----------------------------------------------------------- socket options
    def secure_bind(self, sock: zmq.Socket, name: str, addr: str) -> None:
        """Make ``sock`` a CURVE server whose clients ZAP checks; call before bind()."""
        if self.server_secret is None or not self.allowed_clients:
            raise SecurityError(f"endpoint {name} ({addr}) is tcp: binding it needs the server secret and "
                                f"bus.curve_allowed_clients ({KEYGEN_HINT})")
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.zap_domain = name.encode()
        # Fail closed: without an answering ZAP handler libzmq would let every key in.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        _guard_for(sock.context, self.allowed_clients).watch(sock, name, addr)

    def secure_connect(self, sock: zmq.Socket, name: str, addr: str) -> None:
        if self.client_secret is None:
            raise SecurityError(f"endpoint {name} ({addr}) is tcp: connecting needs a CurveZMQ client key "
                                f"(bus.curve_client_key, or --key FILE; {KEYGEN_HINT})")
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


def unwatch(sock: zmq.Socket) -> None:
    """Before closing a CURVE server socket: stop its monitor (the guard closes its end)."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass


# --------------------------------------------------------------------- guard
class _Guard:
    """ZAP handler + refusal logger for one zmq.Context, in one daemon thread.

    The thread owns every zmq socket it uses (ZAP REP, monitor PAIRs) and closes
    them when the context terminates, so ``ctx.term()`` never waits on it.
    Requests reach it through a queue plus a socketpair that wakes its poll.
    """

    def __init__(self, ctx: zmq.Context, allowed_dir: str):
        self.ctx = ctx
        self.allowed_dir = allowed_dir
        self._allowed: set[bytes] = set()
        self._allowed_sig: tuple | None = None
        self._q: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._started = threading.Event()
        self._error: str = ""
        self._names: dict[str, str] = {}  # ZAP domain (endpoint name) -> address
        self._recent: dict[tuple, list] = {}  # refusal key -> [last logged, repeats since]
        self._lock = threading.Lock()
        # Run in a copy of the caller's context: structlog's bound process/pid/run_id come along.
        cv = contextvars.copy_context()
        self.thread = threading.Thread(target=cv.run, args=(self._run,), name="paperbus-zap", daemon=True)
        self.thread.start()
        if not self._started.wait(10) or self._error:
            raise SecurityError(f"cannot start the ZAP handler: {self._error or 'timeout'}")

    def watch(self, sock: zmq.Socket, name: str, addr: str) -> None:
        mon = f"inproc://paperbus.monitor.{id(sock):x}.{time.monotonic_ns()}"
        sock.monitor(mon, _MONITORED)  # in the socket's own thread, as libzmq requires
        done = threading.Event()
        with self._lock:
            if not self.thread.is_alive():
                raise SecurityError("the ZAP handler thread is not running")
            self._q.put(("watch", mon, name, addr, done))
            self._wake_w.send(b"\0")
        if not done.wait(10):
            raise SecurityError(f"endpoint {name}: the ZAP handler did not take the socket monitor")

    # ------------------------------------------------------------ the thread
    def _log(self) -> Any:
        from bus import log as logmod  # imported late: bus.log configures structlog per process
        return logmod.get()

    def refused(self, endpoint: str, reason: str, peer: str = "", client_key: str = "") -> None:
        """Structured warning, at most once per REPEAT_LOG_S for the same endpoint and key/reason."""
        k = (endpoint, client_key or reason)
        now = time.monotonic()
        r = self._recent.get(k)
        if r is not None and now - r[0] < REPEAT_LOG_S:
            r[1] += 1
            return
        if len(self._recent) > 1000:  # a flood of distinct keys must not grow this without bound
            self._recent.clear()
        repeats = r[1] if r else 0
        self._recent[k] = [now, 0]
        self._log().warning("connection refused", endpoint=endpoint, addr=self._names.get(endpoint, ""),
                            peer=peer, client_key=client_key, reason=reason,
                            **({"repeats": repeats} if repeats else {}))

    def allowed(self) -> set[bytes]:
        # Re-read when the directory changes: adding or deleting a certificate
        # takes effect at the next handshake, no restart needed. Unreadable: nobody gets in.
        try:
            st = os.stat(self.allowed_dir)
            sig = (st.st_mtime_ns, st.st_ino)
            if sig != self._allowed_sig:
                self._allowed = load_allowed(self.allowed_dir)
                self._allowed_sig = sig
        except (OSError, SecurityError) as e:
            self._log().error("cannot read allowed client keys; refusing every client", error=str(e))
            self._allowed, self._allowed_sig = set(), None
        return self._allowed

    def _zap(self, zap: zmq.Socket) -> None:
        frames = zap.recv_multipart()
        if len(frames) < 6:
            if len(frames) >= 2:
                zap.send_multipart([b"1.0", frames[1], b"400", b"bad ZAP request", b"", b""])
            return
        version, rid, domain, address, _identity, mech = frames[:6]
        creds = frames[6:]
        name = domain.decode(errors="replace")
        peer = address.decode(errors="replace")
        if version != b"1.0":
            zap.send_multipart([b"1.0", rid, b"400", b"bad ZAP version", b"", b""])
            return
        if mech == b"CURVE" and len(creds) == 1 and len(creds[0]) == 32:
            key = z85.encode(creds[0])
            if key in self.allowed():
                zap.send_multipart([b"1.0", rid, b"200", b"OK", key, b""])
                return
            self.refused(name, "client key not allowed", peer=peer, client_key=key.decode())
            zap.send_multipart([b"1.0", rid, b"400", b"client key not allowed", b"", b""])
        elif mech == b"NULL" and not domain:
            # An ipc socket of this process (no ZAP domain): protected by file permissions.
            zap.send_multipart([b"1.0", rid, b"200", b"OK", b"", b""])
        else:
            self.refused(name, f"mechanism {mech.decode(errors='replace')} not accepted", peer=peer)
            zap.send_multipart([b"1.0", rid, b"400", b"mechanism not accepted", b"", b""])

    def _monitor_event(self, m: dict[str, Any], frames: list[bytes]) -> bool:
        """Handle one monitor event; False once the monitor stopped."""
        event, value = struct.unpack("=hi", frames[0][:6])
        name = m["name"]
        if event == zmq.EVENT_MONITOR_STOPPED:
            return False
        if event == zmq.EVENT_ACCEPTED:
            # The peer's address, if the I/O thread still holds the fd. Best
            # effort: a connection that failed at once may have closed it, and
            # the fd number may then be reused, so it must still be a
            # connection to this endpoint's port.
            m["peers"][value] = ""
            try:
                with socket.socket(fileno=os.dup(value)) as s:
                    if s.getsockname()[1] == m["port"]:
                        host, port = s.getpeername()[:2]
                        m["peers"][value] = f"{host}:{port}"
            except (OSError, IndexError):
                pass
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                m["pending"] = "client does not use CURVE (no keys?)"
            elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                m["pending"] = "CURVE handshake failed (client has another server key?)"
            else:
                m["pending"] = f"handshake protocol error {_PROTOCOL_NAMES.get(value, value)}"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # Typically the client hung up first, having seen the server speak CURVE.
            m["pending"] = (f"handshake failed ({os.strerror(value) if 0 < value < 200 else value}; "
                            f"a client without CURVE keys or with another server key?)")
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED):
            m["pending"] = None  # ZAP logged the refusal with the client key
        elif event == zmq.EVENT_DISCONNECTED:
            # libzmq reports the failure and then the disconnect of the same
            # connection back to back on its I/O thread: the fd names the peer.
            peer = m["peers"].pop(value, "")
            if m["pending"]:
                self.refused(name, m["pending"], peer=peer)
                m["pending"] = None
        return True

    def _run(self) -> None:
        zap = None
        monitors: dict[zmq.Socket, dict[str, Any]] = {}
        try:
            try:
                zap = self.ctx.socket(zmq.REP)
                zap.linger = 0
                zap.bind(ZAP_ENDPOINT)
                self.allowed()
            except zmq.ZMQError as e:
                self._error = str(e)
                return
            finally:
                self._started.set()
            poller = zmq.Poller()
            poller.register(zap, zmq.POLLIN)
            poller.register(self._wake_r.fileno(), zmq.POLLIN)
            while True:
                try:
                    ready = dict(poller.poll())
                    if zap in ready:
                        self._zap(zap)
                    for s in [s for s in monitors if s in ready]:
                        if not self._monitor_event(monitors[s], s.recv_multipart()):
                            poller.unregister(s)
                            monitors.pop(s)
                            s.close(0)
                    if self._wake_r.fileno() in ready:
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                        while not self._q.empty():
                            _, mon, name, addr, done = self._q.get_nowait()
                            s = self.ctx.socket(zmq.PAIR)
                            s.linger = 0
                            s.connect(mon)
                            port = addr.rsplit(":", 1)[-1]
                            monitors[s] = {"name": name, "peers": {}, "pending": None,
                                           "port": int(port) if port.isdigit() else -1}
                            self._names[name] = addr
                            poller.register(s, zmq.POLLIN)
                            done.set()
                except zmq.ZMQError:
                    return  # ETERM (context terminating) or ENOTSOCK (ctx.destroy): we are done
        finally:
            for s in [zap, *monitors]:
                if s is not None:
                    s.close(0)
            with self._lock:
                _drop_guard(self.ctx)
                self._wake_r.close()
                self._wake_w.close()


_guards: dict[int, tuple[weakref.ref, _Guard]] = {}
_guards_lock = threading.Lock()


def _drop_guard(ctx: zmq.Context) -> None:
    with _guards_lock:
        ent = _guards.get(id(ctx))
        if ent is not None and ent[0]() is ctx:
            del _guards[id(ctx)]


def _guard_for(ctx: zmq.Context, allowed_dir: str) -> _Guard:
    """The context's guard, started on its first CURVE bind (ZAP is per context)."""
    with _guards_lock:
        ent = _guards.get(id(ctx))
        if ent is not None and ent[0]() is ctx and ent[1].thread.is_alive():
            g = ent[1]
            if g.allowed_dir != allowed_dir:
                raise SecurityError(f"one zmq context cannot use two allowed-clients directories "
                                    f"({g.allowed_dir}, {allowed_dir})")
            return g
        g = _Guard(ctx, allowed_dir)
        _guards[id(ctx)] = (weakref.ref(ctx), g)
        return g


# -------------------------------------------------------------------- keygen
def keygen(directory: str, force: bool = False) -> dict[str, str]:
    """Make a server and a client key pair in ``directory`` (0700), secrets 0600,
    and allow the client: its public certificate goes into ``directory/allowed``.

    Refuses (FileExistsError) to replace existing keys unless ``force``.
    """
    d = os.path.abspath(directory)
    if os.path.exists(d) and not os.path.isdir(d):
        raise NotADirectoryError(f"{d} exists and is not a directory")
    allowed = os.path.join(d, "allowed")
    made = {"server": os.path.join(d, "server.key"), "server_secret": os.path.join(d, "server.key_secret"),
            "client": os.path.join(d, "client.key"), "client_secret": os.path.join(d, "client.key_secret"),
            "allowed": allowed, "allowed_client": os.path.join(allowed, "client.key")}
    existing = [p for k, p in made.items() if k != "allowed" and os.path.exists(p)]
    if existing and not force:
        raise FileExistsError(f"keys exist already ({', '.join(existing)}); use --force to replace them")
    old = os.umask(0o077)  # the secrets are never readable by others, not even for a moment
    try:
        for p in (d, allowed):
            os.makedirs(p, mode=0o700, exist_ok=True)
            os.chmod(p, 0o700)
        for name in ("server", "client"):
            for p in (made[name], made[name + "_secret"]):
                if os.path.exists(p):
                    os.unlink(p)
            zmq.auth.create_certificates(d, name)
            os.chmod(made[name + "_secret"], 0o600)
            os.chmod(made[name], 0o600)
        with open(made["client"], "rb") as src:
            data = src.read()
        tmp = made["allowed_client"] + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, made["allowed_client"])
    finally:
        os.umask(old)
    return made

"""The one place sockets are made.

Every endpoint of the engine is declared in ``SPECS``: who binds it, with which
socket types, which channel it carries, its high-water marks and whether it
faces clients (then MAXMSGSIZE is set so an oversized frame is dropped inside
libzmq). Any other actor declares its own endpoints on its class
(``Actor.binds``, actors/base.py); an ``Endpoints`` is given them
(``declared``) and they are used like the engine's. ``Endpoints`` maps names to
addresses: by default ``ipc://`` files in
the run directory (0700), so two run directories never clash. tcp endpoints
are always CurveZMQ (bus/security.py): binders are CURVE servers whose clients a
ZAP handler checks against the allowed keys, connectors CURVE clients.

Frames on the wire:
  PUB/SUB:        [topic, payload]
  DEALER->ROUTER: [payload]            (ROUTER sees [identity, payload])
  REQ->ROUTER:    ["", payload]        (the empty delimiter is echoed back)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable

import zmq

from .codec import ProtocolError, Stamper, codec
from .messages import Envelope
from .security import CurveKeys, SecurityError, unwatch

LINGER_MS = 200  # bounded: context.term() never hangs on unsent messages
IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


@dataclass(frozen=True)
class SocketSpec:
    channel: str
    bind_type: int
    connect_type: int
    binder: str = ""  # process that binds it (an actor's declared endpoint: that actor, filled in for it)
    sndhwm: int = 1000
    rcvhwm: int = 1000
    client_facing: bool = False  # set MAXMSGSIZE on the bound socket
    mandatory: bool = False  # ROUTER_MANDATORY: a lost reply raises instead of vanishing
    doc: str = ""


SPECS: dict[str, SocketSpec] = {
    "control": SocketSpec(
        "control", zmq.ROUTER, zmq.DEALER, "supervisor", client_facing=True, mandatory=True,
        doc="ctl CLI requests -> supervisor",
    ),
    "lifecycle": SocketSpec(
        "lifecycle", zmq.ROUTER, zmq.DEALER, "supervisor", sndhwm=10_000, rcvhwm=10_000, mandatory=True,
        doc="READY/RUN/heartbeats/STOP/commands between supervisor and actors",
    ),
    "events": SocketSpec(
        "lifecycle", zmq.PUB, zmq.SUB, "supervisor", sndhwm=10_000, rcvhwm=10_000,
        doc="actor state changes published by the supervisor",
    ),
    "md": SocketSpec(
        "md", zmq.PUB, zmq.SUB, "market-data", sndhwm=100_000, rcvhwm=100_000,
        doc="bars, ticks, end-of-data",
    ),
    "md.ref": SocketSpec(
        "md", zmq.ROUTER, zmq.DEALER, "market-data", client_facing=True, mandatory=True,
        doc="instrument master and history requests",
    ),
    "orders": SocketSpec(
        "orders", zmq.ROUTER, zmq.DEALER, "paper-exchange", sndhwm=100_000, rcvhwm=100_000,
        client_facing=True, mandatory=True, doc="order entry",
    ),
    "exec": SocketSpec(
        "orders", zmq.PUB, zmq.SUB, "paper-exchange", sndhwm=100_000, rcvhwm=100_000,
        doc="fills, order updates, account updates",
    ),
    "state": SocketSpec(
        "state", zmq.PUB, zmq.SUB, "state-publisher", sndhwm=10_000, rcvhwm=10_000, client_facing=True,
        doc="sequenced state deltas and heartbeats (Clone pattern)",
    ),
    "state.snap": SocketSpec(
        "state", zmq.ROUTER, zmq.DEALER, "state-publisher", client_facing=True, mandatory=True,
        doc="state snapshots on request (Clone pattern)",
    ),
}

CLIENT_MAX_MSG = 1 << 20  # MAXMSGSIZE on client-facing sockets


class EndpointError(ValueError):
    pass


class Endpoints:
    """Registry name -> endpoint address.

    ``transport`` "ipc" (default) puts ``<name>.sock`` files in the run dir;
    "tcp" uses ``tcp_host`` (127.0.0.1 by default) and ``tcp_base_port + i``.
    ``overrides`` replaces single entries. ``curve``: the CurveZMQ keys every
    tcp endpoint needs (None: a tcp endpoint cannot be opened). ``declared``:
    endpoints actors declare on their classes, after the engine's. ``strict``:
    an override naming no known endpoint is an error (a typo in the config);
    an actor, which knows only its own declarations, keeps such an address
    as it is (the supervisor, which knows them all, has checked it).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        transport: str = "ipc",
        tcp_host: str = "127.0.0.1",
        tcp_base_port: int = 47100,
        overrides: dict[str, str] | None = None,
        check_ipc_len: bool = True,
        curve: CurveKeys | None = None,
        declared: dict[str, SocketSpec] | None = None,
        strict: bool = True,
    ):
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.curve = curve
        self.specs: dict[str, SocketSpec] = dict(SPECS)
        for name, spec in (declared or {}).items():
            if name in SPECS:
                raise EndpointError(f"endpoint {name!r} declared by {spec.binder or 'an actor'} is the engine's "
                                    f"(bound by {SPECS[name].binder}); choose another name")
            self.specs[name] = spec
        self._map: dict[str, str] = {}
        for i, name in enumerate(self.specs):
            if transport == "ipc":
                path = os.path.join(self.run_dir, f"{name}.sock")
                if check_ipc_len and len(path) > IPC_PATH_MAX:
                    raise EndpointError(
                        f"ipc path too long ({len(path)} > {IPC_PATH_MAX} bytes): {path}; use a shorter --run-dir"
                    )
                self._map[name] = f"ipc://{path}"
            elif transport == "tcp":
                self._map[name] = f"tcp://{tcp_host}:{tcp_base_port + i}"
            else:
                raise EndpointError(f"unknown transport {transport!r} (ipc or tcp)")
        for name, addr in (overrides or {}).items():
            if name not in self.specs and strict:
                raise EndpointError(f"unknown endpoint name {name!r} (known: {', '.join(self.specs)})")
            if not addr.startswith(("ipc://", "tcp://", "inproc://")):
                raise EndpointError(f"endpoint {name}: {addr!r} is not ipc://, tcp:// or inproc://")
            self._map[name] = addr

    def __getitem__(self, name: str) -> str:
        return self._map[name]

    def as_dict(self) -> dict[str, str]:
        return dict(self._map)

    def uses_tcp(self) -> bool:
        return any(a.startswith("tcp://") for a in self._map.values())

    def published(self) -> dict[str, Any]:
        """endpoints.json: the map, plus where a client finds the CURVE keys (no secrets)."""
        d: dict[str, Any] = self.as_dict()
        if self.curve is not None and self.uses_tcp():
            d["curve"] = self.curve.published()
        return d

    def spec(self, name: str) -> SocketSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise EndpointError(f"endpoint {name!r} is not declared here (known: {', '.join(self.specs)}); a client "
                                f"of an actor's own endpoint passes that actor's declaration (declared=)") from None

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike, client_key: str | None = None,
                     declared: dict[str, SocketSpec] | None = None) -> "Endpoints":
        """What a client uses: the map the running supervisor published.

        Over tcp the CURVE keys come from its "curve" entry; ``client_key`` (a
        client secret certificate) replaces the installation's client key.
        ``declared``: the endpoints of an actor's own that this client uses.
        Raises FileNotFoundError/ValueError if there is no readable endpoints.json,
        SecurityError (a ValueError) if a key file cannot be used.
        """
        import json

        with open(os.path.join(os.fspath(run_dir), "endpoints.json"), "rb") as f:
            published = json.load(f)
        if not isinstance(published, dict):
            raise ValueError("endpoints.json is not a JSON object")
        known = {**SPECS, **(declared or {})}
        eps = cls(run_dir, overrides={k: v for k, v in published.items() if k in known}, check_ipc_len=False,
                  declared=declared)
        if eps.uses_tcp() and "curve" in published:
            eps.curve = CurveKeys.from_published(published["curve"], client_key)
        return eps

    @classmethod
    def from_config(cls, run_dir: str | os.PathLike, bus_cfg: Any, declared: dict[str, SocketSpec] | None = None,
                    strict: bool = True) -> "Endpoints":
        """The map from the [bus] config; with tcp endpoints its CURVE keys are
        loaded and checked here (EndpointError naming the file if one cannot be used)."""
        eps = cls(
            run_dir,
            transport=bus_cfg.transport,
            tcp_host=bus_cfg.tcp_host,
            tcp_base_port=bus_cfg.tcp_base_port,
            overrides=dict(bus_cfg.endpoints),
            declared=declared,
            strict=strict,
        )
        if eps.uses_tcp() and bus_cfg.curve_server_key:
            try:
                eps.curve = CurveKeys(bus_cfg.curve_server_key, bus_cfg.curve_client_key,
                                      bus_cfg.curve_allowed_clients)
            except SecurityError as e:
                raise EndpointError(str(e)) from None
        return eps


def ensure_run_dir(path: str | os.PathLike) -> str:
    """Create the run directory private to the user (0700)."""
    p = os.path.abspath(os.fspath(path))
    os.makedirs(p, mode=0o700, exist_ok=True)
    os.chmod(p, 0o700)
    os.makedirs(os.path.join(p, "logs"), mode=0o700, exist_ok=True)
    return p


@dataclass
class Received:
    env: Envelope
    ident: bytes | None = None  # ROUTER: who sent it
    topic: bytes | None = None  # SUB: topic frame
    delim: bool = False  # the peer is a REQ socket (reply needs the empty frame)

    @property
    def msg(self) -> Any:
        return self.env.msg


@dataclass
class Port:
    """A socket bound to one channel: stamps headers on send, decodes on receive."""

    sock: zmq.Socket
    name: str
    channel: str
    stamper: Stamper
    role: str  # "bind" or "connect"
    sock_type: int
    stats: dict[str, int] = field(default_factory=lambda: {"bad": 0, "unroutable": 0, "dropped": 0})
    addr: str = ""
    curve_server: bool = False  # a CURVE server socket: its monitor is stopped on close

    def send(self, msg: Any, *, topic: str | bytes | None = None, to: bytes | None = None,
             delim: bool = False, flags: int = 0) -> bool:
        """Send one message. Returns False if ROUTER could not route it or HWM hit with NOBLOCK."""
        payload = self.stamper.encode(self.channel, msg)
        return self.send_raw(payload, topic=topic, to=to, delim=delim, flags=flags)

    def send_raw(self, payload: bytes, *, topic: str | bytes | None = None, to: bytes | None = None,
                 delim: bool = False, flags: int = 0) -> bool:
        frames: list[bytes] = []
        if to is not None:
            frames.append(to)
            if delim:
                frames.append(b"")
        if topic is not None:
            frames.append(topic.encode() if isinstance(topic, str) else topic)
        frames.append(payload)
        try:
            self.sock.send_multipart(frames, flags=flags, copy=len(payload) < 8192)
            return True
        except zmq.Again:
            self.stats["dropped"] += 1
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.stats["unroutable"] += 1
                return False
            raise

    def recv(self, flags: int = 0) -> Received:
        """Receive and decode one message; raises ProtocolError on any bad input."""
        frames = self.sock.recv_multipart(flags=flags, copy=True)
        return self.parse(frames)

    def parse(self, frames: list[bytes]) -> Received:
        t = self.sock_type
        c = codec(self.channel)
        if t == zmq.ROUTER:
            ident = frames[0]
            rest = frames[1:]
            delim = False
            if len(rest) == 2 and rest[0] == b"":
                delim, rest = True, rest[1:]
            try:
                if len(rest) != 1:
                    raise ProtocolError(self.channel, f"expected 1 payload frame, got {len(frames) - 1} frames")
                env = c.decode(rest[0])
            except ProtocolError as e:
                self.stats["bad"] += 1
                e.ident, e.delim = ident, delim  # lets the receiver send an error reply
                raise
            return Received(env, ident=ident, delim=delim)
        if t == zmq.SUB:
            if len(frames) != 2:
                self.stats["bad"] += 1
                raise ProtocolError(self.channel, f"expected [topic, payload], got {len(frames)} frames")
            try:
                return Received(c.decode(frames[1]), topic=frames[0])
            except ProtocolError:
                self.stats["bad"] += 1
                raise
        # DEALER / REQ: optional empty delimiter
        rest = frames[1:] if len(frames) == 2 and frames[0] == b"" else frames
        if len(rest) != 1:
            self.stats["bad"] += 1
            raise ProtocolError(self.channel, f"expected 1 payload frame, got {len(frames)} frames")
        try:
            return Received(c.decode(rest[0]))
        except ProtocolError:
            self.stats["bad"] += 1
            raise

    def close(self) -> None:
        if self.curve_server:
            unwatch(self.sock)
        self.sock.close(linger=LINGER_MS)
        # libzmq leaves the ipc file behind; the binder owns it (one binder per
        # run directory, guaranteed by the supervisor's lock), so remove it.
        if self.role == "bind" and self.addr.startswith("ipc://"):
            try:
                os.unlink(self.addr[len("ipc://"):])
            except OSError:
                pass


def open_port(
    ctx: zmq.Context,
    endpoints: Endpoints,
    name: str,
    *,
    bind: bool,
    stamper: Stamper,
    identity: str | bytes | None = None,
    subscribe: Iterable[str | bytes] = (),
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    sock_type: int | None = None,
) -> Port:
    """Create, configure and bind/connect the socket for endpoint ``name``.

    The port stamps with its own fork of ``stamper``: envelope ``seq`` counts the
    messages sent on this one socket (docs/PROTOCOL.md, "seq"), never those the
    process sends on its other sockets of the same channel.
    """
    spec = endpoints.spec(name)
    st = sock_type if sock_type is not None else (spec.bind_type if bind else spec.connect_type)
    s = ctx.socket(st)
    s.setsockopt(zmq.LINGER, LINGER_MS)
    s.setsockopt(zmq.SNDHWM, sndhwm if sndhwm is not None else spec.sndhwm)
    s.setsockopt(zmq.RCVHWM, rcvhwm if rcvhwm is not None else spec.rcvhwm)
    if bind and spec.client_facing:
        s.setsockopt(zmq.MAXMSGSIZE, CLIENT_MAX_MSG)
    if st == zmq.ROUTER:
        if spec.mandatory:
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A restarted peer reconnecting with the same identity takes it over.
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if identity is not None and st in (zmq.DEALER, zmq.REQ, zmq.ROUTER):
        s.setsockopt(zmq.IDENTITY, identity.encode() if isinstance(identity, str) else identity)
    if st == zmq.SUB:
        subs = list(subscribe)
        for topic in subs:
            s.setsockopt(zmq.SUBSCRIBE, topic.encode() if isinstance(topic, str) else topic)
    if st in (zmq.DEALER, zmq.REQ):
        s.setsockopt(zmq.IMMEDIATE, 0)
    addr = endpoints[name]
    try:
        if addr.startswith("tcp://"):
            # Never plain tcp: without keys this is an error, not an open port.
            if endpoints.curve is None:
                raise EndpointError(f"endpoint {name} is {addr}: tcp endpoints need CurveZMQ keys "
                                    f"(bus.curve_server_key, curve_client_key, curve_allowed_clients; "
                                    f"make them with `python scripts/ctl.py keygen`)")
            try:
                (endpoints.curve.secure_bind if bind else endpoints.curve.secure_connect)(s, name, addr)
            except SecurityError as e:
                raise EndpointError(str(e)) from None
        if bind:
            s.bind(addr)
            if addr.startswith("ipc://"):
                os.chmod(addr[len("ipc://"):], stat.S_IRUSR | stat.S_IWUSR)  # 0600
        else:
            s.connect(addr)
    except Exception:
        s.close(linger=0)
        raise
    return Port(s, name, spec.channel, stamper.fork(), "bind" if bind else "connect", st, addr=addr,
                curve_server=bind and addr.startswith("tcp://"))


def open_inproc(ctx: zmq.Context, name: str, channel: str, *, bind: bool, stamper: Stamper,
                hwm: int = 100_000) -> Port:
    """A PAIR socket on ``inproc://<name>`` carrying ``channel``'s messages between two
    threads of one process (market-data's feed thread -> its poll loop). Bind before
    connect; both ends share ``ctx``. At the high-water mark the sender blocks (the
    feed thread waits; the actor loop never does)."""
    s = ctx.socket(zmq.PAIR)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    addr = f"inproc://{name}"
    try:
        s.bind(addr) if bind else s.connect(addr)
    except Exception:
        s.close(linger=0)
        raise
    return Port(s, name, channel, stamper.fork(), "bind" if bind else "connect", zmq.PAIR, addr=addr)


def topic_for(kind: str, symbol: str = "") -> bytes:
    """Topic scheme: md.bar.<SYM>, md.tick.<SYM>, md.quote.<SYM>, md.status, md.eod, exec.fill.<SYM>,
    exec.order.<SYM>, acct.update, state.delta, state.hb, events.actor."""
    return f"{kind}.{symbol}".encode() if symbol else kind.encode()

"""msgpack through msgspec: one Encoder and one Decoder per channel, made once.

Every decoding failure becomes ``ProtocolError(channel, reason)``; nothing else
escapes ``decode``. That is what lets every receive loop survive any byte.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from .messages import CHANNEL_UNIONS, SCHEMA_VERSION, Envelope

# Largest payload a channel accepts, in bytes. Client-facing sockets also set
# ZMQ MAXMSGSIZE (bus.sockets) so oversized frames never reach Python.
MAX_BYTES: dict[str, int] = {
    "lifecycle": 1 << 20,
    "control": 64 << 10,
    "md": 16 << 20,  # a BarBatch or a HistoryReply can be large
    "orders": 4 << 20,  # a QueryReply lists every open order
    "state": 16 << 20,
}


# Channels an actor declares on its class (actors/base.py, ``channels``): its own
# message union and size limit, registered when the class is defined, so adding
# an actor with a protocol of its own needs no edit here or in bus/messages.py.
_DECLARED: dict[str, tuple[Any, int]] = {}


def register_channel(name: str, union: Any, max_bytes: int, owner: str = "") -> None:
    """Make channel ``name`` known to this process's codecs. The engine's channels
    cannot be redefined; declaring the same channel again with the same union is a no-op."""
    if name in CHANNEL_UNIONS:
        raise ValueError(f"{owner or 'an actor'} declares channel {name!r}, which is the engine's (bus/messages.py)")
    old = _DECLARED.get(name)
    if old is not None and old != (union, max_bytes):
        raise ValueError(f"{owner or 'an actor'} declares channel {name!r} differently from an earlier declaration")
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"channel {name!r}: max_bytes must be a positive int, got {max_bytes!r}")
    _DECLARED[name] = (union, max_bytes)


class ProtocolError(Exception):
    """A payload that does not decode as a message of its channel."""

    def __init__(self, channel: str, reason: str):
        super().__init__(f"channel {channel}: {reason}")
        self.channel = channel
        self.reason = reason
        self.ident: bytes | None = None  # ROUTER sockets: the sender, for an error reply
        self.delim = False


class Codec:
    """Encoder/decoder pair for one channel."""

    __slots__ = ("channel", "max_bytes", "_enc", "_dec", "_env_type")

    def __init__(self, channel: str):
        if channel in CHANNEL_UNIONS:
            union, self.max_bytes = CHANNEL_UNIONS[channel], MAX_BYTES[channel]
        elif channel in _DECLARED:
            union, self.max_bytes = _DECLARED[channel]
        else:
            raise KeyError(f"unknown channel {channel!r}")
        self.channel = channel
        self._env_type = Envelope[union]  # type: ignore[index]
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(self._env_type)

    def encode(self, env: Envelope) -> bytes:
        return self._enc.encode(env)

    def decode(self, data: bytes | memoryview) -> Envelope:
        n = len(data)
        if n > self.max_bytes:
            raise ProtocolError(self.channel, f"oversized message: {n} bytes > limit {self.max_bytes}")
        if n == 0:
            raise ProtocolError(self.channel, "empty payload")
        try:
            env = self._dec.decode(data)
        except msgspec.ValidationError as e:
            text = str(e)
            if text.endswith("`$.v`"):
                raise ProtocolError(self.channel, f"bad schema version field: {text}") from None
            if "Invalid value" in text and "$.msg.type" in text:
                raise ProtocolError(self.channel, f"message type not allowed on this channel: {text}") from None
            raise ProtocolError(self.channel, f"invalid message: {text}") from None
        except msgspec.DecodeError as e:
            raise ProtocolError(self.channel, f"malformed msgpack: {e}") from None
        except Exception as e:  # defensive: nothing but ProtocolError may escape
            raise ProtocolError(self.channel, f"undecodable payload: {type(e).__name__}: {e}") from None
        if env.v != SCHEMA_VERSION:
            raise ProtocolError(
                self.channel, f"unsupported schema version {env.v} (this build speaks {SCHEMA_VERSION})"
            )
        return env


_CODECS: dict[str, Codec] = {}


def codec(channel: str) -> Codec:
    """The process-wide codec of a channel (made on first use, then reused)."""
    c = _CODECS.get(channel)
    if c is None:
        c = _CODECS[channel] = Codec(channel)
    return c


class Stamper:
    """Wraps messages in envelopes with this process's header and a sequence number.

    ``seq`` counts per channel within one Stamper. ``bus.sockets.open_port`` gives
    every socket its own Stamper (``fork``), so each socket's messages are numbered
    1, 2, 3... on their own: a PUB stream is contiguous however many replies the
    same process sends on its ROUTER, and a subscriber that sees a gap lost messages.
    """

    __slots__ = ("src", "pid", "run", "_seq")

    def __init__(self, src: str, run: str, pid: int | None = None):
        self.src = src
        self.run = run
        self.pid = os.getpid() if pid is None else pid
        self._seq: dict[str, int] = {}

    def fork(self) -> "Stamper":
        """Same sender header (src, pid, run), counters starting again at 1."""
        return Stamper(self.src, self.run, self.pid)

    def envelope(self, channel: str, msg: Any) -> Envelope:
        seq = self._seq.get(channel, 0) + 1
        self._seq[channel] = seq
        return Envelope(v=SCHEMA_VERSION, src=self.src, pid=self.pid, run=self.run, seq=seq, ts=time.time_ns(), msg=msg)

    def encode(self, channel: str, msg: Any) -> bytes:
        return codec(channel).encode(self.envelope(channel, msg))

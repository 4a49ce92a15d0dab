"""Echo: the smallest complete actor, to copy (docs/ARCHITECTURE.md, "Anatomy of an actor").

It answers ``Ping`` requests on an endpoint of its own (``echo.ping``, a ROUTER
on a channel of its own) with the text repeated ``times`` times, and takes
``ctl send echo stats`` and ``ctl send echo reset``. Run it by adding to a config:

    [actors.echo]
    module = "actors.echo"
    params = { times = 2, prefix = "> " }

Nothing else in the project changes: the class below says everything the
supervisor, the codec, the sockets and the config need to know.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec
import zmq

import config
from actors.base import Actor, main
from bus.messages import Message
from bus.sockets import Port, Received, SocketSpec


class EchoParams(config.Params):
    """[actors.NAME.params]: an unknown key or a wrong type is a config error naming it."""

    times: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    prefix: str = ""


class Ping(Message, tag="echo-ping", kw_only=True):
    text: Annotated[str, msgspec.Meta(max_length=1024)]


class Pong(Message, tag="echo-pong", kw_only=True):
    text: str
    n: int  # pings answered so far, this one included


class Echo(Actor):
    name = "echo"
    Params = EchoParams
    channels = {"echo": (Union[Ping, Pong], 64 << 10)}
    binds = {"ping": SocketSpec("echo", zmq.ROUTER, zmq.DEALER, client_facing=True, mandatory=True,
                                doc="Ping -> Pong")}
    commands = {
        "stats": "how many pings it answered",
        "reset": "count from zero again",
    }

    def init(self) -> dict[str, Any]:
        self.answered = 0
        self.ping = self.open("ping", bind=True, handler=self._on_ping)
        return {"times": self.params.times}

    def _on_ping(self, port: Port, rcv: Received) -> None:
        if isinstance(rcv.msg, Ping):
            self.answered += 1
            text = self.params.prefix + " ".join([rcv.msg.text] * self.params.times)
            port.send(Pong(text=text, n=self.answered), to=rcv.ident)

    def on_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "reset":
            self.answered = 0
        return {"answered": self.answered, "message": f"{self.answered} ping(s) answered"}

    def status(self) -> dict[str, Any]:
        return {"answered": self.answered}


if __name__ == "__main__":
    main(Echo)

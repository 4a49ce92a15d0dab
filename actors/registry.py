"""What the configured actors declare, read from their classes.

An actor says on its class (actors/base.py) what the rest of the system needs to
know: its params struct, the endpoints it binds and the channels they carry, the
commands it answers, its roles. ``declare`` imports each configured actor's
module (``[actors.NAME] module``), finds its one ``Actor`` subclass and checks
``[actors.NAME.params]`` against its ``Params``: all before the supervisor
touches the run directory, so a bad param is a config error that changes
nothing. This is why an actor module keeps its top-level imports light
(tests/test_actor_anatomy.py holds the shipped ones to it): heavy libraries
are imported in init(), in the actor's own process.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import config as config_mod
from actors.base import Actor, Role, exit_reason
from bus.sockets import SocketSpec


@dataclass(frozen=True)
class Declaration:
    """One configured actor: its name, its class and its checked params."""

    name: str
    cls: type[Actor]
    params: Any

    @property
    def endpoints(self) -> dict[str, SocketSpec]:
        return self.cls.declared_endpoints(self.name)

    @property
    def commands(self) -> dict[str, str]:
        return dict(self.cls.commands)

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset(self.cls.roles)

    @property
    def progress_bar(self) -> tuple[str, str] | None:
        return self.cls.progress_bar


def actor_class(module: str) -> type[Actor]:
    """The one Actor subclass ``module`` defines. Raises ImportError (the module does
    not import) or LookupError (none, or more than one)."""
    # `python -m MODULE` finds a module in the directory it starts in; so does this.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    mod = importlib.import_module(module)
    found = [v for v in vars(mod).values()
             if isinstance(v, type) and issubclass(v, Actor) and v.__module__ == mod.__name__]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found)
        raise LookupError(f"module {module!r} defines {len(found)} Actor classes{' (' + names + ')' if names else ''}; "
                          f"an actor module defines exactly one")
    return found[0]


def declare(cfg: config_mod.Config, where: str, names: list[str] | None = None) -> dict[str, Declaration]:
    """The declarations of the enabled actors (or of ``names``), in config order.

    Raises ConfigError naming the file and the key: a module that does not
    import or defines no actor class, a bad param."""
    out: dict[str, Declaration] = {}
    for name, acfg in cfg.actors.items():
        if (names is None and not acfg.enabled) or (names is not None and name not in names):
            continue
        try:
            cls = actor_class(acfg.module)
        except LookupError as e:
            raise config_mod.ConfigError(f"{where}: key actors.{name}.module: {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever the module raises on import is the user's to see
            why = f"No module named {e.name!r}" if isinstance(e, ModuleNotFoundError) else exit_reason(e)
            raise config_mod.ConfigError(f"{where}: key actors.{name}.module: cannot import "
                                         f"{acfg.module!r}: {why}") from None
        out[name] = Declaration(name, cls, config_mod.actor_params(cfg, name, cls.Params, where))
    return out


def declared_endpoints(decls: dict[str, Declaration]) -> dict[str, SocketSpec]:
    return {n: s for d in decls.values() for n, s in d.endpoints.items()}


def role_holders(cfg: config_mod.Config, role: Role) -> tuple[str, ...]:
    """The actors of ``cfg`` that declare ``role``, in config order: enabled ones, and
    those another supervisor runs (placement disables them in its peers' configs)."""
    placed = {a for members in cfg.placement.groups.values() for a in members}
    names = [n for n, a in cfg.actors.items() if a.enabled or n in placed]
    return tuple(n for n in names if role in actor_class(cfg.actors[n].module).roles)

"""structlog, configured once and the same way in every process.

JSON lines go to ``<run-dir>/logs/<process>.jsonl`` (one os.write per line on an
O_APPEND fd, so a crash never leaves half a line and nothing sits in a buffer).
When stderr is a terminal a readable line is echoed there too.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import traceback
from typing import Any

import msgspec
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_enc = msgspec.json.Encoder()


class _Sink:
    def __init__(self, path: str | None, console: bool, min_level: int):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if path else None
        self.console = console
        self.min_level = min_level

    def write(self, ev: dict[str, Any]) -> None:
        if self.fd is not None:
            try:
                line = _enc.encode(ev)
            except (TypeError, ValueError):
                line = _enc.encode({k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
                                    for k, v in ev.items()})
            try:
                os.write(self.fd, line + b"\n")
            except OSError:
                pass  # a full disk must not kill the process through its logger
        if self.console:
            # The process's own pid and run_id are in the file, not worth a column
            # here; a pid that names another process (an actor) is shown.
            own = os.getpid()
            extra = " ".join(f"{k}={v}" for k, v in ev.items()
                             if k not in ("timestamp", "level", "event", "process", "run_id", "exception")
                             and not (k == "pid" and v == own))
            ts = ev.get("timestamp", "")[11:23]
            sys.stderr.write(f"{ts} {ev.get('level', ''):7} {ev.get('process', '')}: {ev.get('event', '')} {extra}\n")
            if "exception" in ev:
                sys.stderr.write(str(ev["exception"]) + "\n")
            sys.stderr.flush()


class _Logger:
    """structlog's final stage: receives the event dict and hands it to the sink."""

    def __init__(self, sink: _Sink):
        self._sink = sink

    def _emit(self, ev: dict[str, Any]) -> None:
        self._sink.write(ev)

    debug = info = warning = warn = error = critical = exception = msg = log = _emit


_sink: _Sink | None = None


def _timestamp(_, __, ev):
    ev["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
    return ev


def _exc_text(_, __, ev):
    exc = ev.pop("exc_info", None)
    if exc:
        if exc is True:
            exc = sys.exc_info()
        if isinstance(exc, BaseException):
            exc = (type(exc), exc, exc.__traceback__)
        if exc and exc[0] is not None:
            ev["exception"] = "".join(traceback.format_exception(*exc))
    return ev


def _finish(_, __, ev):
    return (ev,), {}


def setup(run_dir: str | None, process: str, run_id: str = "", level: str = "info",
          console: bool | None = None) -> structlog.typing.FilteringBoundLogger:
    """Configure logging for this process and return its logger."""
    global _sink
    path = None
    if run_dir:
        logs = os.path.join(run_dir, "logs")
        os.makedirs(logs, mode=0o700, exist_ok=True)
        path = os.path.join(logs, f"{process}.jsonl")
    if console is None:
        console = sys.stderr.isatty()
    min_level = _LEVELS.get(level, 20)
    _sink = _Sink(path, console, min_level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            _exc_text,
            _finish,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *a: _Logger(_sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(process=process, pid=os.getpid(), run_id=run_id)
    return structlog.get_logger()


def bind_run_id(run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)


def get() -> Any:
    return structlog.get_logger()

"""structlog, configured once and the same way in every process.

JSON lines go to ``<run-dir>/logs/<process>.jsonl`` (one os.write per line on an
O_APPEND fd, so a crash never leaves half a line and nothing sits in a buffer).
A line that cannot be written (full or read-only disk) is counted, never raised;
a line the disk took only part of is cut off again.
When stderr is a terminal a readable line is echoed there too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import sys
import traceback
from typing import Any

import msgspec

# structlog.dev imports rich when it can (~100 ms per process) only to format
# tracebacks on a terminal; every actor pays it at start. Hide rich while
# structlog loads, unless this process already uses it (the monitor does).
if "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog
    finally:
        del sys.modules["rich"]
else:
    import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_enc = msgspec.json.Encoder()


class _Sink:
    def __init__(self, path: str | None, console: bool, min_level: int):
        self.path = path
        self.console = console
        self.min_level = min_level
        # A full or read-only disk must not kill a process through its logger:
        # failed writes are counted (write_errors()) and the first is told on stderr.
        self.errors = 0
        self.fd = None
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                self._failed(e)

    def _failed(self, e: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            try:
                sys.stderr.write(f"cannot write log {self.path}: {e}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def write(self, ev: dict[str, Any]) -> None:
        if self.fd is not None:
            try:
                line = _enc.encode(ev)
            except (TypeError, ValueError):
                line = _enc.encode({k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
                                    for k, v in ev.items()})
            line += b"\n"
            try:
                n = os.write(self.fd, line)
                if n < len(line):
                    # The disk took only part of the line (nearly full): cut it off again,
                    # so the file stays whole lines and the next start appends cleanly.
                    os.ftruncate(self.fd, os.fstat(self.fd).st_size - n)
                    raise OSError(errno.ENOSPC, f"short write ({n} of {len(line)} bytes)")
            except OSError as e:
                self._failed(e)
        elif self.path:
            self.errors += 1  # the file could not even be opened
        if self.console:
            # The process's own pid and run_id are in the file, not worth a column
            # here; a pid that names another process (an actor) is shown.
            own = os.getpid()
            extra = " ".join(f"{k}={v}" for k, v in ev.items()
                             if k not in ("timestamp", "level", "event", "process", "run_id", "exception")
                             and not (k == "pid" and v == own))
            ts = ev.get("timestamp", "")[11:23]
            try:
                sys.stderr.write(f"{ts} {ev.get('level', ''):7} {ev.get('process', '')}: {ev.get('event', '')} "
                                 f"{extra}\n")
                if "exception" in ev:
                    sys.stderr.write(str(ev["exception"]) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # stderr redirected to a broken disk, or closed


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


def write_errors() -> int:
    """Log lines this process could not write to its file (full or read-only disk)."""
    return _sink.errors if _sink is not None else 0


def bind_run_id(run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)


def get() -> Any:
    return structlog.get_logger()

"""structlog, configured once and the same way in every process.

JSON lines go to ``<run-dir>/logs/<process>.jsonl`` (one os.write per line on an
O_APPEND fd, so a crash never leaves half a line and nothing sits in a buffer).
A line that cannot be written (full or read-only disk) is counted, never raised;
a line the disk took only part of is cut off again.

With ``console`` a line per event is echoed to stderr too: on a terminal a short
readable one (time of day, no run_id); anywhere else (nohup, systemd, CI,
``2>file``) a plain one a machine or a grep can read, one line per event, no
colour::

    2025-01-31T03:19:07.335Z info supervisor: actor spawned actor=market-data pid=24581

(a UTC timestamp, the level, the process, the event, then key=value with values
quoted as JSON strings when they hold spaces, quotes or newlines). The console
never blocks the process: a line stderr cannot take at once (a pipe nobody
reads) is dropped, counted and said so on the next line that gets through; the
file has them all.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import select
import sys
import time
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
        self.plain = not _isatty(2)
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
            console_write(f"cannot write log {self.path}: {e}\n", self)

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
            console_write(format_console(ev, plain=self.plain), self)


def _plain_value(v: Any) -> str:
    if isinstance(v, str):
        if v and v.isprintable() and not any(c in v for c in ' "=\\'):
            return v
        return json.dumps(v, ensure_ascii=False)
    try:
        return _enc.encode(v).decode()
    except (TypeError, ValueError):
        return json.dumps(repr(v), ensure_ascii=False)


_NOT_SHOWN = ("timestamp", "level", "event", "process", "run_id", "exception")


def format_console(ev: dict[str, Any], plain: bool) -> str:
    """The console line(s) for one event: readable on a terminal, plain (one line) elsewhere."""
    # The process's own pid and run_id are in the file, not worth a column
    # here; a pid that names another process (an actor) is shown.
    own = os.getpid()
    items = [(k, v) for k, v in ev.items() if k not in _NOT_SHOWN and not (k == "pid" and v == own)]
    if plain:
        ts = str(ev.get("timestamp", ""))[:23] + "Z"
        if "exception" in ev:
            items.append(("exception", ev["exception"]))
        extra = "".join(f" {k}={_plain_value(v)}" for k, v in items)
        return f"{ts} {ev.get('level', '')} {ev.get('process', '')}: {ev.get('event', '')}{extra}\n"
    extra = " ".join(f"{k}={v}" for k, v in items)
    ts = str(ev.get("timestamp", ""))[11:23]
    line = f"{ts} {ev.get('level', ''):7} {ev.get('process', '')}: {ev.get('event', '')} {extra}\n"
    if "exception" in ev:
        line += str(ev["exception"]) + "\n"
    return line


_PIPE_BUF = select.PIPE_BUF if hasattr(select, "PIPE_BUF") else 4096
_console_dropped = 0


def console_write(text: str, sink: "_Sink | None" = None, wait_s: float = 0.0) -> bool:
    """Write to stderr, waiting at most ``wait_s`` for it to take the text; False if dropped.

    A console that is not read (a full pipe, a terminal on Ctrl+S) must not stop
    a supervisor that heartbeats its actors, so the text is written only when
    poll() says stderr can take it. Chunks of at most PIPE_BUF bytes are atomic
    on a pipe and fit once poll() reports room; a plain line is cut to one chunk
    so a dropped line is never half-written.
    """
    global _console_dropped
    if sink is None:
        sink = _sink
    try:
        err = sys.stderr
        if err is None:
            return False
        err.flush()  # what Python itself buffered (print, warnings) goes first
        fd = err.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    data = text.encode(errors="replace")
    if _console_dropped:
        where = f" (all are in {sink.path})" if sink is not None and sink.path else ""
        data = (f"[{_console_dropped} log lines not shown: stderr was not being read{where}]\n".encode()
                + data)
    plain = sink.plain if sink is not None else not _isatty(fd)
    if plain and len(data) > _PIPE_BUF:
        data = data[:_PIPE_BUF - 4] + "…\n".encode()
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + wait_s
    view = memoryview(data)
    try:
        while view:
            ready = poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
            if not ready or ready[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                break
            view = view[os.write(fd, view[:_PIPE_BUF]):]
    except OSError:  # stderr on a broken disk, or closed
        pass
    if view:
        if len(view) == len(data):  # nothing of it went out: it is dropped whole
            _console_dropped += 1
        return False
    _console_dropped = 0
    return True


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


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
    if console is None:  # actors: their stderr is a file the supervisor keeps for crash output
        console = _isatty(2)
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


EXIT_REASON = "exit_reason"  # the key of the last event a process logs when it exits on an error
_TAIL_BYTES = 64 * 1024


def last_exit_reason(run_dir: str, process: str, pid: int) -> str:
    """The one-line reason process ``pid`` logged as it exited on an error, or "".

    Read from the end of its log file: the line is written (one os.write) before
    the process exits, so whoever reaps it finds it there, with no race against
    a message still in flight. Only the tail is read; the event is small and last.
    """
    try:
        with open(os.path.join(run_dir, "logs", f"{process}.jsonl"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            tail = f.read()
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        if EXIT_REASON.encode() not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("pid") == pid and isinstance(ev.get(EXIT_REASON), str):
            return ev[EXIT_REASON]
    return ""

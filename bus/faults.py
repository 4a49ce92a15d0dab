"""Disk faults: recognising a write that failed because of the disk, and a test hook to cause one.

A full, read-only or failing run directory cannot be fixed by restarting a
process: every process that meets one stops with ``EXIT_DISK`` (actors/base.py)
and the supervisor shuts the system down in order instead of restarting it
(docs/ARCHITECTURE.md, "Disk errors"). ``disk_error`` decides what counts:
OSError ENOSPC, EDQUOT, EFBIG, EROFS, EIO, EACCES, and the SQLite results
FULL, IOERR, READONLY, CANTOPEN.

Test hook (never set in production): ``PAPERBUS_FAULT="POINT:ERRNO[:after=N]"``
makes every write at POINT after the first N in a process raise
``OSError(ERRNO)``, as a full or read-only disk would. Points: ``ledger`` (any
ledger commit), ``ledger.fill`` (record_fill only), ``ledger.order``
(insert_order only), ``write`` (bus.fileio.atomic_write: exports, status.json).
When the variable is unset ``inject`` is one global lookup.
"""

from __future__ import annotations

import errno as _errno
import os
import sqlite3
import sys

ENV = "PAPERBUS_FAULT"

DISK_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.EROFS, _errno.EIO, _errno.EACCES})
# SQLite primary result codes (the low byte of the extended code) -> the errno they stand for.
_SQLITE = {13: _errno.ENOSPC, 10: _errno.EIO, 8: _errno.EROFS, 14: _errno.EIO}  # FULL IOERR READONLY CANTOPEN


class DiskError(OSError):
    """A write to the run directory failed in a way no restart can fix.

    ``str()`` is the one line shown to the user, naming the operation, the
    path and the error, e.g.
    ``disk error: writing /run/ledger.sqlite: [Errno 28] No space left on device``.
    """

    def __init__(self, err: int, strerror: str, path: str | None, op: str, detail: str = ""):
        super().__init__(err, strerror, path)
        self.op = op
        self.detail = detail or f"[Errno {err}] {strerror}"

    def __str__(self) -> str:
        where = f"{self.op} {self.filename}" if self.filename else self.op
        return f"disk error: {where}: {self.detail}"


def disk_error(exc: BaseException, op: str = "accessing", path: str | None = None) -> DiskError | None:
    """The DiskError ``exc`` amounts to, or None when it is not a disk problem."""
    if isinstance(exc, DiskError):
        return exc
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        fn = exc.filename if isinstance(exc.filename, str) else path
        return DiskError(exc.errno, exc.strerror or _errno.errorcode.get(exc.errno, ""), fn, op)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE:
            name = getattr(exc, "sqlite_errorname", "")
            return DiskError(_SQLITE[code & 0xFF], str(exc), path, op, f"{exc} ({name})" if name else str(exc))
    return None


# ------------------------------------------------------------------ test hook
class _Fault:
    def __init__(self, raw: str):
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"{ENV}={raw!r}: expected POINT:ERRNO[:after=N], e.g. ledger:ENOSPC:after=10")
        self.point = parts[0]
        self.errno = getattr(_errno, parts[1], None)
        if not isinstance(self.errno, int):
            raise ValueError(f"{ENV}={raw!r}: unknown errno name {parts[1]!r} (e.g. ENOSPC, EROFS, EIO)")
        self.after = 0
        if len(parts) == 3:
            key, _, val = parts[2].partition("=")
            if key != "after" or not val.isdigit():
                raise ValueError(f"{ENV}={raw!r}: expected after=N (N >= 0), got {parts[2]!r}")
            self.after = int(val)
        self.hits = 0


_fault: _Fault | None = None


def arm(spec: str | None) -> None:
    """Set (or with None clear) the injected fault of this process; raises ValueError on a bad spec."""
    global _fault
    _fault = _Fault(spec) if spec else None


def inject(point: str, path: str) -> None:
    """Raise the armed fault if ``point`` is (under) the armed point and its first N hits are used up."""
    f = _fault
    if f is None:
        return
    if point != f.point and not point.startswith(f.point + "."):
        return
    f.hits += 1
    if f.hits > f.after:
        raise OSError(f.errno, os.strerror(f.errno), path)


try:
    arm(os.environ.get(ENV))
except ValueError as _e:
    # A test hook with a typo must not silently test nothing.
    print(f"paperbus: {_e}", file=sys.stderr)
    raise SystemExit(2) from None

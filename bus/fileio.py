"""Atomic file replacement: a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import os
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temp file in the same directory, flush, fsync, os.replace.

    Same directory so the rename never crosses a filesystem; the directory is
    fsynced afterwards so the new name survives a power cut.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass

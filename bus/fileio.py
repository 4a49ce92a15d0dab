"""Atomic file replacement: a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

from bus.faults import disk_error, inject


def atomic_write(path: str | os.PathLike, data: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Write ``data`` to a temp file in the same directory, flush, fsync, os.replace.

    ``data`` may be chunks (an iterable of bytes), written as they come: a large file
    (a long backtest's equity.csv) never sits in memory whole.

    Same directory so the rename never crosses a filesystem; the directory is
    fsynced afterwards so the new name survives a power cut. On failure the
    temp file is removed and the old file is untouched; a full or read-only
    disk raises bus.faults.DiskError naming ``path``.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        inject("write", path)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        err = disk_error(e, "writing", path)
        if err is not None and err is not e:
            err.filename = path  # the user's file, not the temp name
            raise err from e
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass

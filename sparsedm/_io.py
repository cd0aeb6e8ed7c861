"""Atomic file writes: a temporary file beside the target, renamed into place when complete.

Every file sparsedm writes (converted checkpoints, images, results, the autotune cache) goes
through here, so an interrupted run never leaves a truncated file under the final name, and
finished files get the usual permissions (0666 minus the umask; mkstemp alone gives 0600).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["temp_beside", "publish", "atomic_open", "write_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_beside(path: str) -> tuple[int, str]:
    """``(fd, temp_path)`` of a new hidden file in ``path``'s directory (which must exist)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist (create it first)")
    return tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")


def publish(temp_path: str, path: str) -> None:
    """Give the finished temp file normal permissions and rename it onto ``path``."""
    os.chmod(temp_path, 0o666 & ~_umask())
    os.replace(temp_path, path)


@contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it is synced and replaces ``path``."""
    path = os.fspath(path)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (creating the directory if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)

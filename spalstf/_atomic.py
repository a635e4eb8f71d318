"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

`os.replace` is atomic on POSIX and Windows when both paths are on the same file system, so a
reader (or a crash) sees either the old file or the complete new one, never a half-written file
under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # Flush the data to disk before the rename, so that a power cut cannot leave the new
        # name pointing at an empty file (the classic ext4 delayed-allocation case).
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

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


def user_mode(*, directory: bool = False) -> int:
    """The permissions a plain `open` (or `mkdir`) would give a new file (folder): 0o666
    (0o777) less the process's umask. `tempfile` creates its files 0600 and folders 0700,
    which a result renamed into place would otherwise keep: unreadable by the user's group."""
    umask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def move_into_place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the finished file `tmp` to `path`. Without `overwrite`, a file that appeared at
    `path` while `tmp` was written (another run, another program) is not replaced: a
    FileExistsError naming it, checked at the rename itself (a hard link fails on an existing
    name; where links are not supported, checked just before the rename)."""
    if overwrite:
        os.replace(tmp, path)
        return
    appeared = FileExistsError(f"{str(path)!r} appeared while the result was being written; "
                               "it is kept as it is and the result is not written: pass "
                               "overwrite=True (--force) to replace it")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise appeared from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise appeared from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `path`, on error removed.
    Without `overwrite`, a file that appeared at `path` in the meantime is kept and a
    FileExistsError raised (`move_into_place`)."""
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
        os.chmod(tmp, user_mode())
        move_into_place(tmp, path, overwrite=overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()

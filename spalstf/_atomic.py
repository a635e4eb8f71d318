"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

`os.replace` is atomic on POSIX and Windows when both paths are on the same file system, so a
reader (or a crash) sees either the old file or the complete new one, never a half-written file
under the final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
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


#: renameat2's flag that swaps two existing paths (linux/fs.h), and macOS's renamex_np's.
_RENAME_EXCHANGE = 2
_RENAME_SWAP = 2
#: renameat2's "relative to the working directory" (AT_FDCWD).
_AT_FDCWD = -100
#: What the system answers when it cannot swap (no such call, or not on this file system).
_NO_SWAP = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _rename_call() -> Callable[[bytes, bytes], int] | None:
    """The system's atomic swap of two paths as a function of (a, b) -> 0 or -1 (errno set),
    or None where the C library has none (old glibc, musl without it, Windows)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        call = libc.renameat2
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
        return lambda a, b: call(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        call = libc.renamex_np
        call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: call(a, b, _RENAME_SWAP)
    return None


def exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths `a` and `b` in one step (Linux `renameat2(RENAME_EXCHANGE)`,
    macOS `renamex_np(RENAME_SWAP)`): no instant, not even a crash, sees either name missing.
    False, with nothing changed, where the system or the file system cannot swap; an OSError
    for any other failure."""
    call = _rename_call()
    if call is None:
        return False
    if call(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_SWAP:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_folder(new: Path, path: Path, old: Path) -> None:
    """Put the finished folder `new` at the existing `path`, so that at every instant `path`
    holds either its previous content or all of `new`, never nothing; the previous content is
    removed after.

    Where the system can swap two names (`exchange`), one atomic swap: an interrupt or a crash
    leaves the previous content at `path` (and the new at `new`) or the new at `path` (and the
    previous at `new`), never a missing `path`. Elsewhere two renames, `path` -> `old` then
    `new` -> `path`, and an exception between them (Ctrl-C included) moves `old` back; only a
    crash between the two (a kill -9, a power cut) can leave the previous content at `old`
    alone, which `spalstf.load` and the next save recover (see `spalstf.model.folder`)."""
    if exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # now the previous content
        return
    try:
        os.replace(path, old)
        os.replace(new, path)
    except BaseException:
        # Judged by what is on disk, not by which call raised: an interrupt may arrive between
        # any two instructions, after the first rename returned but before anything noted it.
        if not os.path.lexists(path) and os.path.lexists(old):
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sync_folder(folder: Path) -> None:
    """Flush every file of `folder` and the folder itself to disk, so that a power cut after
    it is renamed into place cannot leave the final name holding empty files (as `atomic_path`
    does for one file). Where a folder cannot be opened to flush it (Windows), its files are."""
    for child in folder.iterdir():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    sync_dir(folder)


def sync_dir(folder: Path) -> None:
    """Flush a folder's entries (the names renamed in it) to disk, where the system allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot flush a folder: its files are flushed all the same
    finally:
        os.close(fd)

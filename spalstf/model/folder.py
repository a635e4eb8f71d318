"""A model folder on disk: the checksums of its files, its atomic replacement, the recovery of a
replacement cut short, and what `Model.save(overwrite=True)` may replace.

The contents of the files (model.json, weights.pt) are `spalstf.model.saved`'s; this module
knows only their names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spalstf._atomic import replace_folder, sync_dir, sync_folder, user_mode

logger = logging.getLogger(__name__)

#: The file of a model folder holding the sha256 of every other file, in ``sha256sum``'s format
#: (``sha256sum -c checksums.sha256`` checks a folder by hand). Written last: its presence marks
#: a complete folder.
CHECKSUMS = "checksums.sha256"
#: The files a model folder holds (besides CHECKSUMS).
MODEL_FILES = ("model.json", "weights.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: str | os.PathLike) -> None:
    """Write `CHECKSUMS` (the sha256 of each model file) into the model folder `folder`."""
    folder = Path(folder)
    lines = [f"{_sha256(folder / name)}  {name}\n" for name in MODEL_FILES]
    (folder / CHECKSUMS).write_text("".join(lines))


#: Files a folder may hold beside the model's and still be replaced by `save(overwrite=True)`:
#: macOS Finder's view settings, written into any folder it shows, never the user's data.
_IGNORABLE = frozenset({".DS_Store"})


def _sealed_by_us(path: Path) -> bool:
    """Whether `path`'s `CHECKSUMS` is one `seal` wrote: every line '<sha256>  <file>' for a
    file of the model, and, where any model file is present, at least one that matches its
    line (a user's own weights.pt beside a checksum file of ours does not)."""
    try:
        lines = (path / CHECKSUMS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
                or name not in MODEL_FILES):
            return False
        listed[name] = digest
    if set(listed) != set(MODEL_FILES):
        return False
    present = [name for name in MODEL_FILES if (path / name).is_file()]
    return not present or any(_sha256(path / name) == listed[name] for name in present)


def _is_model_folder(path: Path) -> bool:
    """Whether `path` is provably a spalstf model folder (possibly damaged): what
    `save(overwrite=True)` may replace. A folder holding nothing but the model's files
    (`MODEL_FILES`, `CHECKSUMS`) that proves it is ours by either a model.json of format
    "spalstf-model" or a `CHECKSUMS` that `seal` wrote and a model file still matches. File
    names alone prove nothing: a user's own weights.pt is not a damaged model."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()} - _IGNORABLE
    if not names or not names <= {*MODEL_FILES, CHECKSUMS}:
        return False
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == "spalstf-model":
        return True
    return _sealed_by_us(path)


def save_target(path: Path) -> Path:
    """The folder `save` writes for `path`: what a link there names (so that the link keeps
    leading to the model), else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() and path.exists() else path


def check_replaceable(path: str | os.PathLike, arg: str = "`path`") -> None:
    """A ValueError, naming `arg`, unless `save(path, overwrite=True)` may replace what is at
    `path` (nothing, an empty folder or a spalstf model folder); the command line checks this
    before it trains, not after. Nothing is changed."""
    target = save_target(Path(path))
    if target.exists():
        check_overwrite(target, arg)


def check_overwrite(path: Path, arg: str = "`path`") -> None:
    """Refuse to replace anything but an empty folder or a spalstf model folder
    (`_is_model_folder`), naming why; nothing is changed. `arg`: how the message names the
    path (the command line's flag)."""
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return  # an empty folder: nothing in it to lose (a user may make one to save into)
    if not path.is_dir():
        raise ValueError(f"{arg} {str(path)!r} exists and is a file, not a model folder; "
                         "overwrite=True replaces only a spalstf model folder: remove the file "
                         "or choose another path")
    if not _is_model_folder(path):
        found = sorted(p.name for p in path.iterdir())
        extra = sorted(set(found) - {*MODEL_FILES, CHECKSUMS} - _IGNORABLE)
        why = (f"it holds files a model does not: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
               if extra else f"it holds {found}, but neither a model.json of format "
               f"'spalstf-model' nor a {CHECKSUMS} written by spalstf that its files match")
        raise ValueError(
            f"{arg} {str(path)!r} exists and is not a spalstf model folder ({why}; expected "
            f"only {', '.join(MODEL_FILES)} and {CHECKSUMS}, proven a model by a model.json "
            "of format 'spalstf-model' or by the checksums spalstf wrote); overwrite=True "
            "replaces only a model folder, so as not to delete other files: it is left as it "
            "is; remove it yourself or choose another path")


# --- leftovers of a save cut short ------------------------------------------------------------
# `save` writes the new model to ".<name>.new-<host>-<pid>-<random>" beside `path`; where the
# system cannot swap two folders in one step it also moves the old model to
# ".<name>.old-<host>-<pid>" for an instant (`spalstf._atomic.replace_folder`). A crash (kill -9,
# power cut) can leave either behind; the process named in them tells a leftover of a dead run
# from the folder of a running one.

def _owner_tag() -> str:
    """'<host>-<pid>' of this process (the host's name reduced to letters, digits and dots)."""
    return f"{re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname()) or 'host'}-{os.getpid()}"


def _owner_gone(tag: str) -> bool:
    """Whether the process `tag` ('<host>-<pid>', or '<pid>' as spalstf 0.x wrote) has ended:
    only a process of this machine can be known to have; this process has not."""
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or host not in ("", _owner_tag().rpartition("-")[0]):
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        return False  # alive but another user's, or not a process id this system knows
    return False


def _leftovers(path: Path) -> list[tuple[str, Path]]:
    """("old" or "new", folder) of each leftover of a save of `path` by a process that has
    ended."""
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # no such folder, or one that cannot be listed: nothing to recover
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(old|new)-(.+)")
    out = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        kind, tag = match.groups()
        if kind == "new":
            tag = tag.rpartition("-")[0]  # less mkdtemp's random part (it has no '-')
        if _owner_gone(tag):
            out.append((kind, entry))
    return out


def recover(path: Path) -> bool:
    """Put back the old model of a replacement that a crash cut between its two renames (no
    folder at `path`, the old one beside it): whatever was at `path`, restored as it was.
    True when it did, with a warning naming both."""
    if os.path.lexists(path):
        return False
    old = [folder for kind, folder in _leftovers(path) if kind == "old"]
    if not old:
        return False
    latest = max(old, key=lambda folder: folder.stat().st_mtime)
    try:
        os.rename(latest, path)
    except OSError:
        return False  # another process restored or wrote it first
    logger.warning("%s was missing: a save that replaced it was cut short (the process ended "
                   "between its two renames); the previous model, kept as %s, is restored",
                   path, latest.name)
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove the leftovers of ended saves of `path` now that a model is there: old models it
    replaced (the user asked for that with overwrite=True) and new ones never put in place."""
    if not path.is_dir():
        return
    for _, folder in _leftovers(path):
        shutil.rmtree(folder, ignore_errors=True)


def verify_checksums(path: Path) -> bool:
    """Check every file listed in `CHECKSUMS` (a ValueError naming the file that differs);
    False when the folder has no `CHECKSUMS`."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        return False
    listed: dict[str, str] = {}
    try:
        text = sums_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} cannot be read ({err}); the "
                         "folder may be damaged") from err
    for number, line in enumerate(text.splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"`path` {str(path)!r}: line {number} of {CHECKSUMS} is not "
                             f"'<sha256>  <file>'; received {line[:80]!r}; the file is damaged")
        listed[name] = digest
    unlisted = [name for name in MODEL_FILES if name not in listed]
    if unlisted:
        raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} lists no checksum for "
                         f"{unlisted}; the file is damaged or was edited")
    for name, digest in listed.items():
        if Path(name).name != name:
            raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} names {name!r}, which is not "
                             "a file of the folder")
        if not (path / name).is_file():
            raise ValueError(f"`path` {str(path)!r}: {name} is missing (listed in {CHECKSUMS})")
        if _sha256(path / name) != digest:
            raise ValueError(
                f"`path` {str(path)!r}: {name} does not match its checksum in {CHECKSUMS}: the "
                "file was edited, truncated or corrupted after the model was saved (a copy cut "
                "short, a disk error); it is refused rather than loaded with changed values: "
                "restore the folder from a good copy or fit the model again")
    return True


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A new, empty folder beside `path` to write a model's files into; when the block ends
    without an error the folder is sealed (`seal`) and put in place of `path` atomically: at
    every instant `path` holds the whole old model or the whole new one. On an error the new
    folder is removed and `path` is left as it was."""
    # named after this process, so that a later save can tell the leftovers of a run that
    # died from those of one still running (`_leftovers`)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-{_owner_tag()}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, user_mode(directory=True))  # mkdtemp made it 0700
        seal(tmp)
        sync_folder(tmp)
        if path.exists():
            # at every instant `path` holds the whole old model or the whole new one
            replace_folder(tmp, path, path.with_name(f".{path.name}.old-{_owner_tag()}"))
        else:
            os.replace(tmp, path)
        sync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _clean_leftovers(path)

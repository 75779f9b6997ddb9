"""Atomic file and folder writes: a reader never sees half a file, and a failed run leaves old outputs intact.

The rule for every command's ``--out`` folder: a finished run replaces it whole (built in a
staging folder beside it, then swapped in by one rename), so it holds exactly that run; a
run that fails or is interrupted leaves the earlier one untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)  # read the umask once; os.umask has no getter
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


# Every output folder triptych writes holds this file (the command and when it finished). Only a
# folder holding it, or an empty one, is ever replaced: ``--out .`` must never delete a user's files.
MARKER = ".triptych-run"


COMMAND_LINE: list[
    str
] = []  # the process's arguments, set by ``triptych.cli.main``; sys.argv serves otherwise


def command_line() -> str:
    """The command being run, as a user would retype it (``triptych ...``)."""
    argv = COMMAND_LINE or sys.argv
    name = Path(argv[0]).name if argv else "triptych"
    return shlex.join(["triptych" if name in ("triptych", "__main__.py", "cli.py") else name, *argv[1:]])


def check_replaceable(path: str | os.PathLike, keep: Iterable[str] = ()) -> Path:
    """Raise :class:`InputError` unless ``path`` is absent, empty, or an output folder triptych wrote.

    ``keep`` names entries the command itself makes inside ``path`` before it finishes (a
    resumable feature cache, say); they do not count as foreign files.
    """
    from triptych.core.errors import InputError

    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"--out {path} is a file, not a folder; give a folder path")
    if path.is_dir() and not (path / MARKER).is_file():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in set(keep))
        if foreign:
            raise InputError(
                f"--out {path} holds files triptych did not write ({', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); a run replaces its --out folder whole, "
                "so give a new or empty folder"
            )
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put folder ``new`` at ``path``, replacing whatever folder was there, in one atomic step where possible.

    Readers see either the whole old folder or the whole new one. Afterwards ``new`` no longer exists.
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.rename(new, path)
        return
    if _exchange(new, path):
        shutil.rmtree(new)  # now holds the old content
        return
    # fallback: two renames; a crash between them leaves the old run in a hidden .old folder
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, old / path.name)
    os.rename(new, path)
    shutil.rmtree(old)


def write_marker(folder: str | os.PathLike) -> None:
    """Mark ``folder`` as a finished triptych output (the command that made it, and when)."""
    record = {"command": command_line(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (Path(folder) / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` whole.

    So a finished command's folder holds exactly that run (no file of an earlier run is
    left beside the new ones), and a command that fails or is interrupted half way leaves
    the earlier run untouched and no staging folder behind. Only an absent, empty or
    triptych-written folder is replaced (:func:`check_replaceable`). ``keep`` names
    entries of the old folder that move into the new one (resumable caches the command
    has just written or checked there).
    """
    path = check_replaceable(path, keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        for name in keep:
            if (path / name).exists() and not (staging / name).exists():
                os.replace(path / name, staging / name)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; give the usual permissions
        write_marker(staging)
        replace_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def output_dir_in_place(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output_dir`, for outputs that must be written where they will stay.

    Some outputs record their own path (a merged encoder folder is named by its path in the
    records that point to it), so they cannot be built in a staging folder. The earlier run is
    moved aside into a hidden folder first: on success it is deleted (the folder holds exactly
    this run), on failure or interruption the partial output is removed and the earlier run put
    back. Only a hard kill (SIGKILL) can leave the earlier run in that hidden ``.old`` folder.
    """
    path = check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    earlier = aside / path.name
    try:
        if path.exists():
            os.rename(path, earlier)
        path.mkdir()
        try:
            yield path
            write_marker(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            if earlier.exists():
                os.rename(earlier, path)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)

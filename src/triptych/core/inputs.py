"""Opening user text files: the one place that decides what a readable input is.

Every loader of a user's text file (SMILES libraries, molecule tables, caption CSV/JSON)
opens it here, so every loader gives the same one-line :class:`InputError` for the same
mistake:

* a missing path, or a folder given where a file is expected;
* a file named ``.gz`` that is not gzip-compressed (gzip is recognised by its magic
  bytes, not by its name), or a corrupt / truncated gzip stream;
* a binary file (a NUL byte, a zip/.xlsx workbook) where text is expected.

Encoding policy (stated once, here):

1. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped, so the first header is
   ``SMILES``, not ``\\ufeffSMILES``; a UTF-16 BOM selects UTF-16.
2. Otherwise the text must be UTF-8. A file that is not valid UTF-8 (typically a
   Latin-1 / Windows vendor export) is read as Latin-1 (ISO-8859-1), which maps every
   byte to one character and so never fails, and one ``warning:`` line on stderr says so
   with the offset of the first non-UTF-8 byte.

The file is scanned once before it is opened for reading, so a streaming reader never
fails half-way on bad bytes.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from triptych.core.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_CHUNK = 1 << 20
FALLBACK_ENCODING = "latin-1"


def _label(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def input_file(path: str | os.PathLike, what: str = "", hint: str = "give the path of a file") -> Path:
    """``path`` as a Path if it names a readable file; else one :class:`InputError` line.

    Args:
        path: the user's path.
        what: how the user gave it (``"--input"``, ``"caption file"``); leads the message.
        hint: the fix, appended to the message.
    """
    path = Path(path)
    label = _label(path, what)
    if path.is_dir():
        raise InputError(f"{label} is a folder, not a file; {hint}")
    if not path.exists():
        raise InputError(f"{label} does not exist; {hint}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{label} cannot be read (permission denied); check its permissions")
    return path


@dataclass(frozen=True)
class TextFormat:
    """How a file's bytes become text: gzip or not, the encoding, and how many BOM bytes to skip."""

    gzipped: bool
    encoding: str
    skip: int = 0


def _open_bytes(path: Path, gzipped: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 (closed by the caller)


_WARNED: set[tuple[str, int, int]] = set()  # a file opened twice (count, then read) warns once


def sniff(path: Path, what: str = "", hint: str = "give a text file") -> TextFormat:
    """Scan ``path``: compression, encoding (see the module docstring) and binary content."""
    label = _label(path, what)
    fmt, bad = _sniff(path, label, hint)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if bad is not None and key not in _WARNED:
        _WARNED.add(key)
        print(
            f"warning: {label} is not UTF-8 (byte 0x{bad[1]:02X} at offset {bad[0]}); reading it as Latin-1 "
            "(ISO-8859-1). Re-save it as UTF-8 to be sure of its characters",
            file=sys.stderr,
        )
    return fmt


def _sniff(path: Path, label: str, hint: str) -> tuple[TextFormat, tuple[int, int] | None]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    gzipped = magic[:2] == GZIP_MAGIC
    if not gzipped and path.suffix.lower() == ".gz":
        raise InputError(
            f"{label} is named .gz but is not gzip-compressed; rename it without .gz or compress it with gzip"
        )
    try:
        with _open_bytes(path, gzipped) as raw:
            return _scan(raw, path, label, hint, gzipped)
    except (OSError, EOFError, zlib.error) as exc:
        if gzipped:
            raise InputError(
                f"{label} is a corrupt or truncated gzip file ({type(exc).__name__}); "
                "re-create or re-download it"
            ) from None
        raise InputError(f"{label} cannot be read ({type(exc).__name__}: {exc}); {hint}") from None


def _scan(
    raw: io.BufferedIOBase, path: Path, label: str, hint: str, gzipped: bool
) -> tuple[TextFormat, tuple[int, int] | None]:
    """The format, and (offset, byte) of the first byte that is not UTF-8 (None if all are)."""
    first = raw.read(_CHUNK)
    if first.startswith(ZIP_MAGIC):
        raise InputError(
            f"{label} is a zip archive (an Excel .xlsx workbook?), not text; "
            "export it as CSV (UTF-8) or unzip it"
        )
    if first.startswith(_UTF16_BOMS):
        decoder = codecs.getincrementaldecoder("utf-16")()
        try:
            chunk = first
            while chunk:
                decoder.decode(chunk)
                chunk = raw.read(_CHUNK)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(
                f"{label} starts with a UTF-16 mark but is not valid UTF-16; re-save it as UTF-8"
            ) from None
        return TextFormat(gzipped, "utf-16"), None
    skip = len(codecs.BOM_UTF8) if first.startswith(codecs.BOM_UTF8) else 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    chunk, offset, bad = first[skip:], skip, None
    while chunk:
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise InputError(
                f"{label} looks like a binary file (a NUL byte at offset {offset + nul}), not text; {hint}"
            )
        if bad is None:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = (offset + exc.start, chunk[exc.start])
        offset += len(chunk)
        chunk = raw.read(_CHUNK)
    if bad is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # a multi-byte character cut off at the end
            bad = (offset - len(exc.object) + exc.start, exc.object[exc.start])
    return TextFormat(gzipped, "utf-8" if bad is None else FALLBACK_ENCODING, skip), bad


@contextlib.contextmanager
def open_text(
    path: str | os.PathLike, what: str = "", hint: str = "give a text file", newline: str | None = None
) -> Iterator[TextIO]:
    """Open a user's text file (plain or gzip) for reading, after :func:`input_file` and :func:`sniff`.

    ``newline`` is passed to the text layer (``""`` for the ``csv`` module).
    """
    path = input_file(path, what, hint)
    fmt = sniff(path, what, hint)
    raw = _open_bytes(path, fmt.gzipped)
    try:
        raw.read(fmt.skip)
        with io.TextIOWrapper(raw, encoding=fmt.encoding, newline=newline) as handle:
            yield handle
    finally:
        raw.close()


def read_text(path: str | os.PathLike, what: str = "", hint: str = "give a text file") -> str:
    """The whole text of a user's file (plain or gzip), decoded as :func:`open_text` does."""
    with open_text(path, what, hint) as handle:
        return handle.read()


def read_json(path: str | os.PathLike, what: str = "", hint: str = "give a JSON file") -> Any:
    """Parse a user's JSON file; malformed JSON is one line naming the line and column."""
    text = read_text(path, what, hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{_label(Path(path), what)} is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); fix it (check with `python -m json.tool`)"
        ) from None
    except RecursionError:
        raise InputError(f"{_label(Path(path), what)} nests JSON too deeply to read; flatten it") from None


def at_least(value: int, minimum: int, name: str) -> int:
    """``value`` if it is at least ``minimum``; else one line naming the argument (``k``, ``n``)."""
    if value < minimum:
        raise InputError(f"{name}={value} is too small: give {name} >= {minimum}")
    return value

"""Compound libraries as shards: ``.smi``, ``.csv``, ``.sdf`` and Parquet, gzipped or not, one file or many.

``plan_shards(inputs)`` reads each file once (a streaming pass, no rows kept) and cuts it into
shards of about ``shard_size`` molecules. A shard is a JSON-able dict, e.g.::

    {"id": "0000.000003", "file": "/abs/lib.smi.gz", "format": "smi", "offset": 183921,
     "row": 30001, "rows": 10000}

so a Ray worker on another process (or machine, with the files on a shared file system) reads
only its own shard: ``iter_rows(shard)`` seeks to the shard's (uncompressed) byte offset, or
to its Parquet row group, and yields ``(row, smiles, name)`` without loading the file.

``row`` is the 1-based physical line of a text file (a CSV's header is line 1, as in
:func:`triptych.matic.screen.read_chunks`), the 1-based record of an SDF, or the 1-based row
of a Parquet file. Limits: a CSV field may not hold a newline (SMILES never do); gzip cannot
seek, so a gzipped shard decompresses (and discards) what lies before it.
"""

from __future__ import annotations

import csv
import glob
import gzip
import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, Any

from triptych.core.errors import InputError
from triptych.core.inputs import GZIP_MAGIC, input_file, open_text
from triptych.matic.data import find_smiles_column

Row = tuple[int, str, str]  # (row, SMILES, name)
Shard = dict[str, Any]

FORMATS = {
    ".smi": "smi",
    ".smiles": "smi",
    ".txt": "smi",
    ".csv": "csv",
    ".tsv": "csv",
    ".sdf": "sdf",
    ".sd": "sdf",
    ".parquet": "parquet",
    ".pq": "parquet",
}
NAME_COLUMNS = ("id", "name", "compound_id")  # as read_chunks: the molecule's name in a table
SDF_NAME_PROPS = ("_Name", "ID", "id", "Name", "name", "compound_id")
_HINT = "give .smi, .csv, .sdf or .parquet files (each may be .gz)"


# ---------------------------------------------------------------- inputs


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``inputs`` (paths and glob patterns), in the order given, globs sorted."""
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise InputError(f"no input given; {_HINT}")
    files: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"--input {text!r} matches no file; check the pattern")
            files += found
        else:
            hint = (
                f"give files or a quoted glob such as '{text.rstrip('/')}/*.smi.gz'"
                if Path(text).is_dir()
                else _HINT
            )
            files.append(input_file(text, "--input", hint))
    return files


def file_format(path: Path) -> str:
    """``smi``, ``csv``, ``sdf`` or ``parquet`` from the name (``.gz`` ignored)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(
            f"{path}: unknown library format {''.join(path.suffixes) or '(no suffix)'!r}; {_HINT}"
        )
    return fmt


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        gz = handle.read(2) == GZIP_MAGIC
    if not gz and path.suffix.lower() == ".gz":
        raise InputError(f"{path} is named .gz but is not gzip-compressed; rename it without .gz or gzip it")
    return gz


def _open_binary(path: Path) -> IO[bytes]:
    """The file's (decompressed) bytes; gzip is recognised by its magic bytes."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")  # noqa: SIM115 (caller closes)


def _decode(line: bytes) -> str:
    # Vendor exports are sometimes Latin-1; a SMILES is ASCII either way, so never fail on a name.
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _read_errors(path: Path):
    """Turn a corrupt gzip stream or unreadable file into one line."""
    import contextlib
    import zlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(
                f"{path} is a corrupt or truncated gzip file ({type(exc).__name__}); "
                "re-create or re-download it"
            ) from None
        except OSError as exc:
            raise InputError(f"{path} cannot be read ({exc.strerror or exc}); {_HINT}") from None

    return guard()


# ---------------------------------------------------------------- planning


def plan_shards(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    shard_size: int = 10_000,
    smiles_col: str | None = None,
) -> list[Shard]:
    """Shards of at most ``shard_size`` molecules covering every file of ``inputs`` in order."""
    if shard_size < 1:
        raise InputError(f"--shard-size {shard_size}: give a positive number of molecules per shard")
    shards: list[Shard] = []
    for i, path in enumerate(expand_inputs(inputs)):
        planner = {"smi": _plan_text, "csv": _plan_text, "sdf": _plan_sdf, "parquet": _plan_parquet}
        fmt = file_format(path)
        with _read_errors(path):
            parts = planner[fmt](path, fmt, shard_size, smiles_col)
        if not parts:
            raise InputError(f"{path}: no molecules found; {_HINT}")
        for k, part in enumerate(parts):
            shards.append({"id": f"{i:04d}.{k:06d}", "file": str(path.resolve()), "format": fmt, **part})
    return shards


def _text_lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of a text stream; a NUL byte means a binary file, not a library."""
    offset = 0
    for line in handle:
        if b"\x00" in line:
            raise InputError(f"{path} looks like a binary file (a NUL byte near offset {offset}); {_HINT}")
        yield offset, line
        offset += len(line)


def _csv_header(path: Path, first: bytes, smiles_col: str | None) -> dict[str, Any]:
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    header = next(csv.reader([_decode(first).lstrip("\ufeff")], delimiter=delimiter), [])
    header = [h.strip() for h in header]
    if not any(header):
        raise InputError(f"{path}: the first line is not a CSV header; give a CSV with a smiles column")
    col = header.index(find_smiles_column(header, smiles_col, path))
    names = [j for j, c in enumerate(header) if c.lower() in NAME_COLUMNS]
    return {"delimiter": delimiter, "smiles_index": col, "name_index": names[0] if names else None}


def _plan_text(path: Path, fmt: str, shard_size: int, smiles_col: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    current: dict[str, Any] | None = None
    with _open_binary(path) as handle:
        for n, (offset, line) in enumerate(_text_lines(handle, path), start=1):
            if fmt == "csv" and n == 1:
                extra = _csv_header(path, line, smiles_col)
                continue
            if not line.strip():
                continue
            if current is None or current["rows"] == shard_size:
                current = {"offset": offset, "row": n, "rows": 0, **extra}
                parts.append(current)
            current["rows"] += 1
    if fmt == "csv" and not extra:
        raise InputError(f"{path}: the file is empty; give a CSV with a smiles column")
    return parts


def _plan_sdf(path: Path, fmt: str, shard_size: int, smiles_col: str | None) -> list[dict[str, Any]]:
    # A record ends with a "$$$$" line; a record starts where the previous one ended.
    parts: list[dict[str, Any]] = []
    start, in_record, filled, records = 0, False, False, 0

    def count() -> None:
        nonlocal records
        if records % shard_size == 0:
            parts.append({"offset": start, "row": records + 1, "rows": 0})
        parts[-1]["rows"] += 1
        records += 1

    with _open_binary(path) as handle:
        for offset, line in _text_lines(handle, path):
            if not in_record:  # the first line (the name, maybe blank) of the next record
                in_record, filled, start = True, False, offset
            if line.rstrip(b"\r\n") == b"$$$$":
                count()
                in_record = False
            filled = filled or bool(line.strip())
    if in_record and filled:
        if records == 0:
            raise InputError(f"{path}: no '$$$$' record separator found; give an SDF (V2000/V3000) file")
        count()  # a last record without its closing '$$$$', which RDKit still reads
    return parts


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    if _is_gzip(path):
        raise InputError(
            f"{path}: gzipped Parquet cannot be read in row groups; gunzip it (Parquet compresses "
            "its own columns)"
        )
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise InputError(
            f"{path} is not a readable Parquet file ({str(exc).splitlines()[0][:120]}); {_HINT}"
        ) from None


def _parquet_columns(path: Path, names: list[str], smiles_col: str | None) -> dict[str, Any]:
    smiles = find_smiles_column(names, smiles_col, path)
    name = next((c for c in names if c.strip().lower() in NAME_COLUMNS), None)
    return {"smiles_column": smiles, "name_column": name}


def _plan_parquet(path: Path, fmt: str, shard_size: int, smiles_col: str | None) -> list[dict[str, Any]]:
    pf = _parquet_file(path)
    cols = _parquet_columns(path, pf.schema_arrow.names, smiles_col)
    parts, row = [], 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        # A large row group is cut into several shards; a shard never spans two groups.
        for skip in range(0, n, shard_size):
            parts.append(
                {
                    "row_group": group,
                    "skip": skip,
                    "row": row + skip + 1,
                    "rows": min(shard_size, n - skip),
                    **cols,
                }
            )
        row += n
    return parts


# ---------------------------------------------------------------- reading one shard


def iter_rows(shard: Shard) -> Iterator[Row]:
    """``(row, SMILES, name)`` of every molecule of ``shard``, streamed from its file."""
    path = Path(shard["file"])
    if not path.is_file():
        raise InputError(
            f"shard {shard['id']}: {path} is not there (moved, or not on this worker's file system)"
        )
    reader = {"smi": _rows_text, "csv": _rows_text, "sdf": _rows_sdf, "parquet": _rows_parquet}[
        shard["format"]
    ]
    with _read_errors(path):
        yield from reader(path, shard)


def read_shard(shard: Shard) -> list[Row]:
    """All rows of one shard (a shard is sized to fit in memory)."""
    return list(iter_rows(shard))


def _seek(handle: IO[bytes], offset: int) -> None:
    # GzipFile.seek decompresses up to ``offset`` (gzip has no index): correct, and linear in offset.
    handle.seek(offset)


def _rows_text(path: Path, shard: Shard) -> Iterator[Row]:
    with _open_binary(path) as handle:
        _seek(handle, shard["offset"])
        n, left = shard["row"], shard["rows"]
        is_csv = shard["format"] == "csv"
        while left:
            raw = handle.readline()
            if not raw:
                raise InputError(
                    f"{path} changed since it was planned (shard {shard['id']} ends early); "
                    "rerun with a new output folder"
                )
            if raw.strip():
                line = _decode(raw)
                if is_csv:
                    fields = next(csv.reader([line], delimiter=shard["delimiter"]), [])
                    smi = fields[shard["smiles_index"]] if shard["smiles_index"] < len(fields) else ""
                    j = shard["name_index"]
                    name = fields[j] if j is not None and j < len(fields) else ""
                else:
                    smi, name = (line.split(None, 1) + [""])[:2]  # SMILES [whitespace name]
                yield n, smi.strip(), name.strip()
                left -= 1
            n += 1


def _rows_sdf(path: Path, shard: Shard) -> Iterator[Row]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    with _open_binary(path) as handle:
        _seek(handle, shard["offset"])
        # ForwardSDMolSupplier reads the stream as it goes; islice stops it at the shard's end.
        supplier = Chem.ForwardSDMolSupplier(handle, sanitize=True, removeHs=True)
        for n, mol in enumerate(islice(supplier, shard["rows"]), start=shard["row"]):
            if mol is None:
                yield n, "", ""  # an unreadable record: kept, and reported invalid downstream
                continue
            name = next(
                (mol.GetProp(p) for p in SDF_NAME_PROPS if mol.HasProp(p) and mol.GetProp(p).strip()), ""
            )
            yield n, Chem.MolToSmiles(mol), name.strip()


def _rows_parquet(path: Path, shard: Shard) -> Iterator[Row]:
    pf = _parquet_file(path)
    cols = [shard["smiles_column"]] + ([shard["name_column"]] if shard["name_column"] else [])
    skip, left, n = shard["skip"], shard["rows"], shard["row"]
    for batch in pf.iter_batches(
        batch_size=min(65_536, skip + left), row_groups=[shard["row_group"]], columns=cols
    ):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip, left)
        skip = 0
        smiles = batch.column(0).to_pylist()
        names = batch.column(1).to_pylist() if shard["name_column"] else [""] * len(smiles)
        for smi, name in zip(smiles, names, strict=True):
            yield (
                n,
                (smi or "").strip() if isinstance(smi, str) else "",
                "" if name is None else str(name).strip(),
            )
            n += 1
        left -= batch.num_rows
        if not left:
            return


def iter_library(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    smiles_col: str | None = None,
    shard_size: int = 10_000,
) -> Iterator[Row]:
    """Every row of every file of ``inputs``, in order, streamed shard by shard."""
    for shard in plan_shards(inputs, shard_size, smiles_col):
        yield from iter_rows(shard)


# ---------------------------------------------------------------- one file, as the single-file screen reads it
# (torch-free, so the cascade's first pass can read while the screen imports torch)

_SINGLE_HINT = "give a .csv with a SMILES column or a .smi file"


def _open_single(path: Path):
    return open_text(path, "", _SINGLE_HINT, newline="")


def read_chunks(
    path: str | Path, chunk: int = 2048, smiles_col: str | None = None
) -> Iterator[list[tuple[int, str, str]]]:
    """Yield lists of ``(line number, SMILES, name)`` from a ``.csv`` (header, SMILES column) or ``.smi`` file.

    A ``.smi`` line is ``SMILES [name]``; in a CSV the name is an ``id``/``name`` column if present.
    """
    path = input_file(path, "", _SINGLE_HINT)
    if path.stat().st_size == 0:
        raise InputError(
            f"{path}: the file is empty; give one SMILES per line (.smi) or a CSV with a smiles column"
        )
    is_csv = ".csv" in path.suffixes
    with _open_single(path) as handle:
        try:
            yield from _chunks(handle, path, chunk, smiles_col, is_csv)
        except csv.Error as exc:
            raise InputError(f"{path}: not a valid CSV ({exc}); {_SINGLE_HINT}") from None


def _chunks(
    handle, path: Path, chunk: int, smiles_col: str | None, is_csv: bool
) -> Iterator[list[tuple[int, str, str]]]:
    buf: list[tuple[int, str, str]] = []
    if is_csv:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise InputError(f"{path}: the file is empty; give a CSV with a smiles column")
        col = header.index(find_smiles_column(header, smiles_col, path))
        names = [i for i, c in enumerate(header) if c.strip().lower() in ("id", "name", "compound_id")]
        rows = (
            (n, r[col] if col < len(r) else "", r[names[0]] if names and names[0] < len(r) else "")
            for n, r in enumerate(reader, start=2)
        )
    else:
        rows = (
            (n, *(line.split(None, 1) + ["", ""])[:2])
            for n, line in enumerate(handle, start=1)
            if line.strip()
        )
    for n, smi, name in rows:
        buf.append((n, smi.strip(), name.strip()))
        if len(buf) == chunk:
            yield buf
            buf = []
    if buf:
        yield buf


def count_lines(path: Path) -> int:
    with _open_single(path) as handle:
        return sum(1 for _ in handle)

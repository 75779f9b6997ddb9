"""Virtual screening: per-task probabilities and the dual-activity score for large SMILES libraries.

    dual(m) = prod_t p_t(m)        (joint probability, treating the tasks as independent given m)

The input is read and featurised in chunks, so memory is bounded by the chunk size
plus a few numbers per molecule; rows are ranked by the dual score at the end.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triptych.core.errors import InputError
from triptych.core.inputs import input_file, open_text
from triptych.core.io import atomic_write
from triptych.core.progress import progress_bar
from triptych.matic.data import find_smiles_column
from triptych.matic.predictor import Predictor


@dataclass
class ScreenResult:
    n_total: int
    n_valid: int
    invalid: list[tuple[int, str]]  # (line number, SMILES)
    seconds: float
    out: Path

    @property
    def throughput(self) -> float:
        """Molecules per second, end to end (reading, featurising, predicting, ranking, writing)."""
        return self.n_total / self.seconds if self.seconds > 0 else float("nan")


_HINT = "give a .csv with a SMILES column or a .smi file"


def _open(path: Path):
    return open_text(path, "", _HINT, newline="")


def read_chunks(path: str | Path, chunk: int = 2048, smiles_col: str | None = None
                ) -> Iterator[list[tuple[int, str, str]]]:
    """Yield lists of ``(line number, SMILES, name)`` from a ``.csv`` (header, SMILES column) or ``.smi`` file.

    A ``.smi`` line is ``SMILES [name]``; in a CSV the name is an ``id``/``name`` column if present.
    """
    path = input_file(path, "", _HINT)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; give one SMILES per line (.smi) or a CSV with a smiles column")
    is_csv = ".csv" in path.suffixes
    with _open(path) as handle:
        try:
            yield from _chunks(handle, path, chunk, smiles_col, is_csv)
        except csv.Error as exc:
            raise InputError(f"{path}: not a valid CSV ({exc}); {_HINT}") from None


def _chunks(handle, path: Path, chunk: int, smiles_col: str | None, is_csv: bool
            ) -> Iterator[list[tuple[int, str, str]]]:
    buf: list[tuple[int, str, str]] = []
    if is_csv:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise InputError(f"{path}: the file is empty; give a CSV with a smiles column")
        col = header.index(find_smiles_column(header, smiles_col, path))
        names = [i for i, c in enumerate(header) if c.strip().lower() in ("id", "name", "compound_id")]
        rows = ((n, r[col] if col < len(r) else "", r[names[0]] if names and names[0] < len(r) else "")
                for n, r in enumerate(reader, start=2))
    else:
        rows = ((n, *(line.split(None, 1) + ["", ""])[:2]) for n, line in enumerate(handle, start=1)
                if line.strip())
    for n, smi, name in rows:
        buf.append((n, smi.strip(), name.strip()))
        if len(buf) == chunk:
            yield buf
            buf = []
    if buf:
        yield buf


def count_lines(path: Path) -> int:
    with _open(path) as handle:
        return sum(1 for _ in handle)


def screen(predictor: Predictor, input_path: str | Path, out: str | Path, *, chunk: int = 2048,
           batch_size: int = 256, smiles_col: str | None = None) -> ScreenResult:
    """Score every molecule of ``input_path``, write ``out`` ranked by the dual score, and list invalid lines.

    ``out`` gets columns ``rank, line, smiles, name, p_<task>..., dual_score``; invalid
    lines go to ``<out stem>.invalid.csv``. Both are written atomically, at the end.
    """
    input_path, out = Path(input_path), Path(out)
    start = time.perf_counter()
    lines, smiles, names, probs = [], [], [], []
    invalid: list[tuple[int, str]] = []
    total = 0
    with progress_bar(count_lines(input_path), "screening", unit="mol") as bar:
        for rows in read_chunks(input_path, chunk, smiles_col):
            p = predictor.predict_proba([s for _, s, _ in rows], batch_size)
            ok = ~np.isnan(p).any(axis=1)
            for (n, s, name), good, row in zip(rows, ok, p, strict=True):
                if good:
                    lines.append(n)
                    smiles.append(s)
                    names.append(name)
                    probs.append(row.astype(np.float32))
                else:
                    invalid.append((n, s))
            total += len(rows)
            bar.update(len(rows))
    if total == 0:
        raise InputError(f"{input_path}: no molecules found; give one SMILES per line or a CSV with a smiles column")
    if not smiles:
        raise InputError(f"{input_path}: none of the {total} SMILES could be parsed (first: line {invalid[0][0]} "
                         f"{invalid[0][1]!r}); check the file holds SMILES")
    prob = np.vstack(probs)
    dual = prob.prod(axis=1)
    order = np.argsort(-dual, kind="stable")
    with atomic_write(out, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(["rank", "line", "smiles", "name", *(f"p_{t}" for t in predictor.tasks), "dual_score"])
        for rank, i in enumerate(order, start=1):
            w.writerow([rank, lines[i], smiles[i], names[i], *(f"{v:.4f}" for v in prob[i]), f"{dual[i]:.4f}"])
    if invalid:
        with atomic_write(out.with_name(out.stem + ".invalid.csv"), "w", newline="", encoding="utf-8") as handle:
            w = csv.writer(handle)
            w.writerow(["line", "smiles"])
            w.writerows(invalid)
    return ScreenResult(total, len(smiles), invalid, time.perf_counter() - start, out)

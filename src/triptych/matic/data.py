"""Molecule tables: CSV loading, canonicalisation, duplicate merging, splits, the embedded NCATS set.

A table is SMILES plus any number of binary label columns; a blank label means the
assay did not measure that molecule, kept as NaN and masked out of the loss.
"""

from __future__ import annotations

import gzip
import io
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rdkit import RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold

from triptych.core.errors import InputError
from triptych.core.inputs import read_text
from triptych.matic.chem import canonical as canonical_smiles
from triptych.matic.chem import parse

if TYPE_CHECKING:  # pandas is imported where a table is read: screening starts without it
    import pandas as pd

RDLogger.DisableLog("rdApp.*")

EMBEDDED = "ncats"  # name of the embedded 3CLpro + CPE table
CONFLICT_POLICIES = ("drop", "max", "min", "first", "mean")


@dataclass
class MolTable:
    """Canonical SMILES with an ``(n, n_tasks)`` label matrix (NaN = not measured)."""

    smiles: list[str]
    labels: np.ndarray
    tasks: list[str]
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, raw SMILES)
    conflicts: int = 0

    def __len__(self) -> int:
        return len(self.smiles)

    def subset(self, idx: np.ndarray | list[int]) -> MolTable:
        idx = np.asarray(idx, dtype=int)
        return MolTable([self.smiles[i] for i in idx], self.labels[idx], list(self.tasks))

    def summary(self) -> str:
        parts = [f"{len(self)} molecules"]
        for t, col in zip(self.tasks, self.labels.T, strict=True):
            known = ~np.isnan(col)
            parts.append(f"{t}: {int(known.sum())} labelled, {int(np.nansum(col))} active")
        return "; ".join(parts)


def read_csv_frame(path: Path) -> pd.DataFrame:
    """A user's molecule CSV (plain or gzip, any encoding :mod:`triptych.core.inputs` reads) as strings."""
    import pandas as pd

    text = read_text(path, hint="give a CSV with a SMILES column and label columns")
    if not text.strip():
        raise InputError(
            f"{path}: the file is empty; give a CSV with a header line (e.g. smiles,label) and rows"
        )
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a valid CSV ({str(exc).splitlines()[0]})") from None
    if len(df) == 0:
        raise InputError(f"{path}: the file has a header but no rows; add molecules")
    return df


def column_list(columns: list[str]) -> str:
    """Column names for an error message, quoted so that a name holding a newline stays on one line."""
    return ", ".join(repr(c) for c in columns)


def find_smiles_column(columns: list[str], smiles_col: str | None, path: Path) -> str:
    """The SMILES column: the one named, else the first called smiles (any case)."""
    if smiles_col is not None:
        if smiles_col not in columns:
            raise InputError(
                f"{path}: no column {smiles_col!r} (columns: {column_list(columns)}); pass --smiles-col"
            )
        return smiles_col
    for c in columns:
        if c.strip().lower() in ("smiles", "smiles_stand", "canonical_smiles"):
            return c
    raise InputError(
        f"{path}: no SMILES column (columns: {column_list(columns)}); name it 'smiles' or pass --smiles-col"
    )


def _parse_labels(df: pd.DataFrame, cols: list[str], path: Path) -> np.ndarray:
    import pandas as pd

    labels = np.full((len(df), len(cols)), np.nan)
    for j, c in enumerate(cols):
        raw = df[c].str.strip()
        num = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        bad = num.isna() & (raw != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}: column {c!r} line {i + 2} has non-numeric label {raw.iloc[i]!r}; "
                "labels must be 1, 0 or blank (not measured)"
            )
        notbin = num.notna() & ~num.isin([0.0, 1.0])
        if notbin.any():
            i = int(np.flatnonzero(notbin.to_numpy())[0])
            raise InputError(
                f"{path}: column {c!r} line {i + 2} has label {raw.iloc[i]!r}; "
                "labels must be 1, 0 or blank (not measured)"
            )
        labels[:, j] = num.to_numpy(dtype=float)
    return labels


def merge_duplicates(
    smiles: list[str], labels: np.ndarray, policy: str = "drop"
) -> tuple[list[str], np.ndarray, int]:
    """Merge rows with the same canonical SMILES, task by task.

    Agreeing or one-sided labels merge plainly; conflicting ones follow ``policy``:
    ``drop`` (label becomes missing), ``max`` (any active wins), ``min``, ``first``,
    ``mean`` (majority, ties missing). Returns (smiles, labels, number of conflicts).
    """
    if policy not in CONFLICT_POLICIES:
        raise InputError(f"conflict policy {policy!r} unknown; choose from {', '.join(CONFLICT_POLICIES)}")
    order: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        order.setdefault(s, []).append(i)
    out = np.full((len(order), labels.shape[1]), np.nan)
    conflicts = 0
    for k, rows in enumerate(order.values()):
        for t in range(labels.shape[1]):
            vals = labels[rows, t]
            vals = vals[~np.isnan(vals)]
            if vals.size == 0:
                continue
            if np.all(vals == vals[0]):
                out[k, t] = vals[0]
                continue
            conflicts += 1
            if policy == "max":
                out[k, t] = vals.max()
            elif policy == "min":
                out[k, t] = vals.min()
            elif policy == "first":
                out[k, t] = vals[0]
            elif policy == "mean" and vals.mean() != 0.5:
                out[k, t] = float(vals.mean() > 0.5)
    return list(order), out, conflicts


def load_table(
    path: str | Path,
    smiles_col: str | None = None,
    label_cols: list[str] | None = None,
    *,
    strict: bool = False,
    conflict: str = "drop",
    require_labels: bool = True,
    quiet: bool = False,
) -> MolTable:
    """Read a CSV of SMILES and binary labels, canonicalise, report invalid rows, merge duplicates.

    ``label_cols`` defaults to every column but the SMILES one. Invalid SMILES are
    reported with their line numbers and skipped, or raise with ``strict``.
    """
    path = Path(path)
    df = read_csv_frame(path)
    columns = [str(c) for c in df.columns]
    scol = find_smiles_column(columns, smiles_col, path)
    if label_cols is None:
        label_cols = [c for c in columns if c != scol]
    missing = [c for c in label_cols if c not in columns]
    if missing:
        raise InputError(
            f"{path}: label column(s) {missing} not found (columns: {', '.join(columns)}); check --tasks"
        )
    if require_labels and not label_cols:
        raise InputError(
            f"{path}: no label columns besides {scol!r}; add one column per task (1, 0 or blank)"
        )
    labels = _parse_labels(df, label_cols, path)
    canon, keep, invalid = [], [], []
    for i, raw in enumerate(df[scol].tolist()):
        c = canonical_smiles(raw)
        if c is None:
            invalid.append((i + 2, raw))  # line 1 is the header
        else:
            canon.append(c)
            keep.append(i)
    if invalid:
        lines = ", ".join(f"line {n}: {s!r}" for n, s in invalid[:10]) + (" ..." if len(invalid) > 10 else "")
        if strict:
            raise InputError(f"{path}: {len(invalid)} unparsable SMILES ({lines}); fix them or drop --strict")
        if not quiet:
            print(f"warning: {path}: skipped {len(invalid)} unparsable SMILES ({lines})", file=sys.stderr)
    if not canon:
        raise InputError(
            f"{path}: none of the {len(df)} SMILES in column {scol!r} could be parsed; "
            "check the column holds SMILES"
        )
    smiles, merged, conflicts = merge_duplicates(canon, labels[keep], conflict)
    return MolTable(smiles, merged, list(label_cols), invalid, conflicts)


# ---------------------------------------------------------------- splits


def random_split(
    n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, ...]:
    """Seeded random train/val/test indices."""
    perm = np.random.default_rng(seed).permutation(n)
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    return perm[:a], perm[a:b], perm[b:]


def murcko_scaffold(smiles: str) -> str:
    """Bemis–Murcko scaffold SMILES (empty for acyclic molecules)."""
    mol = parse(smiles)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False) if mol is not None else ""


def scaffold_split(
    smiles: list[str], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, ...]:
    """Seeded balanced Bemis–Murcko split: no scaffold crosses train/val/test.

    Scaffold sets too big for val/test go to train first; the rest are shuffled with
    ``seed`` and filled in, so different seeds give different but disjoint splits.
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s), []).append(i)
    sets = list(groups.values())
    n = len(smiles)
    n_train, n_val = fractions[0] * n, fractions[1] * n
    big = [g for g in sets if len(g) > n_val / 2]
    small = [g for g in sets if len(g) <= n_val / 2]
    rng = np.random.default_rng(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    train, val, test = [], [], []
    for g in big + small:
        if len(train) + len(g) <= n_train:
            train += g
        elif len(val) + len(g) <= n_val:
            val += g
        else:
            test += g
    return np.array(train, dtype=int), np.array(val, dtype=int), np.array(test, dtype=int)


@dataclass
class Splits:
    train: MolTable
    val: MolTable
    test: MolTable
    name: str = ""

    @property
    def tasks(self) -> list[str]:
        return self.train.tasks

    def select(self, tasks: list[str]) -> Splits:
        """The same molecules with only the label columns of ``tasks`` (a single-task model's data)."""
        cols = [self.tasks.index(t) for t in tasks]

        def pick(t: MolTable) -> MolTable:
            return MolTable(t.smiles, t.labels[:, cols], list(tasks))

        return Splits(pick(self.train), pick(self.val), pick(self.test), self.name)


def split_table(table: MolTable, how: str, seed: int) -> Splits:
    """Split one table ``random`` or ``scaffold`` (80/10/10), seeded."""
    if how == "random":
        idx = random_split(len(table), seed)
    elif how == "scaffold":
        idx = scaffold_split(table.smiles, seed)
    else:
        raise InputError(f"--split {how!r} unknown; choose random or scaffold (or give --val/--test files)")
    tr, va, te = (table.subset(i) for i in idx)
    return Splits(tr, va, te, f"{how} split, seed {seed}")


def _align(table: MolTable, tasks: list[str], path: Path) -> MolTable:
    if table.tasks != tasks:
        raise InputError(f"{path}: label columns {table.tasks} differ from the training file's {tasks}")
    return table


def load_splits(
    data: str,
    split: str = "given",
    seed: int = 0,
    *,
    val: str | None = None,
    test: str | None = None,
    smiles_col: str | None = None,
    tasks: list[str] | None = None,
    strict: bool = False,
    conflict: str = "drop",
) -> Splits:
    """Resolve a data spec into train/val/test tables.

    ``data`` is ``ncats`` (the embedded 3CLpro + CPE table), ``matic:DIR`` (a folder
    with ``multi_{train,val,test}.csv``), or a CSV path. A CSV with ``--val`` and
    ``--test`` files is the given split; otherwise it is split ``random`` or ``scaffold``.
    """
    kw = dict(smiles_col=smiles_col, label_cols=tasks, strict=strict, conflict=conflict)
    if data.startswith("matic:"):
        folder = Path(data[len("matic:") :])
        files = [folder / f"multi_{p}.csv" for p in ("train", "val", "test")]
        for f in files:
            if not f.is_file():
                raise InputError(
                    f"--data {data}: {f} not found; matic:DIR needs multi_train.csv, multi_val.csv, "
                    "multi_test.csv"
                )
        data, val, test = (str(f) for f in files)
    if data == EMBEDDED:
        table = load_embedded()
        if tasks:
            missing = [t for t in tasks if t not in table.tasks]
            if missing:
                raise InputError(f"--tasks {missing} not in the embedded table (tasks: {table.tasks})")
            cols = [table.tasks.index(t) for t in tasks]
            table = MolTable(table.smiles, table.labels[:, cols], list(tasks))
        return split_table(table, "scaffold" if split == "given" else split, seed)
    train = load_table(data, **kw)
    if val is not None or test is not None:
        if val is None or test is None:
            raise InputError(
                "give both --val and --test files, or neither (then --split random|scaffold is used)"
            )
        kw["label_cols"] = train.tasks
        v = _align(load_table(val, **kw), train.tasks, Path(val))
        t = _align(load_table(test, **kw), train.tasks, Path(test))
        return Splits(train, v, t, "given split")
    return split_table(train, "scaffold" if split == "given" else split, seed)


# ---------------------------------------------------------------- embedded NCATS table

EMBEDDED_FILE = "ncats_3cl_cpe.csv.gz"


def load_embedded() -> MolTable:
    """The embedded two-task table: NCATS 3CLpro enzymatic inhibition and SARS-CoV-2 CPE cell activity.

    Built by :func:`build_embedded` from REDIAL-2020 (Bocci et al. 2020, MIT licence; see
    ``matic/data/LICENSE``).
    """
    ref = resources.files("triptych.matic") / "data" / EMBEDDED_FILE
    with resources.as_file(ref) as path:
        return load_table(path, "smiles", ["label_3cl", "label_cell"], quiet=True)


def build_embedded(redial_dir: str | Path, out: str | Path) -> MolTable:
    """Merge REDIAL's ``3CL.csv`` and ``CPE.csv`` by canonical SMILES into one two-task gzipped CSV.

    ACTIVE -> 1, INACTIVE -> 0; a label is missing where only one assay measured the compound.
    """
    import pandas as pd

    from triptych.core.io import write_bytes

    redial_dir = Path(redial_dir)
    frames = []
    for name, task in (("3CL.csv", "label_3cl"), ("CPE.csv", "label_cell")):
        df = pd.read_csv(redial_dir / name, usecols=["SMILES_stand", "Label"], dtype=str)
        lab = df["Label"].str.strip().str.upper().map({"ACTIVE": 1.0, "INACTIVE": 0.0})
        frames.append(pd.DataFrame({"smiles": df["SMILES_stand"], task: lab}))
    both = pd.concat(frames, ignore_index=True)
    labels = both[["label_3cl", "label_cell"]].to_numpy(dtype=float)
    canon = [canonical_smiles(s) for s in both["smiles"]]
    keep = [i for i, c in enumerate(canon) if c is not None]
    smiles, merged, conflicts = merge_duplicates([canon[i] for i in keep], labels[keep], "drop")
    table = pd.DataFrame({"smiles": smiles, "label_3cl": merged[:, 0], "label_cell": merged[:, 1]})
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(table.to_csv(index=False, float_format="%.0f").encode())
    write_bytes(out, buf.getvalue())
    return MolTable(smiles, merged, ["label_3cl", "label_cell"], conflicts=conflicts)

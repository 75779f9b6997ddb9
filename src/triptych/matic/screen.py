"""Virtual screening: per-task probabilities and the dual-activity score for large SMILES libraries.

    dual(m) = prod_t p_t(m)        (joint probability, treating the tasks as independent given m)

Pipeline: the library is read in chunks; each chunk is sorted by SMILES length (a proxy
for atom count, so a batch holds molecules of similar size), cut into batches, and the
batches are featurised and scored under ``inference_mode`` in worker processes (a torch
``DataLoader``, one single-threaded process per core), so featurising one batch overlaps
running the model on another. Memory is bounded
by the chunk size plus a few numbers per molecule; rows are ranked by the dual score at
the end.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from triptych.core.errors import InputError
from triptych.core.io import atomic_write
from triptych.core.progress import progress_bar
from triptych.matic.cascade import (
    PrefilterPass,
    PrefilterWeights,
    check_fraction,
    default_workers,
    select_top,
)
from triptych.matic.early import FeaturePass
from triptych.matic.featurize import DEFAULT, GraphArrays
from triptych.matic.library import count_lines, read_chunks
from triptych.matic.predictor import Predictor
from triptych.matic.prefilter import Prefilter

if TYPE_CHECKING:  # pandas only for the in-memory table; a file screen starts without it
    import pandas as pd

Row = tuple[int, str, str]  # (line number, SMILES, name)


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


def default_precision(device: str = "cpu") -> str:
    """``bf16`` on a CPU with native bfloat16 arithmetic (AMX or AVX-512 BF16), else ``fp32``."""
    from triptych.core.precision import native_bf16

    return "bf16" if native_bf16(device) else "fp32"


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` or ``bf16`` from a ``--precision`` value (``auto``: :func:`default_precision`)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"--precision {precision!r} unknown; choose auto, fp32 or bf16")
    return default_precision(device) if precision == "auto" else precision


class ScoredBatches(IterableDataset):
    """Chunks of rows -> scored batches (``scorer(rows)``, e.g. :func:`score_batch`: featurised, run through the model).

    In a ``DataLoader`` with W workers, worker k featurises and scores batches k, k+W, ...
    of the same deterministic sequence, so every batch is made exactly once and the W
    processes overlap featurisation with inference. Small networks scale better over
    processes (one thread each) than over intra-op threads, which also spin against
    other jobs on a shared machine. The model reaches the workers by fork (no copy).
    """

    def __init__(
        self,
        chunks: Callable[[], Iterator[list[Row]]],
        scorer: Callable[[list[Row]], dict],
        batch_size: int = 32,
    ) -> None:
        self.chunks, self.scorer, self.batch_size = chunks, scorer, batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        k, w = (info.id, info.num_workers) if info is not None else (0, 1)
        b = 0
        for rows in self.chunks():
            rows = sorted(rows, key=lambda r: len(r[1]))  # similar sizes share a batch
            for start in range(0, len(rows), self.batch_size):
                if b % w == k:
                    yield self.scorer(rows[start : start + self.batch_size])
                b += 1


def score_batch(
    predictor: Predictor, rows: Sequence[Row], made: dict[int, GraphArrays | None] | None = None
) -> dict:
    """Featurise ``rows`` and score the valid ones: ``dict(rows, valid [n], probs [n_valid, T])``.

    ``made``: arrays featurised already, by line number (:class:`~triptych.matic.early.FeaturePass`).
    """
    made = made or {}
    graphs = [made[n] if n in made else DEFAULT.arrays(s) for n, s, _ in rows]
    valid = np.array([g is not None for g in graphs], dtype=bool)
    good = [g for g in graphs if g is not None]
    probs = np.zeros((0, len(predictor.tasks)), dtype=np.float32)
    if good:
        probs = predictor.probabilities(good)
    return {"rows": list(rows), "valid": valid, "probs": probs}


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed activation buffers for reuse instead of unmapping them.

    A batch's activations are a few MB each. Above glibc's default threshold (128 KiB, raised
    dynamically) each is a fresh ``mmap`` that the kernel zero-fills page by page and unmaps on
    free: 3.4-4 of the ~25 CPU seconds of a 10k screen were system time (benchmarks/results/
    matic_screen_speed, notes). Buffers below 64 MiB now come from the heap, and up to 256 MiB of
    freed heap stays mapped; a process's footprint stays at its peak instead of shrinking.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): its allocator is left as it is


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # one process per core: more threads would only oversubscribe
    keep_freed_memory()


def _identity(item: dict) -> dict:
    return item  # keep numpy arrays as they are (the default collate would turn them into tensors)


def iter_scored(
    predictor: Predictor,
    chunks: Callable[[], Iterator[list[Row]]],
    batch_size: int = 32,
    workers: int | None = None,
    made: dict[int, GraphArrays | None] | None = None,
) -> Iterator[tuple[list[Row], np.ndarray, np.ndarray]]:
    """Yield ``(rows, valid mask, probabilities of the valid rows [n_valid, T])`` batch by batch, in order.

    ``workers`` scoring processes (default :func:`default_workers`; 0 = in this process);
    ``made``: rows featurised already, by line number (the workers inherit them by fork).
    """
    workers = default_workers() if workers is None else workers
    if predictor.device.type != "cpu":
        workers = 0  # one accelerator: featurise and score in this process
    keep_freed_memory()  # this process (and forked workers, which set it again)
    predictor.model.eval()
    for item in _scored(chunks, partial(score_batch, predictor, made=made), batch_size, workers):
        yield item["rows"], item["valid"], item["probs"]


def _scored(
    chunks: Callable[[], Iterator[list[Row]]],
    scorer: Callable[[list[Row]], dict],
    batch_size: int,
    workers: int,
) -> Iterator[dict]:
    loader = DataLoader(
        ScoredBatches(chunks, scorer, batch_size),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def screen_smiles(
    predictor: Predictor,
    smiles: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    workers: int = 0,
) -> pd.DataFrame:
    """Score a list of SMILES in memory: one row per input, in input order.

    Columns ``index, smiles, name, valid, p_<task>..., dual_score`` (NaN where invalid).
    The function a batch worker calls per shard, with the predictor loaded once.
    """
    import pandas as pd

    names = list(names) if names is not None else [""] * len(smiles)
    rows = [(i, s, n) for i, (s, n) in enumerate(zip(smiles, names, strict=True))]
    prob = np.full((len(rows), len(predictor.tasks)), np.nan, dtype=np.float32)
    for batch_rows, valid, p in iter_scored(predictor, lambda: iter([rows]), batch_size, workers):
        idx = np.array([r[0] for r in batch_rows])
        prob[idx[valid]] = p
    df = pd.DataFrame(
        {
            "index": np.arange(len(rows)),
            "smiles": list(smiles),
            "name": names,
            "valid": ~np.isnan(prob).any(axis=1),
        }
    )
    for j, t in enumerate(predictor.tasks):
        df[f"p_{t}"] = prob[:, j]
    df["dual_score"] = prob.prod(axis=1)
    return df


def screen(
    predictor: Predictor,
    input_path: str | Path,
    out: str | Path,
    *,
    chunk: int = 2048,
    batch_size: int = 32,
    smiles_col: str | None = None,
    workers: int | None = None,
    prefilter: Prefilter | PrefilterWeights | PrefilterPass | None = None,
    fraction: float = 0.05,
    early: FeaturePass | None = None,
) -> ScreenResult:
    """Score every molecule of ``input_path``, write ``out`` ranked by the dual score, and list invalid lines.

    ``out`` gets columns ``rank, line, smiles, name, p_<task>..., dual_score``; invalid
    lines go to ``<out stem>.invalid.csv``. Both are written atomically, at the end.
    With a ``prefilter`` (the cascade, :mod:`prefilter`), only the ``fraction`` of valid
    molecules it ranks best go through the PLE; a ``prefilter_score`` column is added,
    and the molecules the PLE did not score follow the scored ones, by prefilter score,
    with empty probabilities. A :class:`~triptych.matic.cascade.PrefilterPass` over
    ``input_path`` started earlier (the CLI starts it before importing torch) is used as it is,
    and so is an ``early`` :class:`~triptych.matic.early.FeaturePass` (its finished rows are not
    featurised again).
    """
    input_path, out = Path(input_path), Path(out)
    start = time.perf_counter()
    first = next(read_chunks(input_path, 1, smiles_col), None)  # user errors surface here, not in a worker
    check_fraction(fraction)
    chunks = (lambda: read_chunks(input_path, chunk, smiles_col)) if first is not None else (lambda: iter([]))
    pre_rows: list[Row] = []
    pre_score = np.zeros(0, dtype=np.float32)
    n_lines = count_lines(input_path)
    if prefilter is not None:
        if not isinstance(prefilter, PrefilterPass):
            weights = prefilter.weights() if isinstance(prefilter, Prefilter) else prefilter
            prefilter = PrefilterPass(weights, input_path, smiles_col, workers)
        pre_rows, pre_score = prefilter.result()
        top = select_top(pre_rows, pre_score, fraction)
        chunks = lambda: (top[k : k + chunk] for k in range(0, len(top), chunk))  # noqa: E731
        n_lines = len(top)
    lines, smiles, names, probs = [], [], [], []
    invalid: list[tuple[int, str]] = []
    total = 0
    made = early.take() if early is not None else None
    with progress_bar(n_lines, "screening", unit="mol") as bar:
        for rows, valid, p in iter_scored(predictor, chunks, batch_size, workers, made):
            for (n, s, name), good in zip(rows, valid, strict=True):
                if good:
                    lines.append(n)
                    smiles.append(s)
                    names.append(name)
                else:
                    invalid.append((n, s))
            probs.append(p)
            total += len(rows)
            bar.update(len(rows))
    prob = np.vstack(probs) if probs else np.zeros((0, len(predictor.tasks)), dtype=np.float32)
    extra: dict[int, float] = {}
    if prefilter is not None:
        total = len(pre_rows)
        scored = set(lines)
        invalid += [(n, s) for (n, s, _), z in zip(pre_rows, pre_score, strict=True) if not np.isfinite(z)]
        extra = {r[0]: float(z) for r, z in zip(pre_rows, pre_score, strict=True)}
        rest = [
            (r, z) for r, z in zip(pre_rows, pre_score, strict=True) if np.isfinite(z) and r[0] not in scored
        ]
        for (n, s, name), _ in rest:
            lines.append(n)
            smiles.append(s)
            names.append(name)
        prob = np.vstack([prob, np.full((len(rest), len(predictor.tasks)), np.nan, dtype=np.float32)])
    if total == 0:
        raise InputError(
            f"{input_path}: no molecules found; give one SMILES per line or a CSV with a smiles column"
        )
    if not smiles:
        invalid.sort()
        raise InputError(
            f"{input_path}: none of the {total} SMILES could be parsed (first: line {invalid[0][0]} "
            f"{invalid[0][1]!r}); check the file holds SMILES"
        )
    invalid.sort()
    dual = prob.prod(axis=1)
    pre = np.array([extra.get(n, np.nan) for n in lines]) if extra else np.zeros(len(lines))
    # By dual score (unscored rows last, by prefilter score), ties by input line.
    order = np.lexsort((np.asarray(lines), -pre, -np.nan_to_num(dual, nan=-1.0)))
    fmt = lambda v: "" if np.isnan(v) else f"{v:.4f}"  # noqa: E731
    with atomic_write(out, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(
            ["rank", "line", "smiles", "name", *(f"p_{t}" for t in predictor.tasks), "dual_score"]
            + (["prefilter_score"] if extra else [])
        )
        for rank, i in enumerate(order, start=1):
            w.writerow(
                [rank, lines[i], smiles[i], names[i], *(fmt(v) for v in prob[i]), fmt(dual[i])]
                + ([f"{pre[i]:.4f}"] if extra else [])
            )
    if invalid:
        with atomic_write(
            out.with_name(out.stem + ".invalid.csv"), "w", newline="", encoding="utf-8"
        ) as handle:
            w = csv.writer(handle)
            w.writerow(["line", "smiles"])
            w.writerows(invalid)
    return ScreenResult(total, len(smiles), invalid, time.perf_counter() - start, out)

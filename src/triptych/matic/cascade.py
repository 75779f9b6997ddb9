"""The cascade's first pass, without torch: the prefilter's score of every molecule of a file.

    phi(m) = log(1 + c(m)),  c = Morgan counts (radius 2, 2048 bins)
    s(m)   = (w_2 . ReLU(W_1 phi(m) + b_1) + b_2) * std + mean        (the prefilter's MLP, in numpy)
    keep   = the ceil(fraction * n_valid) best by s, ties by input line

The prefilter is fitted in torch (:mod:`prefilter`); scoring it needs only RDKit and a
matrix product, so this module never imports torch. ``matic screen --prefilter`` starts
:class:`PrefilterPass` in worker processes before it imports torch: on a CPU, the imports are
most of a screen's start-up (1.3 of 1.7 s in benchmarks/results/matic_screen_profile), and the
fingerprints of the library are computed meanwhile instead of after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from triptych.core.errors import InputError
from triptych.matic.chem import parse
from triptych.matic.early import fork_pool
from triptych.matic.library import read_chunks

KIND = "matic.prefilter"
FILENAME = "prefilter.safetensors"  # beside the PLE's model.safetensors
Row = tuple[int, str, str]  # (line number, SMILES, name)


@dataclass
class PrefilterConfig:
    radius: int = 2
    n_bits: int = 2048
    hidden: int = 256


def fingerprint_features(smiles: Sequence[str], config: PrefilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(phi [n, n_bits] float32, valid [n] bool)``; rows of zeros where a SMILES does not parse."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=config.radius, fpSize=config.n_bits)
    phi = np.zeros((len(smiles), config.n_bits), dtype=np.float32)
    valid = np.zeros(len(smiles), dtype=bool)
    for i, s in enumerate(smiles):
        mol = parse(s)
        if mol is not None:
            phi[i] = gen.GetCountFingerprintAsNumPy(mol)
            valid[i] = True
    return np.log1p(phi, out=phi), valid


@dataclass
class PrefilterWeights:
    """A fitted prefilter as numpy arrays (``nn.Linear`` layout: ``w1 [hidden, n_bits]``, ``w2 [1, hidden]``)."""

    config: PrefilterConfig
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    mean: float
    std: float

    @classmethod
    def from_state(
        cls, state_dict: dict, config: PrefilterConfig, mean: float, std: float
    ) -> PrefilterWeights:
        """From the MLP's ``state_dict`` (``net.0`` and ``net.2``, numpy or torch tensors)."""
        arr = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
        return cls(
            config, arr["net.0.weight"], arr["net.0.bias"], arr["net.2.weight"], arr["net.2.bias"], mean, std
        )

    def scores(self, smiles: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """The estimate of the PLE's log dual score of each SMILES (NaN where it does not parse)."""
        out = np.full(len(smiles), np.nan, dtype=np.float32)
        for start in range(0, len(smiles), batch_size):
            phi, valid = fingerprint_features(smiles[start : start + batch_size], self.config)
            if valid.any():
                h = np.maximum(phi[valid] @ self.w1.T + self.b1, 0.0)
                z = (h @ self.w2.T + self.b2)[:, 0]
                out[start + np.flatnonzero(valid)] = z * self.std + self.mean
        return out


def load_prefilter_weights(path: str | Path) -> PrefilterWeights:
    """Read a ``matic.prefilter`` checkpoint as numpy arrays, or a one-line :class:`InputError`."""
    from triptych.core.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    try:
        state, header = load_checkpoint(path, kind=KIND, numpy=True)
        return PrefilterWeights.from_state(
            state["state_dict"],
            PrefilterConfig(**header.get("config", {})),
            float(state["mean"]),
            float(state["std"]),
        )
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"prefilter {path}: not a usable matic.prefilter checkpoint ({exc}); fit one with "
            "'triptych matic prefilter --checkpoint MODEL' or train with --prefilter"
        ) from None


def default_workers() -> int:
    """Scoring processes: one per core on 2+ cores (each featurises and scores), else 0 = in process."""
    n = os.cpu_count() or 1
    return n if n >= 2 else 0


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise InputError(f"--prefilter {fraction}: give the fraction to rescore with the PLE, in (0, 1]")


def _score_rows(weights: PrefilterWeights, rows: list[Row]) -> tuple[list[Row], np.ndarray]:
    return rows, weights.scores([s for _, s, _ in rows])


def _one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one process per core: BLAS threads would only oversubscribe


class PrefilterPass:
    """The prefilter's scores of every row of ``path``, computed by ``workers`` processes from the moment it is made.

    ``result()`` waits for them: ``(rows, scores)`` in input order (NaN where a SMILES does not
    parse). ``workers=0`` scores in this process, inside ``result()``. The first row is read
    here, so a missing or empty file is an error before any worker starts.
    """

    def __init__(
        self,
        weights: PrefilterWeights,
        path: str | Path,
        smiles_col: str | None = None,
        workers: int | None = None,
        chunk: int = 1024,
    ) -> None:
        next(read_chunks(path, 1, smiles_col), None)
        self.weights, self.chunks = weights, partial(read_chunks, path, chunk, smiles_col)
        workers = default_workers() if workers is None else workers
        self._pool = None
        if workers:
            self._pool = fork_pool(workers, _one_blas_thread)
            self._parts = self._pool.imap(partial(_score_rows, weights), self.chunks())

    def result(self) -> tuple[list[Row], np.ndarray]:
        if self._pool is None:
            parts = [_score_rows(self.weights, rows) for rows in self.chunks()]
        else:
            try:
                parts = list(self._parts)
            finally:
                self._pool.terminate()  # the cores go to the PLE's workers next
                self._pool.join()
        rows = [r for part, _ in parts for r in part]
        scores = np.concatenate([z for _, z in parts]) if parts else np.zeros(0, dtype=np.float32)
        return rows, scores


def select_top(rows: list[Row], scores: np.ndarray, fraction: float) -> list[Row]:
    """The ``ceil(fraction * n_valid)`` valid rows the prefilter ranks best, ties by input line."""
    keep = max(1, math.ceil(fraction * int(np.isfinite(scores).sum())))
    order = np.lexsort((np.array([r[0] for r in rows]), -np.nan_to_num(scores, nan=-np.inf)))
    return [rows[i] for i in order[:keep] if np.isfinite(scores[i])]

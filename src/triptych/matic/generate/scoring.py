"""The property oracle and the four constraints: p_A, p_B from the predictor, RDKit QED and SA score.

Every generator and baseline talks to the predictor through :class:`CountingOracle`,
so "oracle calls" means the same thing for all of them: molecules actually sent to the
predictor (a repeated molecule is answered from a cache and not counted again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from rdkit import Chem
from rdkit.Chem import QED
from rdkit.Contrib.SA_Score import sascorer

from triptych.core.errors import InputError
from triptych.matic.chem import canonical, mol_from_smiles


@runtime_checkable
class Oracle(Protocol):
    """Anything with task names and ``predict_proba(smiles) -> (n, n_tasks)`` (NaN for invalid SMILES)."""

    tasks: Sequence[str]

    def predict_proba(self, smiles: list[str]) -> np.ndarray: ...


class BudgetExhausted(RuntimeError):
    """The oracle-call budget is spent."""


class CountingOracle:
    """Wrap an oracle: cache by canonical SMILES, count predictor calls, enforce an optional budget."""

    def __init__(self, oracle: Oracle, budget: int | None = None, batch_size: int = 256) -> None:
        self.oracle = oracle
        self.tasks = list(oracle.tasks)
        self.budget = budget
        self.batch_size = batch_size
        self.calls = 0
        self.log: list[str] = []  # molecules in the order they were sent to the predictor
        self._cache: dict[str, np.ndarray] = {}

    def fork(self, budget: int | None = None) -> CountingOracle:
        """A copy sharing nothing but the cache contents and the call count so far (and a new budget)."""
        twin = CountingOracle(self.oracle, budget, self.batch_size)
        twin.calls = self.calls
        twin.log = list(self.log)
        twin._cache = dict(self._cache)
        return twin

    @property
    def remaining(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.calls

    def predict_proba(self, smiles: list[str]) -> np.ndarray:
        """Probabilities (n, n_tasks); NaN rows for invalid SMILES, which cost no call."""
        keys = [canonical(s) for s in smiles]
        todo = sorted({k for k in keys if k is not None and k not in self._cache})
        if self.budget is not None and self.calls + len(todo) > self.budget:
            raise BudgetExhausted(f"oracle budget of {self.budget} calls would be exceeded")
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            probs = np.asarray(self.oracle.predict_proba(chunk), dtype=float).reshape(
                len(chunk), len(self.tasks)
            )
            self.calls += len(chunk)
            self.log += chunk
            self._cache.update(zip(chunk, probs, strict=True))
        nan = np.full(len(self.tasks), np.nan)
        return (
            np.stack([self._cache[k] if k is not None else nan for k in keys])
            if keys
            else np.zeros((0, len(self.tasks)))
        )

    def task_proba(self, smiles: list[str], task: int) -> np.ndarray:
        """Probabilities of one task (n,)."""
        return self.predict_proba(smiles)[:, task]


@dataclass(frozen=True)
class Thresholds:
    """Success constraints of the paper: p_A >= 0.5, p_B >= 0.5, QED >= 0.6, SA <= 4."""

    p_a: float = 0.5
    p_b: float = 0.5
    qed: float = 0.6
    sa: float = 4.0


@dataclass(frozen=True)
class RewardWeights:
    """Policy-gradient reward r = w_a p_A + w_b p_B + w_qed QED + w_sa (10 - SA)/9 + w_success [success]."""

    p_a: float = 1.0
    p_b: float = 1.0
    qed: float = 0.5
    sa: float = 0.5
    success: float = 1.0


@dataclass
class Scores:
    """Per-molecule properties (arrays of length n; NaN where the SMILES is invalid)."""

    smiles: list[str | None]
    p_a: np.ndarray
    p_b: np.ndarray
    qed: np.ndarray
    sa: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return np.array([s is not None for s in self.smiles])

    def success(self, t: Thresholds) -> np.ndarray:
        """The four constraints held together (invalid molecules fail)."""
        with np.errstate(invalid="ignore"):
            ok = (self.p_a >= t.p_a) & (self.p_b >= t.p_b) & (self.qed >= t.qed) & (self.sa <= t.sa)
        return ok & self.valid

    def reward(self, w: RewardWeights, t: Thresholds) -> np.ndarray:
        """Scalar reward per molecule (0 for invalid ones)."""
        r = w.p_a * self.p_a + w.p_b * self.p_b + w.qed * self.qed + w.sa * (10.0 - self.sa) / 9.0
        r = r + w.success * self.success(t)
        return np.where(self.valid, np.nan_to_num(r, nan=0.0), 0.0)


def qed_sa(smiles: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """RDKit QED and Ertl-Schuffenhauer SA score (rdkit.Contrib.SA_Score); NaN for invalid SMILES."""
    qed, sa = np.full(len(smiles), np.nan), np.full(len(smiles), np.nan)
    for i, s in enumerate(smiles):
        mol = mol_from_smiles(s) if s else None
        if mol is None:
            continue
        qed[i] = QED.qed(mol)
        sa[i] = sascorer.calculateScore(mol)
    return qed, sa


def score(smiles: Sequence[str | None], oracle: CountingOracle, tasks: tuple[int, int] = (0, 1)) -> Scores:
    """Score molecules: canonical SMILES, p_A, p_B (oracle columns ``tasks``), QED, SA."""
    canon = [canonical(s) if s else None for s in smiles]
    valid = [s for s in canon if s is not None]
    probs = oracle.predict_proba(valid) if valid else np.zeros((0, len(oracle.tasks)))
    p = np.full((len(canon), 2), np.nan)
    rows = [i for i, s in enumerate(canon) if s is not None]
    if rows:
        p[rows] = probs[:, list(tasks)]
    qed, sa = qed_sa(canon)
    return Scores(canon, p[:, 0], p[:, 1], qed, sa)


def resolve_tasks(oracle: Oracle, names: str | None) -> tuple[int, int]:
    """Column indices of the two tasks named ``"A,B"`` (default: the oracle's first two)."""
    tasks = list(oracle.tasks)
    if names is None:
        if len(tasks) < 2:
            raise InputError(f"the predictor has {len(tasks)} task(s) {tasks}; dual generation needs two")
        return 0, 1
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if len(wanted) != 2 or any(n not in tasks for n in wanted):
        raise InputError(
            f"--tasks {names!r}: name two of the predictor's tasks {tasks}, e.g. --tasks {tasks[0]},{tasks[-1]}"
        )
    return tasks.index(wanted[0]), tasks.index(wanted[1])


class SubstructureOracle:
    """A hand-made oracle: p = ``hit`` when a task's SMARTS pattern is present, else ``miss``.

    For tests and for checking the search on a known answer; not a model of anything.
    """

    def __init__(self, patterns: Mapping[str, str], hit: float = 0.9, miss: float = 0.1) -> None:
        self.tasks = list(patterns)
        self._queries = [Chem.MolFromSmarts(p) for p in patterns.values()]
        if any(q is None for q in self._queries):
            raise InputError(f"SubstructureOracle: a pattern in {dict(patterns)} is not valid SMARTS")
        self.hit, self.miss = hit, miss

    def predict_proba(self, smiles: list[str]) -> np.ndarray:
        out = np.full((len(smiles), len(self.tasks)), np.nan)
        for i, s in enumerate(smiles):
            mol = mol_from_smiles(s)
            if mol is not None:
                out[i] = [self.hit if mol.HasSubstructMatch(q) else self.miss for q in self._queries]
        return out


def load_oracle(checkpoint: str | Path) -> tuple[Oracle, str]:
    """The trained MATIC predictor of ``checkpoint`` as an oracle, and an id (its SHA-1) for caches."""
    from triptych.matic.predictor import load_predictor

    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"--checkpoint {path}: no such file; train one with `triptych matic train` first")
    return load_predictor(path), hashlib.sha1(path.read_bytes()).hexdigest()

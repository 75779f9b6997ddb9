"""An independent judge of generated molecules: a model the generator never called.

Success judged by the oracle the generator optimised is partly a measure of how well it
exploits that model. The judge is a Morgan-fingerprint random forest per task fit on a
labelled table the generator is not given (other data than the oracle's). The benchmark
calls it only after every method has finished, on the generated SMILES alone, so nothing
of it reaches the generators, the baselines or their oracle-call budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from triptych.matic.chem import canonical
from triptych.matic.data import MolTable


@dataclass
class ForestJudge:
    """Morgan-fingerprint random forests, one per label column of ``train``, fit once on first use.

    An :class:`~triptych.matic.generate.scoring.Oracle` (``tasks``, ``predict_proba``), so the
    same class serves as a fast fingerprint oracle for a generator and as the independent
    judge, fit on different data. ``balanced`` weights classes inversely to their frequency
    (for screening tables with ~3% actives, where an unweighted forest rarely says >= 0.5).
    """

    train: MolTable
    seed: int = 0
    n_trees: int = 500
    balanced: bool = False
    _forests: list = field(default_factory=list, repr=False)

    @property
    def tasks(self) -> list[str]:
        return list(self.train.tasks)

    def _fit(self) -> list:
        from triptych.matic.baselines import fit_task_forests, morgan_fingerprints

        if not self._forests:
            weight = "balanced_subsample" if self.balanced else None
            x = morgan_fingerprints(self.train.smiles)
            self._forests = fit_task_forests(x, self.train.labels, self.seed, self.n_trees, weight)
        return self._forests

    def predict_proba(self, smiles: Sequence[str | None]) -> np.ndarray:
        """``(n, n_tasks)`` probabilities; NaN rows for invalid SMILES."""
        from triptych.matic.baselines import forest_probs, morgan_fingerprints

        forests = self._fit()
        canon = [canonical(s) if s else None for s in smiles]
        rows = [i for i, s in enumerate(canon) if s is not None]
        out = np.full((len(canon), len(forests)), np.nan)
        if rows:
            x = morgan_fingerprints([canon[i] for i in rows])
            out[rows] = forest_probs(forests, x)
        return out


def overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of the distinct canonical molecules of ``a`` that are also in ``b`` (how shared two datasets are)."""
    sa = {c for c in (canonical(s) for s in a) if c}
    sb = {c for c in (canonical(s) for s in b) if c}
    return len(sa & sb) / len(sa) if sa else float("nan")

"""An independent judge of generated molecules: a model the generator never called.

Success judged by the oracle the generator optimised is partly a measure of how well it
exploits that model. The judge here differs in both data and architecture: a
Morgan-fingerprint random forest per task (:func:`triptych.matic.baselines.random_forest_probs`)
fit on a labelled table the generator is not given (by default the MATIC paper's curated
training set, while the oracle is a PLE on the NCATS table). It is fit only after
generation, on the generated molecules' SMILES alone, so nothing of it reaches the
generator, the baselines or their oracle-call budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from triptych.matic.chem import canonical
from triptych.matic.data import MolTable
from triptych.matic.generate.scoring import Scores, qed_sa


@dataclass
class ForestJudge:
    """Morgan-fingerprint random forests (one per task) fit on ``train``; ``tasks`` are its two label columns."""

    train: MolTable
    tasks: tuple[int, int] = (0, 1)
    seed: int = 0
    n_trees: int = 500

    def predict_proba(self, smiles: Sequence[str | None]) -> np.ndarray:
        """``(n, 2)`` probabilities of the two tasks; NaN rows for invalid SMILES."""
        from triptych.matic.baselines import random_forest_probs

        canon = [canonical(s) if s else None for s in smiles]
        rows = [i for i, s in enumerate(canon) if s is not None]
        out = np.full((len(canon), 2), np.nan)
        if rows:
            query = MolTable([canon[i] for i in rows], np.zeros((len(rows), len(self.train.tasks))), [])
            out[rows] = random_forest_probs(self.train, query, self.seed, self.n_trees)[:, list(self.tasks)]
        return out

    def score(self, smiles: Sequence[str | None]) -> Scores:
        """The same four properties as the oracle's :func:`~triptych.matic.generate.scoring.score`, p from the judge."""
        canon = [canonical(s) if s else None for s in smiles]
        p = self.predict_proba(canon)
        qed, sa = qed_sa(canon)
        return Scores(canon, p[:, 0], p[:, 1], qed, sa)


def overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of the distinct canonical molecules of ``a`` that are also in ``b`` (how shared two datasets are)."""
    sa = {c for c in (canonical(s) for s in a) if c}
    sb = {c for c in (canonical(s) for s in b) if c}
    return len(sa & sb) / len(sa) if sa else float("nan")

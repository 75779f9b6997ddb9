"""Applicability domain: how close each screened molecule is to the model's training set.

    sim(m) = max_{t in train} Tanimoto(FP(m), FP(t)),    in_domain(m) = sim(m) >= threshold

with FP the Morgan fingerprint (radius 2, 2048 bits, i.e. ECFP4-like). The default threshold
0.4 follows common practice for ECFP4 nearest-neighbour domains (below ~0.3-0.4 a neighbour
is rarely of the same chemical series); it is a flag to filter on, not a guarantee.
RDKit's ``BulkTanimotoSimilarity`` compares one molecule to the whole training set in C++.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem, DataStructs

DEFAULT_THRESHOLD = 0.4


def _generator(radius: int, n_bits: int):
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


@dataclass
class Domain:
    """The training set's fingerprints, built once (per worker) from its molecules."""

    reference: Sequence[Chem.Mol]
    threshold: float = DEFAULT_THRESHOLD
    radius: int = 2
    n_bits: int = 2048
    _fps: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        gen = _generator(self.radius, self.n_bits)
        self._gen = gen
        self._fps = [gen.GetFingerprint(m) for m in self.reference if m is not None]
        self.reference = []  # the fingerprints are all that is needed; free the molecules
        if not self._fps:
            from triptych.core.errors import InputError

            raise InputError(
                "the applicability-domain reference holds no valid molecule; give the training set"
            )

    def __len__(self) -> int:
        return len(self._fps)

    def max_similarity(self, mols: Sequence[Chem.Mol | None]) -> np.ndarray:
        """Max Tanimoto of each molecule to the reference (NaN for a missing molecule)."""
        out = np.full(len(mols), np.nan, dtype=np.float32)
        for i, m in enumerate(mols):
            if m is not None:
                out[i] = max(DataStructs.BulkTanimotoSimilarity(self._gen.GetFingerprint(m), self._fps))
        return out

    def columns(self, mols: Sequence[Chem.Mol | None]) -> dict[str, np.ndarray]:
        """``max_sim_train`` and ``in_domain`` (False for a missing molecule)."""
        sim = self.max_similarity(mols)
        return {"max_sim_train": sim, "in_domain": np.nan_to_num(sim, nan=-1.0) >= self.threshold}

"""Generation metrics of matic.md: validity, uniqueness, success, novelty, diversity (plus oracle calls)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import DataStructs

from triptych.matic.chem import fingerprints, max_similarity
from triptych.matic.generate.scoring import Scores, Thresholds

NOVELTY_CUTOFF = 0.4


def novel_flags(
    smiles: Sequence[str | None],
    reference_fps: Sequence[DataStructs.ExplicitBitVect],
    cutoff: float = NOVELTY_CUTOFF,
) -> np.ndarray:
    """Novel = max Tanimoto (Morgan r=2, 2048 bits) to every reference active < ``cutoff``; False if invalid."""
    fps = fingerprints([s or "" for s in smiles])
    ok = [i for i, fp in enumerate(fps) if fp is not None]
    out = np.zeros(len(smiles), dtype=bool)
    if ok:
        out[ok] = max_similarity([fps[i] for i in ok], reference_fps) < cutoff
    return out


def diversity(smiles: Sequence[str]) -> float:
    """1 - mean pairwise Tanimoto similarity among distinct molecules (NaN for fewer than two)."""
    fps = [fp for fp in fingerprints(sorted(set(smiles))) if fp is not None]
    if len(fps) < 2:
        return float("nan")
    sims = [s for i in range(1, len(fps)) for s in DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])]
    return float(1.0 - np.mean(sims))


def generation_metrics(scores: Scores, thresholds: Thresholds, novel: np.ndarray) -> dict[str, float]:
    """All metrics of one generated set (rates over every generated molecule unless noted).

    success: share meeting all four constraints; novelty: share of the *successful*
    molecules that are novel (RationaleRL's definition; ``novelty_all`` is over every valid
    molecule); diversity: among the distinct successful molecules; uniqueness: distinct
    share of the valid ones.
    """
    n = len(scores.smiles)
    valid = scores.valid
    success = scores.success(thresholds)
    valid_smiles = [s for s in scores.smiles if s is not None]
    good = [s for s, ok in zip(scores.smiles, success, strict=True) if ok]
    return {
        "n": n,
        "validity": float(valid.mean()) if n else float("nan"),
        "uniqueness": len(set(valid_smiles)) / len(valid_smiles) if valid_smiles else float("nan"),
        "success": float(success.mean()) if n else float("nan"),
        "novelty": float(novel[success].mean()) if success.any() else float("nan"),
        "novelty_all": float(novel[valid].mean()) if valid.any() else float("nan"),
        "diversity": diversity(good),
        "n_success_unique": len(set(good)),
    }


def completion_check(model, rationales: Sequence[str], n: int, seed: int = 0) -> dict[str, float]:
    """Complete ``n`` rationales (cycled): share of valid completions and share that contain their rationale."""
    import torch
    from rdkit import Chem

    batch = [rationales[i % len(rationales)] for i in range(n)]
    gen = torch.Generator().manual_seed(seed)
    smiles = []
    for start in range(0, n, 250):
        smiles += model.sample(batch[start : start + 250], generator=gen)[0]
    valid = contained = 0
    for s, r in zip(smiles, batch, strict=True):
        mol = Chem.MolFromSmiles(s) if s else None
        if mol is None:
            continue
        valid += 1
        contained += int(mol.HasSubstructMatch(Chem.MolFromSmiles(r)))
    sizes = [Chem.MolFromSmiles(s).GetNumAtoms() for s in smiles if s and Chem.MolFromSmiles(s) is not None]
    return {
        "n": n,
        "validity": valid / n,
        "containment": contained / n,
        "distinct": len(set(smiles)) / n,
        "mean_heavy_atoms": float(np.mean(sizes)) if sizes else float("nan"),
    }

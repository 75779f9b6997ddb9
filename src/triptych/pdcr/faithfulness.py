"""Faithfulness of a RoI explanation: deletion and insertion curves of the RoI outcome.

Blocks outside the RoI are removed (deletion) or restored (insertion) in the order of a
method's importance, and the RoI outcome M/100 is read after each step; the area under
each curve (fraction of blocks on the x axis) summarises it. A faithful map gives a low
deletion AUC and a high insertion AUC. Removal uses several operators (zero, blur, patch
bank: P1's intervention objects) with the same random draws for every method, so that
no explainer is favoured by sharing the metric's operator. Off-target leakage is the
share of a map's absolute mass farther than ``distance`` pixels from the RoI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from triptych.pdcr.baselines import Saliency, Target
from triptych.pdcr.interventions import Block, RegionIntervention
from triptych.pdcr.regions import block_grid, block_slices, overlaps


def grid_units(shape: Sequence[int], block: int, roi_mask: np.ndarray | None = None) -> list[Block]:
    """The b×b block grid of an (H, W) image as slices, leaving out blocks that overlap the RoI."""
    return [
        block_slices(b) for b in block_grid(shape, block) if roi_mask is None or not overlaps(b, roi_mask)
    ]


def block_scores(saliency_map: np.ndarray, units: Sequence[Block]) -> np.ndarray:
    """s_k = mean of the map over block k."""
    return np.array([float(saliency_map[u].mean()) for u in units])


def importance_order(saliency_map: np.ndarray, units: Sequence[Block], seed: int = 0) -> np.ndarray:
    """Block indices, most important first; ties (e.g. PdCR's dead zone) broken at random by ``seed``."""
    scores = block_scores(saliency_map, units)
    tiebreak = np.random.default_rng(seed).random(len(units))
    return np.lexsort((tiebreak, -scores))


def removed_image(
    intervention: RegionIntervention, image: Tensor, units: Sequence[Block], seed: int = 0
) -> Tensor:
    """x̃: every block replaced by one draw of ``intervention`` (seeded, so all methods share the draws)."""
    gen = torch.Generator().manual_seed(seed)
    out = image.clone()
    for u in units:
        out[(slice(None), *u)] = intervention.sample(image, u, 1, gen)[0]
    return out


def step_counts(n_units: int, steps: int) -> np.ndarray:
    """How many blocks are removed/restored at each of ``steps``+1 points, 0 … n_units."""
    return np.unique(np.round(np.linspace(0, n_units, steps + 1)).astype(int))


def _composite(
    base: Tensor, other: Tensor, order: np.ndarray, units: Sequence[Block], counts: np.ndarray
) -> Tensor:
    """Images (len(counts), C, H, W): ``base`` with the first counts[j] blocks of ``order`` taken from ``other``."""
    batch = base.unsqueeze(0).repeat(len(counts), 1, 1, 1)
    for j, n in enumerate(counts):
        for k in order[:n]:
            batch[(j, slice(None), *units[k])] = other[(slice(None), *units[k])]
    return batch


def outcome_curve(target: Target, batch: Tensor, chunk: int = 32) -> np.ndarray:
    """M/100 of each image of a batch, in chunks."""
    return np.concatenate([target.outcome(batch[i : i + chunk]).numpy() for i in range(0, len(batch), chunk)])


def deletion_curve(
    target: Target, image: Tensor, removed: Tensor, order: np.ndarray, units: Sequence[Block], steps: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, M/100) as blocks are replaced by x̃ in ``order``: x → x̃ outside the RoI."""
    counts = step_counts(len(units), steps)
    return counts / max(len(units), 1), outcome_curve(
        target, _composite(image, removed, order, units, counts)
    )


def insertion_curve(
    target: Target, image: Tensor, removed: Tensor, order: np.ndarray, units: Sequence[Block], steps: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, M/100) as blocks of x are restored into x̃ (RoI always kept) in ``order``."""
    counts = step_counts(len(units), steps)
    start = removed.clone()
    kept = torch.ones(image.shape[1:], dtype=torch.bool)
    for u in units:
        kept[u] = False
    start[:, kept] = image[:, kept]
    return counts / max(len(units), 1), outcome_curve(target, _composite(start, image, order, units, counts))


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve on x ∈ [0, 1] by the trapezoid rule."""
    return float(np.trapezoid(values, fractions))


def leakage(saliency_map: np.ndarray, roi_mask: np.ndarray, distance: float) -> float:
    """Share of Σ|map| at pixels farther than ``distance`` from the RoI (0 when the map is all zero)."""
    far = distance_transform_edt(~roi_mask) > distance
    mass = np.abs(saliency_map)
    total = mass.sum()
    return float(mass[far].sum() / total) if total > 0 else 0.0


@dataclass
class Faithfulness:
    """One method's scores on one RoI: AUCs per operator, leakage, cost, and the curves."""

    method: str
    deletion_auc: dict[str, float]
    insertion_auc: dict[str, float]
    leakage: float
    seconds: float
    forward_passes: int
    curves: dict[str, dict[str, list[float]]]

    def row(self) -> dict[str, float | str | int]:
        row: dict[str, float | str | int] = {"method": self.method}
        row.update({f"del_{k}": v for k, v in self.deletion_auc.items()})
        row.update({f"ins_{k}": v for k, v in self.insertion_auc.items()})
        row.update(leakage=self.leakage, seconds=self.seconds, forward_passes=self.forward_passes)
        return row


def evaluate(
    target: Target,
    image: Tensor,
    saliency: Saliency,
    removed: Mapping[str, Tensor],
    units: Sequence[Block],
    *,
    steps: int = 16,
    distance: float = 32.0,
    seed: int = 0,
) -> Faithfulness:
    """Deletion/insertion AUC under every removal operator (``removed``: name -> x̃), leakage and cost."""
    order = importance_order(saliency.map, units, seed)
    deletion, insertion, curves = {}, {}, {}
    for name, x_tilde in removed.items():
        fd, d = deletion_curve(target, image, x_tilde, order, units, steps)
        fi, i = insertion_curve(target, image, x_tilde, order, units, steps)
        deletion[name], insertion[name] = auc(fd, d), auc(fi, i)
        curves[name] = {"fraction": fd.tolist(), "deletion": d.tolist(), "insertion": i.tolist()}
    return Faithfulness(
        saliency.method,
        deletion,
        insertion,
        leakage(saliency.map, target.roi.mask, distance),
        saliency.seconds,
        saliency.forward_passes,
        curves,
    )

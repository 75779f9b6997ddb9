"""Many RoIs of one image per forward pass: every intervention serves every RoI it does not overlap.

The outcome becomes a vector, M(x) ∈ R^R (one value per RoI), so a batch of perturbed
images gives B × R effects. Each (block, RoI) pair follows the sequential rule of
:func:`~triptych.pdcr.estimate.sequential_estimate` on its own, but all pairs of a block
share its draws — common random numbers across RoIs — and a block draws only as long as
one of its RoIs still needs it. For R RoIs the cost is that of the most demanding RoI per
block, not the sum (``benchmarks/pdcr_multiroi.py`` measures it).

Blocks are a flat grid of ``block`` (no coarse-to-fine: the RoIs would each split a
different tree).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.pdcr.estimate import SequentialRule, UnitResult, shared_sequential_estimate
from triptych.pdcr.interventions import RegionIntervention
from triptych.pdcr.models import SegmentationModel, eval_mode
from triptych.pdcr.regions import Explanation, RegionProblem, _to_maps, block_grid, block_slices, overlaps
from triptych.pdcr.roi import Outcome, RoI, make_outcome
from triptych.pdcr.tiles import TiledRegionProblem, tiled


@dataclass
class Stacked:
    """R outcomes as one: probabilities (B, C, *S) -> (B, R)."""

    outcomes: list[Outcome]
    name: str = "stacked"

    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        return torch.stack([o(prob) for o in self.outcomes], 1)


def explain_rois(
    model: SegmentationModel,
    image: torch.Tensor,
    rois: Sequence[RoI],
    *,
    intervention: RegionIntervention,
    outcome: str = "dice_self",
    ground_truth: np.ndarray | None = None,
    block: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    rule: SequentialRule | None = None,
    empty_dice: float = 1.0,
    tiles: bool = True,
) -> list[Explanation]:
    """One :class:`Explanation` per RoI of ``image`` (C, *S), from shared forward passes.

    ``forward_passes`` and ``seconds`` of every returned explanation are those of the whole
    shared run (they are not divisible per RoI). A model that predicts ``image`` by sliding
    windows is run tile by tile (``tiles=True``, :mod:`triptych.pdcr.tiles`: exact): a
    perturbed image costs the 1–4 tiles around its block, and blocks sharing no tile with a
    RoI are exactly 0 for it (status ``exact_zero``, no draws).
    """
    if not rois:
        raise InputError("explain_rois needs at least one RoI")
    rule = rule or SequentialRule()
    image = image.float()
    shape = tuple(image.shape[1:])
    outcomes = [make_outcome(outcome, model, image, r, ground_truth, empty_dice) for r in rois]
    units = block_grid(shape, block)
    outside = np.array([[not overlaps(u, r.mask) for r in rois] for u in units])
    start = time.perf_counter()
    with eval_mode(model):
        if tiles and tiled(model, shape):
            problem: RegionProblem = TiledRegionProblem(
                model, image, Stacked(outcomes), intervention, batch_size
            )
            # a block that shares no tile with the RoI cannot move its outcome: exactly 0, no draws
            fields = [problem.cache.field(r.mask) for r in rois]
            in_field = np.array([[f[block_slices(u)].any() for f in fields] for u in units])
        else:
            problem = RegionProblem(model, image, Stacked(outcomes), intervention, batch_size)
            in_field = np.ones_like(outside)
        applies = outside & in_field
        table = shared_sequential_estimate(problem, units, applies, torch.Generator().manual_seed(seed), rule)
    seconds = time.perf_counter() - start
    out = []
    for r, roi in enumerate(rois):
        results = [
            row[r]
            if row[r] is not None
            else UnitResult(u, 0.0, 0.0, 0.0, 0, "exact_zero" if outside[i, r] else "skipped")
            for i, (u, row) in enumerate(zip(units, table, strict=True))
        ]
        ate, se, q, zero, rows = _to_maps(results, shape, rule.tau, rule.alpha)
        ate[roi.mask], se[roi.mask], q[roi.mask] = 0.0, 0.0, 1.0
        config = {
            "outcome": outcome,
            "intervention": intervention.name,
            "estimator": "shared_sequential",
            "block": block,
            "coarse_block": block,
            "tau": rule.tau,
            "seed": seed,
            "skip_roi": True,
            "image_shape": list(shape),
            "roi": roi.description,
            "alpha": rule.alpha,
            "rois_shared": len(rois),
            "tile_passes": getattr(getattr(problem, "cache", None), "tile_passes", None),
        }
        out.append(
            Explanation(
                ate,
                se,
                rows,
                float(problem.base[r]),
                problem.forward_passes,
                seconds,
                roi.mask,
                config,
                q,
                zero,
            )
        )
    return out

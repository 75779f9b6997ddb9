"""Input-region ATE maps: ATE_k = E_p[M(do(x[k] := p))] − M(x) per block k, written back onto pixels.

A block is a tuple of (start, stop) per spatial axis, so the same code explains 2D
images (square blocks) and 3D volumes (cubic blocks). Negative ATE: replacing the block
lowers the outcome, so its original content supported the segmentation (red in the
figures, as the reference); positive: it hurt (blue).

Each block also gets a Benjamini–Hochberg q-value across the blocks of the explanation
(``Explanation.q``); summaries count blocks as significantly negative / positive (q < α
and |ATE| ≥ τ), not significant, or called zero by the estimator.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.core.progress import progress_bar
from triptych.core.results import json_text
from triptych.pdcr.estimate import (
    ZERO_STATUSES,
    SequentialRule,
    UnitResult,
    batched_draws,
    bh_significance,
    coarse_to_fine,
    reference_estimate,
)
from triptych.pdcr.interventions import RegionIntervention, apply_block, make_intervention
from triptych.pdcr.models import SegmentationModel, eval_mode, with_output
from triptych.pdcr.registry import ESTIMATORS
from triptych.pdcr.roi import Outcome, RoI, make_outcome

Block = tuple[tuple[int, int], ...]
HIST_BINS = (-np.inf, -3, -1, -0.3, "-tau", "tau", 0.3, 1, 3, np.inf)  # the paper's histogram edges


def block_slices(block: Block) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in block)


def block_grid(shape: Sequence[int], size: int | Sequence[int]) -> list[Block]:
    """Non-overlapping blocks of side ``size`` tiling ``shape`` (edge blocks may be smaller)."""
    sizes = (int(size),) * len(shape) if isinstance(size, int | np.integer) else tuple(int(s) for s in size)
    if any(s <= 0 for s in sizes):
        raise InputError(f"--block {size}: block sides must be positive")
    axes = [[(a, min(a + s, n)) for a in range(0, n, s)] for n, s in zip(shape, sizes, strict=True)]
    return [tuple(b) for b in itertools.product(*axes)]


def split_block(block: Block, finest: int) -> list[Block]:
    """Halve every side of ``block`` longer than ``finest`` (quadtree in 2D, octree in 3D)."""
    if all(b - a <= finest for a, b in block):
        return []
    halves = []
    for a, b in block:
        if b - a <= finest:
            halves.append([(a, b)])
        else:
            mid = a + max(finest, ((b - a) // 2 // finest) * finest)
            halves.append([(a, mid), (mid, b)])
    return [tuple(c) for c in itertools.product(*halves)]


def overlaps(block: Block, roi: np.ndarray) -> bool:
    return bool(roi[block_slices(block)].any())


class NoBar:
    """Stands in for a progress bar when progress is off."""

    def update(self, n: int) -> None:
        pass


class RegionProblem:
    """Effect draws d = M(do(x[k] := p)) − M(x) for blocks k, batched through the model."""

    def __init__(
        self,
        model: SegmentationModel,
        image: torch.Tensor,
        outcome: Outcome,
        intervention: RegionIntervention,
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> None:
        self.model, self.image, self.outcome, self.intervention = model, image, outcome, intervention
        self.batch_size = batch_size
        # explain_regions puts one bar over the whole estimate here
        self.bar: Any = progress_bar(None, "PdCR forward passes", unit="img") if show_progress else NoBar()
        self.stochastic = bool(intervention.stochastic)
        self.forward_passes = 0
        with torch.no_grad():
            base = self.outcome(self.base_probabilities())[0]
        # one outcome: a float; several (one per RoI): an array (R,)
        self.base: Any = float(base) if base.ndim == 0 else base.double().cpu().numpy()
        self.forward_passes += 1

    def base_probabilities(self) -> torch.Tensor:
        """The model's probabilities on the unperturbed image, (1, C, *spatial)."""
        return self.model.probabilities(self.image[None])

    def evaluate(self, batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            values = self.outcome(self.model.probabilities(batch))
        self.forward_passes += batch.shape[0]
        return values.double().cpu().numpy() - self.base

    def draw(
        self, units: Sequence[Block], counts: Sequence[int], generator: torch.Generator
    ) -> list[np.ndarray]:
        def run(groups: list[tuple[Block, int]]) -> np.ndarray:
            inputs = [
                apply_block(
                    self.image,
                    block_slices(u),
                    self.intervention.sample(self.image, block_slices(u), n, generator),
                )
                for u, n in groups
            ]
            values = self.evaluate(torch.cat(inputs))
            self.bar.update(len(values))
            return values

        return batched_draws(units, counts, self.batch_size, run)


@dataclass
class Explanation:
    """An input-region explanation: ATE and SE maps (*S), per-block results, base outcome, cost."""

    ate: np.ndarray
    se: np.ndarray
    blocks: list[dict[str, Any]]
    base: float
    forward_passes: int
    seconds: float
    roi: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    q: np.ndarray | None = None  # BH q-value per pixel (1 where nothing was tested)
    zero: np.ndarray | None = None  # True where the estimator called the block zero

    def _cells(self) -> list[Block]:
        size = int(self.config["block"])
        return [b for b in block_grid(self.ate.shape, size) if not overlaps(b, self.roi)]

    def finest_cells(self) -> np.ndarray:
        """ATE of each finest-grid cell outside the RoI (the units the summary counts)."""
        return np.array([float(self.ate[block_slices(b)].flat[0]) for b in self._cells()])

    def significance_counts(self, alpha: float | None = None) -> dict[str, int]:
        """Finest cells outside the RoI by significance: BH q < α with |ATE| ≥ τ, by sign; not significant;
        called zero by the estimator."""
        alpha = float(self.config.get("alpha", 0.05)) if alpha is None else alpha
        cells = self._cells()
        ate = self.finest_cells()
        q = (
            np.array([float(self.q[block_slices(b)].flat[0]) for b in cells])
            if self.q is not None
            else np.ones(len(cells))
        )
        zero = (
            np.array([bool(self.zero[block_slices(b)].flat[0]) for b in cells])
            if self.zero is not None
            else ate == 0
        )
        sig = (q < alpha) & (ate != 0)
        return {
            "significant_negative": int((sig & (ate < 0)).sum()),
            "significant_positive": int((sig & (ate > 0)).sum()),
            "not_significant": int((~sig & ~zero).sum()),
            "called_zero": int((~sig & zero).sum()),
        }

    def summary(self) -> dict[str, Any]:
        """Base outcome, counts by significance and by sign (the paper's dead-zone convention), histogram, cost."""
        tau = float(self.config.get("tau", 0.02))
        cells = self.finest_cells()
        edges = [tau if e == "tau" else -tau if e == "-tau" else float(e) for e in HIST_BINS]
        counts, _ = np.histogram(cells, bins=edges)
        estimated = [b for b in self.blocks if b["status"] != "skipped"]
        return {
            "base_outcome": self.base,
            "outcome": self.config.get("outcome"),
            **self.significance_counts(),
            # by sign after the dead zone alone (the paper's pie): negative = supports the RoI
            "positive_blocks": int((cells > 0).sum()),
            "negative_blocks": int((cells < 0).sum()),
            "zero_blocks": int((cells == 0).sum()),
            "histogram_edges": [str(e) if not np.isfinite(e) else e for e in edges],
            "histogram_counts": counts.tolist(),
            "estimated_units": len(estimated),
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
            "max_abs_ate": float(np.abs(self.ate).max()),
            **{k: v for k, v in self.config.items() if k != "outcome"},
        }

    def save(self, out: Path) -> None:
        """ate.npy, se.npy, blocks.json and summary.json into ``out`` (a staging folder)."""
        np.save(out / "ate.npy", self.ate)
        np.save(out / "se.npy", self.se)
        if self.q is not None:
            np.save(out / "q.npy", self.q)
        (out / "blocks.json").write_text(json_text(self.blocks, indent=None))
        (out / "summary.json").write_text(json_text(self.summary(), default=float))


def _to_maps(
    results: list[UnitResult], shape: Sequence[int], tau: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Write each unit's ATE/SE/q onto its pixels, coarse first so finer estimates overwrite them."""
    ate, se, q, zero = np.zeros(shape), np.zeros(shape), np.ones(shape), np.zeros(shape, dtype=bool)
    tested = [r for r in results if r.status not in ("skipped", "relevant")]
    qvalue = dict(zip(map(id, tested), bh_significance(tested, tau, alpha), strict=True))
    rows = []
    for r in sorted(results, key=lambda r: r.level):
        sl = block_slices(r.unit)
        if r.status != "skipped":
            ate[sl], se[sl] = r.ate, r.se
            q[sl], zero[sl] = qvalue.get(id(r), 1.0), r.status in ZERO_STATUSES
        rows.append(
            {
                "block": [list(p) for p in r.unit],
                "level": r.level,
                "ate": r.ate,
                "mean": r.mean,
                "se": r.se,
                "n": r.n,
                "status": r.status,
                "q": qvalue.get(id(r), 1.0),
            }
        )
    return ate, se, q, zero, rows


def reference_estimator(
    problem: RegionProblem,
    shape: Sequence[int],
    mask: np.ndarray,
    gen: torch.Generator,
    *,
    block: int,
    coarse_block: int | None,
    skip_roi: bool,
    tau: float,
    screen: int,
    draws: int,
    rule: SequentialRule | None,
) -> list[UnitResult]:
    """The paper's rule on a fixed grid of ``block`` (blocks over the RoI skipped)."""
    grid = block_grid(shape, block)
    units = [b for b in grid if not (skip_roi and overlaps(b, mask))]
    results = reference_estimate(problem, units, gen, screen=screen, draws=draws, tau=tau)
    return results + [
        UnitResult(b, 0.0, 0.0, 0.0, 0, "skipped") for b in grid if skip_roi and overlaps(b, mask)
    ]


def adaptive_estimator(
    problem: RegionProblem,
    shape: Sequence[int],
    mask: np.ndarray,
    gen: torch.Generator,
    *,
    block: int,
    coarse_block: int | None,
    skip_roi: bool,
    tau: float,
    screen: int,
    draws: int,
    rule: SequentialRule | None,
) -> list[UnitResult]:
    """Coarse-to-fine from ``coarse_block`` (default 4·block) with sequential sampling at ``block``."""
    return coarse_to_fine(
        problem,
        block_grid(shape, coarse_block or 4 * block),
        gen,
        split=lambda b: split_block(b, block),
        must_split=lambda b: skip_roi and overlaps(b, mask),
        skip=lambda b: skip_roi and overlaps(b, mask),
        rule=rule or SequentialRule(tau=tau, max_draws=draws),
    )


def explain_regions(
    model: SegmentationModel,
    image: torch.Tensor,
    roi: RoI,
    *,
    outcome: str | Outcome = "dice_self",
    ground_truth: np.ndarray | None = None,
    intervention: str | RegionIntervention = "patch_bank",
    dataset: Sequence[torch.Tensor] | None = None,
    exclude: int | None = None,
    block: int = 8,
    coarse_block: int | None = None,
    skip_roi: bool = True,
    estimator: str = "adaptive",
    seed: int = 0,
    batch_size: int = 32,
    tau: float = 0.02,
    screen: int = 3,
    draws: int = 50,
    rule: SequentialRule | None = None,
    show_progress: bool = True,
    target_class: int | None = None,
) -> Explanation:
    """ATE map of input blocks on outcome M for RoI ``roi`` of ``image`` (C, *S).

    ``estimator='reference'`` is the paper's rule on a fixed grid of ``block``;
    ``'adaptive'`` starts at ``coarse_block`` (default 4·block) and splits significant
    blocks down to ``block`` with sequential sampling. ``target_class``: for a multi-class
    model, the class a named per-class ``outcome`` is about (default: the model's).
    """
    estimate = ESTIMATORS.get(estimator)
    model = with_output(model, target_class=target_class)
    if image.ndim != model.spatial_dims + 1:
        raise InputError(
            f"--image has shape {tuple(image.shape)}; the model expects (C, *S) with "
            f"{model.spatial_dims} spatial axes"
        )
    if image.shape[0] != model.spec.in_channels:
        raise InputError(
            f"--image has {image.shape[0]} channel(s); the model expects {model.spec.in_channels}"
        )
    if tuple(image.shape[1:]) != roi.shape:
        raise InputError(f"--roi shape {roi.shape} differs from the image's {tuple(image.shape[1:])}")
    if roi.area == 0:
        raise InputError("--roi has zero area; give a box or mask with at least one pixel")
    image = image.float()
    gen = torch.Generator().manual_seed(seed)
    if isinstance(intervention, str):
        patch = block if estimator == "reference" else (coarse_block or 4 * block)
        intervention = make_intervention(
            intervention, dataset=dataset, exclude=exclude, patch_size=patch, seed=seed
        )
    out_fn = make_outcome(outcome, model, image, roi, ground_truth) if isinstance(outcome, str) else outcome
    start = time.perf_counter()
    with eval_mode(model):  # the caller's model comes back in the mode it came in
        problem = RegionProblem(model, image, out_fn, intervention, batch_size)
    bar = (
        progress_bar(None, "PdCR forward passes", unit="img")
        if show_progress
        else contextlib.nullcontext(NoBar())
    )
    mask = roi.mask
    with bar as problem.bar, eval_mode(model):
        results = estimate(
            problem,
            image.shape[1:],
            mask,
            gen,
            block=block,
            coarse_block=coarse_block,
            skip_roi=skip_roi,
            tau=tau,
            screen=screen,
            draws=draws,
            rule=rule,
        )
    alpha = rule.alpha if rule is not None else 0.05
    ate, se, q, zero, rows = _to_maps(results, image.shape[1:], tau if rule is None else rule.tau, alpha)
    if skip_roi:
        ate[mask], se[mask], q[mask] = 0.0, 0.0, 1.0
    config = {
        "outcome": getattr(out_fn, "name", str(outcome)),
        "intervention": intervention.name,
        "estimator": estimator,
        "block": block,
        "coarse_block": coarse_block or (4 * block if estimator == "adaptive" else block),
        "tau": tau,
        "seed": seed,
        "skip_roi": skip_roi,
        "image_shape": list(image.shape[1:]),
        "roi": roi.description,
        "alpha": alpha,
    }
    return Explanation(
        ate,
        se,
        rows,
        problem.base,
        problem.forward_passes,
        time.perf_counter() - start,
        mask,
        config,
        q,
        zero,
    )

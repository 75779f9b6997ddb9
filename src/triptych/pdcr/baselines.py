"""Baseline explainers of a segmentation RoI: Seg-Grad-CAM, zero occlusion, RISE, Integrated
Gradients and a MiSuRe-style minimal sufficient region.

Every method is a Captum-style object, ``Method(target).attribute(inputs)``, and
:func:`explain_baseline` turns any of them into a :class:`Saliency` (one map per image,
higher = more support for the RoI's segmentation) so that one code path evaluates them
all, PdCR included (:func:`saliency_from_ate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triptych.core.errors import InputError
from triptych.pdcr.models import SegmentationModel
from triptych.pdcr.roi import MeanDice, Outcome, RoI, RoIDice, make_outcome


class ForwardCounter:
    """Counts the images the network forwards (the cost unit of every explainer), by a pre-hook."""

    def __init__(self, net: nn.Module):
        self.images = 0
        self._hook = net.register_forward_pre_hook(self._count)

    def _count(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.images += int(args[0].shape[0])

    def remove(self) -> None:
        self._hook.remove()


@dataclass
class Target:
    """What is explained: ``model``'s target-class output inside ``roi``, scored by ``outcome``.

    ``outcome`` is one of :mod:`triptych.pdcr.roi`'s outcomes (probabilities -> (B,) on the
    0–100 scale); :meth:`build` makes it from a name as ``explain_regions`` does.
    """

    model: SegmentationModel
    roi: RoI
    outcome_fn: Outcome

    @classmethod
    def build(
        cls,
        model: SegmentationModel,
        image: Tensor,
        roi: RoI,
        outcome: str = "dice_self",
        ground_truth: Any = None,
        empty_dice: float = 1.0,
        target_class: int | None = None,
    ) -> Target:
        """The target for ``model`` on ``image`` (C, *spatial) with outcome kind ``outcome``; ``target_class``
        picks a multi-class model's explained class (default: the model's)."""
        from triptych.pdcr.models import with_output

        model = with_output(model, target_class=target_class)
        return cls(model, roi, make_outcome(outcome, model, image, roi, ground_truth, empty_dice))

    @property
    def roi_mask(self) -> Tensor:
        return self.roi.tensor()

    def roi_logit(self, x: Tensor) -> Tensor:
        """s(x) = Σ_{p∈R} f_c(x)_p, the RoI-summed logit of Seg-Grad-CAM: (B, C, H, W) -> (B,)."""
        return self.model(x)[:, self.model.spec.target_class][:, self.roi_mask].sum(-1)

    def outcome(self, x: Tensor) -> Tensor:
        """M(x) / 100 in [0, 1] for a batch of images (B, C, H, W) -> (B,), without gradients."""
        with torch.no_grad():
            return self.outcome_fn(self.model.probabilities(x)) / 100.0

    def soft_outcome(self, x: Tensor) -> Tensor:
        """A differentiable M: soft RoI Dice 2Σpy/(Σp+Σy) against y, or the soft mass: (B, C, H, W) -> (B,)."""
        if isinstance(self.outcome_fn, MeanDice):  # soft Dice per foreground class, averaged
            prob = self.model.probabilities(x)[:, :, self.roi_mask]  # (B, K, n)
            ref = self.outcome_fn.reference[self.roi_mask]
            y = torch.stack([ref == c for c in range(prob.shape[1])]).float()  # (K, n)
            soft = (2 * (prob * y).sum(-1) + 1e-6) / (prob.sum(-1) + y.sum(-1) + 1e-6)
            return soft[:, 1:].mean(-1)
        p = self.model.target_probability(x)[:, self.roi_mask]
        if not isinstance(self.outcome_fn, RoIDice):
            return p.mean(-1)
        y = self.outcome_fn.reference[self.roi_mask].float()
        return (2 * (p * y).sum(-1) + 1e-6) / (p.sum(-1) + y.sum() + 1e-6)


def bottleneck_layer(model: nn.Module, example: Tensor) -> nn.Module:
    """The last module to output the coarsest feature map: the bottleneck of an encoder–decoder."""
    seen: list[tuple[int, nn.Module]] = []

    def record(mod: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.ndim == example.ndim:
            seen.append((out[0, 0].numel(), mod))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise InputError("model has no sub-modules with spatial outputs; pass layer= to SegGradCAM")
    coarsest = min(n for n, _ in seen)
    return [m for n, m in seen if n == coarsest][-1]


class SegGradCAM:
    """Seg-Grad-CAM (Vinogradova et al. 2020): Grad-CAM of the RoI-summed logit at ``layer``."""

    def __init__(self, target: Target, layer: nn.Module | None = None, relu: bool = True):
        self.target, self.layer, self.relu = target, layer, relu

    def attribute(self, inputs: Tensor) -> Tensor:
        """L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂s/∂A^k_ij, upsampled: (B, C, H, W) -> (B, 1, H, W)."""
        from captum.attr import LayerAttribution, LayerGradCam

        layer = self.layer or bottleneck_layer(self.target.model.net, inputs)
        cam = LayerGradCam(self.target.roi_logit, layer).attribute(inputs, relu_attributions=self.relu)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), "bilinear")


class IntegratedGradientsMap:
    """Integrated Gradients (Sundararajan et al. 2017) of the RoI-summed logit, summed over channels."""

    def __init__(self, target: Target, n_steps: int = 32, baseline: float = 0.0):
        self.target, self.n_steps, self.baseline = target, n_steps, baseline

    def attribute(self, inputs: Tensor) -> Tensor:
        """IG_i = (x_i − x'_i) ∫ ∂s(x' + α(x − x'))/∂x_i dα: (B, C, H, W) -> (B, 1, H, W)."""
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(self.target.roi_logit)
        attr = ig.attribute(
            inputs, baselines=self.baseline, n_steps=self.n_steps, internal_batch_size=self.n_steps
        )
        return attr.sum(1, keepdim=True)


class ZeroOcclusion:
    """Zero occlusion (Zeiler & Fergus 2014): M(x) − M(x with block k := 0) per block."""

    def __init__(self, target: Target, block: int = 16, batch: int = 64):
        self.target, self.block, self.batch = target, block, batch

    def attribute(self, inputs: Tensor) -> Tensor:
        """A_k = M(x) − M(do(x_k := 0)) on a block grid: (B, C, H, W) -> (B, 1, H, W)."""
        from captum.attr import Occlusion

        window = (inputs.shape[1], self.block, self.block)
        attr = Occlusion(self.target.outcome).attribute(
            inputs,
            sliding_window_shapes=window,
            strides=window,
            baselines=0.0,
            perturbations_per_eval=self.batch,
        )
        return attr[:, :1]


class RISE:
    """RISE (Petsiuk et al. 2018): random smooth masks weighted by the RoI outcome."""

    def __init__(
        self,
        target: Target,
        n_masks: int = 500,
        cells: int = 8,
        p_keep: float = 0.5,
        batch: int = 50,
        seed: int = 0,
    ):
        self.target, self.n_masks, self.cells, self.p_keep = target, n_masks, cells, p_keep
        self.batch, self.seed = batch, seed

    def masks(self, shape: tuple[int, int]) -> Tensor:
        """N smooth masks: Bernoulli(p) on a cells×cells grid, bilinearly upsampled and randomly shifted."""
        g = torch.Generator().manual_seed(self.seed)
        h, w = shape
        ch, cw = -(-h // self.cells), -(-w // self.cells)
        grid = (torch.rand(self.n_masks, 1, self.cells, self.cells, generator=g) < self.p_keep).float()
        up = F.interpolate(
            grid, size=((self.cells + 1) * ch, (self.cells + 1) * cw), mode="bilinear", align_corners=False
        )
        dy = torch.randint(0, ch, (self.n_masks,), generator=g)
        dx = torch.randint(0, cw, (self.n_masks,), generator=g)
        return torch.stack([up[i, 0, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(self.n_masks)])

    def attribute(self, inputs: Tensor) -> Tensor:
        """S = Σ_i M(x ⊙ m_i) m_i / (N p): (1, C, H, W) -> (1, 1, H, W)."""
        masks = self.masks(tuple(inputs.shape[-2:]))
        sal = torch.zeros(inputs.shape[-2:])
        for start in range(0, self.n_masks, self.batch):
            m = masks[start : start + self.batch]
            scores = self.target.outcome(inputs[:1] * m[:, None])
            sal += (scores[:, None, None] * m).sum(0)
        return (sal / (self.n_masks * self.p_keep))[None, None]


def total_variation(m: Tensor) -> Tensor:
    """TV(m) = mean |∇_y m| + mean |∇_x m| of a (..., H, W) mask."""
    return (m[..., 1:, :] - m[..., :-1, :]).abs().mean() + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()


class MiSuRe:
    """MiSuRe-style minimal sufficient region (Hasany et al. 2024), for one RoI.

    Stage 1 dilates the RoI until keeping only that region (the rest := ``fill``) gives an
    RoI Dice ≥ ``sufficient``; stage 2 optimises a soft mask m, started there, to minimise
    λ_d (1 − softDice) + λ_1 |m|_1 + λ_tv TV(m). The map is m: 1 = needed to keep the RoI.
    """

    def __init__(
        self,
        target: Target,
        sufficient: float = 0.9,
        dilation_step: int = 4,
        steps: int = 60,
        lr: float = 0.2,
        lambda_dice: float = 1.0,
        lambda_l1: float = 0.3,
        lambda_tv: float = 0.1,
        mask_scale: int = 4,
        fill: float = 0.0,
    ):
        self.target, self.sufficient, self.dilation_step = target, sufficient, dilation_step
        self.steps, self.lr, self.mask_scale, self.fill = steps, lr, mask_scale, fill
        self.lambdas = (lambda_dice, lambda_l1, lambda_tv)

    def dilate_until_sufficient(self, inputs: Tensor) -> Tensor:
        """Stage 1: the smallest dilation of R whose kept image already gives RoI Dice ≥ sufficient."""
        region = self.target.roi_mask.float()[None, None]
        size = max(inputs.shape[-2:])
        for _ in range(0, size, self.dilation_step):
            kept = inputs[:1] * region + self.fill * (1 - region)
            if self.target.outcome(kept).item() >= self.sufficient:
                break
            region = F.max_pool2d(region, 2 * self.dilation_step + 1, stride=1, padding=self.dilation_step)
        return region[0, 0]

    def attribute(self, inputs: Tensor) -> Tensor:
        """Stage 2: m* = argmin λ_d(1 − softDice(x⊙m)) + λ_1 mean m + λ_tv TV(m): (1, C, H, W) -> (1, 1, H, W)."""
        start = self.dilate_until_sufficient(inputs)
        h, w = inputs.shape[-2:]
        low = F.adaptive_avg_pool2d(start[None, None], (h // self.mask_scale, w // self.mask_scale))
        param = torch.logit(low.clamp(0.05, 0.95)).clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=self.lr)
        ld, l1, ltv = self.lambdas
        for _ in range(self.steps):
            m = F.interpolate(param.sigmoid(), size=(h, w), mode="bilinear", align_corners=False)
            kept = inputs[:1] * m + self.fill * (1 - m)
            loss = ld * (1 - self.target.soft_outcome(kept)).sum() + l1 * m.mean() + ltv * total_variation(m)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return F.interpolate(param.sigmoid(), size=(h, w), mode="bilinear", align_corners=False)


METHODS: dict[str, Callable[..., Any]] = {
    "seg_grad_cam": SegGradCAM,
    "zero_occlusion": ZeroOcclusion,
    "rise": RISE,
    "integrated_gradients": IntegratedGradientsMap,
    "misure": MiSuRe,
}


@dataclass
class Saliency:
    """One explanation as the faithfulness metrics see it: an (H, W) map, higher = more support."""

    method: str
    map: np.ndarray
    seconds: float
    forward_passes: int


def explain_baseline(method: str, target: Target, image: Tensor, **options: Any) -> Saliency:
    """Run baseline ``method`` on one (C, H, W) image and time it; forward passes counted at the model."""
    if method not in METHODS:
        raise InputError(f"unknown baseline {method!r}; choose from {sorted(METHODS)}")
    return explain_with(method, METHODS[method](target, **options), target, image)


def explain_with(method: str, explainer: Any, target: Target, image: Tensor) -> Saliency:
    """Any explainer with ``attribute(inputs)`` (a baseline or :class:`triptych.pdcr.explainer.PdCR`) on one
    (C, H, W) image, timed, forward passes counted at the model."""
    counter = ForwardCounter(target.model.net)
    try:
        t0 = time.perf_counter()
        attr = explainer.attribute(image[None].float())
        seconds = time.perf_counter() - t0
    finally:
        counter.remove()
    return Saliency(method, attr.detach()[0, 0].numpy().astype(np.float64), seconds, counter.images)


def saliency_from_ate(ate: np.ndarray, seconds: float, forward_passes: int, method: str = "pdcr") -> Saliency:
    """A PdCR ATE map as a saliency: −ATE, since a negative ATE means the pixels support the RoI."""
    return Saliency(method, -np.asarray(ate, dtype=np.float64), seconds, forward_passes)

"""Each baseline on small constructed models whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from triptych.pdcr.baselines import (
    METHODS,
    SegGradCAM,
    Target,
    bottleneck_layer,
    explain_baseline,
    saliency_from_ate,
)
from triptych.pdcr.faithfulness import block_scores, grid_units
from triptych.pdcr.models import wrap_model
from triptych.pdcr.roi import RoI

H = 32
BLOCK = 8


class WeightedSum(nn.Module):
    """logit_p(x) = Σ_q W_q x_q − b at every pixel p: (B, 1, H, W) -> (B, 1, H, W)."""

    def __init__(self, weight: torch.Tensor, bias: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.weight).sum((-1, -2)) - self.bias
        return s[:, None, None, None].expand(-1, 1, *x.shape[-2:])


def block_weights() -> tuple[torch.Tensor, np.ndarray]:
    """A (H, W) weight map constant on 8×8 blocks; block k outside the RoI gets a distinct weight."""
    rng = np.random.default_rng(3)
    per_block = rng.permutation(16).astype(np.float32) / 16 / BLOCK**2
    w = torch.from_numpy(np.kron(per_block.reshape(4, 4), np.ones((BLOCK, BLOCK), np.float32)))
    return w, per_block


def linear_target(outcome: str = "soft_mass") -> tuple[Target, torch.Tensor, np.ndarray]:
    w, per_block = block_weights()
    # mean logit 0 on an all-ones image keeps the sigmoid near its linear range
    net = WeightedSum(w, bias=float(w.sum()) / 2)
    model = wrap_model(
        net, spatial_dims=2, in_channels=1, out_channels=1, emits="logits", activation="sigmoid"
    )
    image = torch.ones(1, H, H)
    roi = RoI.box(0, 0, BLOCK, BLOCK, (H, H))  # block 0
    return Target.build(model.eval(), image, roi, outcome), image, per_block


def test_integrated_gradients_is_exact_on_a_linear_model():
    target, image, _ = linear_target()
    s = explain_baseline("integrated_gradients", target, image, n_steps=16)
    # IG of a linear score is (x − 0) ⊙ ∂s/∂x = W summed over the RoI's 64 pixels
    expected = target.model.net.weight.numpy() * BLOCK**2
    np.testing.assert_allclose(s.map, expected, rtol=1e-4)
    assert s.forward_passes == 16


@pytest.mark.parametrize("method", ["zero_occlusion", "rise"])
def test_perturbation_baselines_rank_blocks_by_their_true_weight(method):
    target, image, per_block = linear_target()
    opts = {"block": BLOCK} if method == "zero_occlusion" else {"n_masks": 4000, "cells": 8}
    s = explain_baseline(method, target, image, **opts)
    units = grid_units((H, H), BLOCK)
    rho = spearmanr(block_scores(s.map, units), per_block).statistic
    assert rho > (0.99 if method == "zero_occlusion" else 0.75)  # RISE is a noisy Monte Carlo estimate
    if method == "zero_occlusion":
        assert s.forward_passes == 1 + 16  # the unperturbed image plus one per block


def test_misure_keeps_the_heavy_blocks_and_drops_the_useless_ones():
    target, image, per_block = linear_target("dice_self")
    s = explain_baseline("misure", target, image, steps=80)
    scores = block_scores(s.map, grid_units((H, H), BLOCK))
    heavy, light = np.argsort(per_block)[-4:], np.argsort(per_block)[:4]
    assert scores[heavy].mean() > scores[light].mean() + 0.1
    assert s.map.min() >= 0.0 and s.map.max() <= 1.0


class TwoPath(nn.Module):
    """Bottleneck of two channels: channel 0 sees the left half and drives the logit, channel 1 the right half."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Conv2d(1, 2, 1, bias=False)
        self.encode.weight.data[:] = 1.0
        self.bottleneck = nn.AvgPool2d(4)
        half = torch.zeros(2, H, H)
        half[0, :, : H // 2] = 1.0
        half[1, :, H // 2 :] = 1.0
        self.register_buffer("sides", half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bottleneck(self.encode(x) * self.sides)  # (B, 2, 8, 8)
        s = 3.0 * a[:, 0].sum((-1, -2)) - 0.0 * a[:, 1].sum((-1, -2)) - 40.0
        return s[:, None, None, None].expand(-1, 1, *x.shape[-2:])


def test_seg_grad_cam_follows_the_channel_that_drives_the_roi():
    net = TwoPath()
    model = wrap_model(
        net, spatial_dims=2, in_channels=1, out_channels=1, emits="logits", activation="sigmoid"
    )
    image = torch.rand(1, H, H, generator=torch.Generator().manual_seed(0))
    target = Target.build(model, image, RoI.box(20, 20, 4, 4, (H, H)), "soft_mass")
    assert bottleneck_layer(net, image[None]) is net.bottleneck
    cam = SegGradCAM(target).attribute(image[None])[0, 0].detach().numpy()
    assert cam.shape == (H, H)
    left, right = cam[:, : H // 2 - 4].sum(), cam[:, H // 2 + 4 :].sum()
    assert left > 0 and right == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_baseline_runs_on_a_small_monai_unet(method, tiny_unet):
    model = tiny_unet(in_channels=3).eval()
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = Target.build(model, image, RoI.box(12, 12, 8, 8, (32, 32)), "dice_self")
    opts = {"rise": {"n_masks": 40}, "misure": {"steps": 5}, "integrated_gradients": {"n_steps": 8}}.get(
        method, {}
    )
    s = explain_baseline(method, target, image, **opts)
    assert s.map.shape == (32, 32) and np.isfinite(s.map).all()
    assert s.forward_passes > 0 and s.seconds > 0
    assert np.abs(s.map).sum() > 0


def test_unknown_baseline_and_pdcr_sign_convention():
    target, image, _ = linear_target()
    with pytest.raises(ValueError, match="unknown baseline"):
        explain_baseline("gradcam++", target, image)
    ate = np.array([[-2.0, 1.0]])
    s = saliency_from_ate(ate, 1.0, 10)
    assert s.map.tolist() == [[2.0, -1.0]]  # a negative ATE (support) is high importance

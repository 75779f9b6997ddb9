"""Deletion/insertion curves on constructed models where the right ordering of blocks is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from triptych.pdcr.baselines import Saliency, Target
from triptych.pdcr.faithfulness import (
    auc,
    deletion_curve,
    evaluate,
    grid_units,
    importance_order,
    insertion_curve,
    leakage,
    removed_image,
    step_counts,
)
from triptych.pdcr.interventions import Blur, PatchBank, Zero
from triptych.pdcr.models import wrap_model
from triptych.pdcr.roi import RoI

H, BLOCK = 32, 8


class BlockEnergy(nn.Module):
    """logit = a · Σ_q W_q g(x_q) − b at every pixel; g(x) = x (linear) or (x − ½)² (contrast energy)."""

    def __init__(self, weight: torch.Tensor, energy: bool):
        super().__init__()
        self.register_buffer("weight", weight)
        self.energy = energy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 4 * (x[:, 0] - 0.5) ** 2 if self.energy else x[:, 0]
        s = 6.0 * (g * self.weight).sum((-1, -2)) - 3.0
        return s[:, None, None, None].expand(-1, 1, *x.shape[-2:])


def case(operator: str):
    """A model, image, RoI (top-left block), blocks outside it with known weights, and a removal operator."""
    per_block = np.random.default_rng(0).permutation(16).astype(np.float32)
    per_block[0] = 0.0  # the RoI's block
    per_block /= per_block.sum()
    weight = torch.from_numpy(
        np.kron(per_block.reshape(4, 4), np.ones((BLOCK, BLOCK), np.float32)) / BLOCK**2
    )
    energy = operator != "zero"
    if energy:  # a checkerboard has full contrast energy; blur and flat patches remove it
        yy, xx = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
        image = torch.from_numpy(((yy + xx) % 2).astype(np.float32))[None]
    else:
        image = torch.ones(1, H, H)
    model = wrap_model(
        BlockEnergy(weight, energy),
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        emits="logits",
        activation="sigmoid",
    ).eval()
    roi = RoI.box(0, 0, BLOCK, BLOCK, (H, H))
    target = Target.build(model, image, roi, "soft_mass")
    units = grid_units((H, H), BLOCK, roi.mask)
    op = {
        "zero": Zero(),
        "blur": Blur(sigma=2.0),
        "patch_bank": PatchBank(torch.full((10, 1, BLOCK, BLOCK), 0.5)),
    }[operator]
    truth = np.array([per_block[(u[0].start // BLOCK) * 4 + u[1].start // BLOCK] for u in units])
    return target, image, units, op, truth


def test_grid_units_leave_out_the_roi_and_step_counts_cover_all_blocks():
    roi = RoI.box(0, 0, BLOCK, BLOCK, (H, H))
    units = grid_units((H, H), BLOCK, roi.mask)
    assert len(units) == 15 and all(not roi.mask[u].any() for u in units)
    assert step_counts(15, 5).tolist() == [0, 3, 6, 9, 12, 15]


@pytest.mark.parametrize("operator", ["zero", "blur", "patch_bank"])
def test_true_order_beats_random_beats_reversed(operator):
    target, image, units, op, truth = case(operator)
    removed = removed_image(op, image, units)
    best, worst = np.argsort(-truth), np.argsort(truth)
    rand = np.random.default_rng(1).permutation(len(units))
    dels = {
        name: auc(*deletion_curve(target, image, removed, o, units, steps=15))
        for name, o in [("best", best), ("random", rand), ("worst", worst)]
    }
    ins = {
        name: auc(*insertion_curve(target, image, removed, o, units, steps=15))
        for name, o in [("best", best), ("random", rand), ("worst", worst)]
    }
    # deleting the heavy blocks first drops M fastest; restoring them first raises it fastest
    assert dels["best"] < dels["random"] < dels["worst"]
    assert ins["best"] > ins["random"] > ins["worst"]
    assert dels["worst"] - dels["best"] > 0.1


def test_curves_start_and_end_where_they_must():
    target, image, units, op, truth = case("zero")
    removed = removed_image(op, image, units)
    order = np.argsort(-truth)
    f, d = deletion_curve(target, image, removed, order, units, steps=15)
    _, i = insertion_curve(target, image, removed, order, units, steps=15)
    base = float(target.outcome(image[None]))
    # deletion starts at M(x) and ends at M(x̃); insertion runs the other way
    assert f[0] == 0 and f[-1] == 1
    assert d[0] == pytest.approx(base) and i[-1] == pytest.approx(base)
    assert d[-1] == pytest.approx(i[0])
    assert d[-1] < base - 0.5


def test_evaluate_scores_a_faithful_map_above_an_inverted_one():
    target, image, units, op, truth = case("blur")
    removed = {"blur": removed_image(op, image, units)}
    good = np.zeros((H, H))
    for u, t in zip(units, truth, strict=True):
        good[u] = t
    f_good = evaluate(target, image, Saliency("good", good, 0.1, 5), removed, units, steps=15)
    f_bad = evaluate(target, image, Saliency("bad", -good, 0.1, 5), removed, units, steps=15)
    assert f_good.deletion_auc["blur"] < f_bad.deletion_auc["blur"]
    assert f_good.insertion_auc["blur"] > f_bad.insertion_auc["blur"]
    assert f_good.row()["forward_passes"] == 5


def test_ties_are_broken_by_seed_and_leakage_measures_far_mass():
    units = grid_units((H, H), BLOCK)
    flat = np.zeros((H, H))
    assert importance_order(flat, units, 0).tolist() != importance_order(flat, units, 1).tolist()
    roi = RoI.box(0, 0, 4, 4, (H, H)).mask
    near, far = np.zeros((H, H)), np.zeros((H, H))
    near[:6, :6] = 1.0
    far[-4:, -4:] = -1.0
    assert leakage(near, roi, 8) == 0.0
    assert leakage(far, roi, 8) == 1.0
    assert leakage(near + far, roi, 8) == pytest.approx(16 / (36 + 16))
    assert leakage(flat, roi, 8) == 0.0

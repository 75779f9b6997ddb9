"""Issue 13 item 2: many RoIs of one image per forward pass, with common random numbers."""

from __future__ import annotations

import numpy as np
import torch

from triptych.pdcr.interventions import PatchBank, Zero
from triptych.pdcr.multiroi import explain_rois
from triptych.pdcr.regions import block_grid, block_slices, overlaps
from triptych.pdcr.roi import RoI
from triptych.pdcr.toy import linear_block_ate, linear_model

H = 32


def _setup():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, H, H, generator=gen)
    rng = np.random.default_rng(0)
    weights = {b: float(rng.choice([0.0, 0.02, 0.05])) for b in block_grid((H, H), 8)}
    model = linear_model(weights, (H, H), bias=0.1)
    rois = [RoI.box(0, 0, 8, 8, (H, H)), RoI.box(16, 8, 8, 8, (H, H)), RoI.box(24, 24, 8, 8, (H, H))]
    return model, image, rois


def test_shared_passes_equal_separate_runs_for_a_deterministic_intervention():
    model, image, rois = _setup()
    shared = explain_rois(model, image, rois, intervention=Zero(), outcome="soft_mass")
    separate = [explain_rois(model, image, [r], intervention=Zero(), outcome="soft_mass")[0] for r in rois]
    for a, b in zip(shared, separate, strict=True):
        np.testing.assert_allclose(a.ate, b.ate, atol=1e-9)
    assert shared[0].forward_passes == 1 + 16  # one pass per block serves all three RoIs
    assert sum(e.forward_passes for e in separate) == 3 * (1 + 16)


def test_shared_draws_recover_known_effects_with_fewer_passes():
    model, image, rois = _setup()
    values = torch.rand(300, generator=torch.Generator().manual_seed(1))
    bank = PatchBank(values.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone())
    shared = explain_rois(model, image, rois, intervention=bank, outcome="soft_mass", seed=0)
    separate = [
        explain_rois(model, image, [r], intervention=bank, outcome="soft_mass", seed=0)[0] for r in rois
    ]
    passes_separate = sum(e.forward_passes for e in separate)
    assert shared[0].forward_passes < passes_separate / 2
    for exp, roi in zip(shared, rois, strict=True):
        for b in block_grid((H, H), 8):
            if overlaps(b, roi.mask):
                continue
            truth = linear_block_ate(model, image, b, float(values.mean()))
            est, se = float(exp.ate[block_slices(b)].flat[0]), float(exp.se[block_slices(b)].flat[0])
            if abs(truth) > 0.5:
                assert abs(est - truth) < 4 * se + 1e-6, (b, est, truth, se)

"""Exact tile-by-tile sliding-window inference (issue 13): a block intervention recomputes only its tiles."""

from __future__ import annotations

import numpy as np
import torch

from triptych.pdcr.interventions import PatchBank, Zero, apply_block
from triptych.pdcr.models import build_model
from triptych.pdcr.multiroi import Stacked, explain_rois
from triptych.pdcr.regions import RegionProblem, block_grid, block_slices, overlaps
from triptych.pdcr.roi import RoI, make_outcome
from triptych.pdcr.tiles import TileCache, TiledRegionProblem, tiled

SHAPE = (44, 37)  # not a multiple of the tile stride: tiles at the edges are shifted, blocks straddle tiles


def _setup():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, features=(4, 8, 16), patch_size=(16, 16)).eval()
    image = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    bank = PatchBank(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    return model, image, bank


def test_tiled_probabilities_equal_the_full_sliding_window():
    model, image, bank = _setup()
    assert tiled(model, SHAPE)
    cache = TileCache(model, image)
    with torch.no_grad():
        torch.testing.assert_close(cache.probabilities(), model.probabilities(image[None]), atol=1e-6, rtol=0)
        for u in block_grid(SHAPE, 8)[::3]:
            content = bank.sample(image, block_slices(u), 3, torch.Generator().manual_seed(3))
            full = model.probabilities(apply_block(image, block_slices(u), content))
            torch.testing.assert_close(cache.probabilities(u, content), full, atol=1e-5, rtol=0)
    assert cache.tile_passes < 3 * len(cache.slices) * len(block_grid(SHAPE, 8)[::3])


def test_tiled_problem_gives_the_untiled_draws_and_exact_zeros_beyond_the_field():
    model, image, bank = _setup()
    roi = RoI.box(2, 2, 6, 6, SHAPE)
    outcome = Stacked([make_outcome("soft_mass", model, image, roi)])
    units = [u for u in block_grid(SHAPE, 8) if not overlaps(u, roi.mask)]
    full = RegionProblem(model, image, outcome, bank, 16).draw(
        units, [4] * len(units), torch.Generator().manual_seed(5)
    )
    fast_problem = TiledRegionProblem(model, image, outcome, bank, 16)
    fast = fast_problem.draw(units, [4] * len(units), torch.Generator().manual_seed(5))
    field = fast_problem.cache.field(roi.mask)
    assert not field.all()  # some blocks lie beyond every tile that sees the RoI
    for u, a, b in zip(units, full, fast, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
        if not field[block_slices(u)].any():
            assert np.all(a == 0) and np.all(b == 0)  # exactly, in the full model too


def test_explain_rois_marks_blocks_beyond_the_field_exact_zero():
    model, image, bank = _setup()
    rois = [RoI.box(2, 2, 6, 6, SHAPE), RoI.box(28, 30, 6, 6, SHAPE)]
    exps = explain_rois(model, image, rois, intervention=bank, outcome="soft_mass", rule=None, seed=0)
    for exp in exps:
        statuses = {b["status"] for b in exp.blocks}
        assert "exact_zero" in statuses
        for b in exp.blocks:
            if b["status"] == "exact_zero":
                assert b["n"] == 0 and b["ate"] == 0.0
        assert exp.summary()["called_zero"] >= sum(b["status"] == "exact_zero" for b in exp.blocks)


def test_shared_rois_equal_single_rois_on_a_tiled_model():
    """A deterministic intervention: the shared run's maps are exactly the single-RoI maps."""
    model, image, _ = _setup()
    rois = [RoI.box(2, 2, 6, 6, SHAPE), RoI.box(28, 30, 6, 6, SHAPE), RoI.box(20, 10, 6, 6, SHAPE)]
    shared = explain_rois(model, image, rois, intervention=Zero(), outcome="soft_mass")
    for roi, exp in zip(rois, shared, strict=True):
        assert np.abs(exp.ate).max() > 0
        alone = explain_rois(model, image, [roi], intervention=Zero(), outcome="soft_mass")[0]
        np.testing.assert_allclose(exp.ate, alone.ate, atol=1e-4)
        # and the untiled full model agrees
        full = explain_rois(model, image, [roi], intervention=Zero(), outcome="soft_mass", tiles=False)[0]
        np.testing.assert_allclose(exp.ate, full.ate, atol=1e-4)

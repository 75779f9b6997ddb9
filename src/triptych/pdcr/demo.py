"""``triptych demo`` step for PdCR: explain one RoI of the shipped U-Net on a new synthetic image.

The U-Net (``weights/demo_unet.safetensors``) was trained on MONAI's synthetic blobs by
``benchmarks/train_demo_weights.py``; nothing is trained here. Its Dice is measured again
on held-out synthetic images (a different seed from training), then one RoI is explained.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from triptych.core.demo import DemoResult, register_demo
from triptych.core.report import Section

WEIGHTS = "demo_unet.safetensors"
IMAGE_SEED = 4242  # the explained image: neither in the training (seed 0) nor the test (seed 1000) set


def shipped_model():
    """The shipped demo U-Net (a :class:`SegmentationModel`)."""
    from triptych.pdcr.models import load_model

    with resources.as_file(resources.files("triptych.pdcr") / "weights" / WEIGHTS) as path:
        return load_model(path)


def heldout_dice(model) -> float:
    """Mean Dice on the 8 synthetic test images (seed 1000), never seen in training."""
    from triptych.pdcr.data import load_dataset
    from triptych.pdcr.train import evaluate

    return float(np.mean(evaluate(model, load_dataset("synthetic", "test", seed=0))))


@register_demo("pdcr", "PdCR: causal explanation of a segmentation model")
def run_demo(out_dir: Path) -> DemoResult:
    """Explain a 16×16 RoI of the shipped U-Net on a new synthetic image; write report.html."""

    from triptych.pdcr.data import synthetic
    from triptych.pdcr.estimate import SequentialRule
    from triptych.pdcr.explain import ExplainInputs, explain_to_folder
    from triptych.pdcr.roi import RoI

    out_dir = Path(out_dir)
    model = shipped_model()
    dice = heldout_dice(model)
    sample = synthetic(1, 96, seed=IMAGE_SEED)[0]
    ys, xs = np.nonzero(sample.mask)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    y0, x0 = min(max(cy - 8, 0), 96 - 16), min(max(cx - 8, 0), 96 - 16)
    roi = RoI.box(x0, y0, 16, 16, (96, 96))
    block = 8
    # a looser stopping rule than the default keeps the demo short (CI half-width 0.3 points, ≤ 16 draws)
    summary = explain_to_folder(
        model,
        ExplainInputs(sample.image, sample.mask, roi),
        out_dir,
        data="synthetic",
        outcome="dice_gt",
        block=block,
        estimator="adaptive",
        components="stages",
        title="PdCR demo: synthetic image",
        rule=SequentialRule(tol=0.3, max_draws=16),
    )
    # counts by significance: Benjamini-Hochberg across the blocks, as in the summary
    sup, hurt = summary["significant_negative"], summary["significant_positive"]
    counts = {
        "significant: supports the RoI": sup,
        "significant: hurts the RoI": hurt,
        "no significant effect": summary["not_significant"],
        "called zero": summary["called_zero"],
    }
    total = sum(counts.values())

    section = Section("PdCR: causal explanation of a segmentation model")
    section.text(
        f"The shipped MONAI U-Net (trained by benchmarks/train_demo_weights.py on MONAI's synthetic blobs) "
        f"has Dice {dice:.3f} on 8 held-out synthetic images, measured just now. For a 16×16 RoI on a new "
        f"image (Dice inside the RoI {summary['base_outcome']:.1f} points), the adaptive estimator replaced "
        f"each {block}×{block} block outside the RoI by patches of other training images "
        f"({summary['forward_passes']} forward passes) and asked whether the RoI's Dice moved, with a 95% "
        f"confidence interval per block; significance is Benjamini–Hochberg across blocks, α = 0.05."
    )
    section.text(
        f"Of {total} blocks, {sup} significantly support the RoI's segmentation (replacing them lowers its "
        f"Dice), {hurt} significantly hurt it (replacing them raises its Dice), "
        f"{counts['no significant effect']} have no significant effect and {counts['called zero']} were "
        f"called zero (effect bounded within the tolerance)."
    )
    section.table(
        [{"verdict": k, "blocks": v} for k, v in counts.items()],
        caption=f"{block}×{block} blocks outside the RoI, by significance (BH, α = 0.05)",
    )
    section.figure(
        out_dir / "overlay.png",
        "ATE map with the RoI outlined (red: replacing the block lowered the "
        "RoI Dice, so the block supports it; blue: it hurts it)",
    )
    section.figure(out_dir / "components.png", "Network components ranked by causal effect")
    section.link("report.html", "Full PdCR report (arrays and JSON beside it)")
    headline = (
        f"U-Net, held-out Dice {dice:.2f}; of {total} blocks around a RoI, {sup} significantly support it, "
        f"{hurt} significantly hurt it, {counts['no significant effect']} have no significant effect"
    )
    return DemoResult(section, headline)

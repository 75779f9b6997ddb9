"""PdCR: causal (ATE) explanations of segmentation models, for input regions and network components.

API overview (each name lives in the module given; import from there or from here)::

    from triptych.pdcr import build_model, load_model, RoI, make_outcome, PatchBank

    model = load_model("runs/drive/checkpoints/best.safetensors")  # models.SegmentationModel
    model.probabilities(x)          # (B, C, *S) probabilities; output activation is explicit
    roi = RoI.box(x=96, y=96, w=32, h=32, shape=(256, 256))      # roi.RoI (box, mask, pixel)
    outcome = make_outcome("dice_gt", model, image, roi, ground_truth)  # roi: dice_gt/dice_self/soft_mass
    bank = PatchBank.from_images(images, 8, exclude=0)              # interventions: patch bank,
    bank.save("bank.safetensors")                                   #   Zero, DatasetMean, Blur
    exp = explain_regions(model, image, roi, outcome="dice_gt", ground_truth=gt,
                          intervention=bank, block=8, estimator="adaptive")   # regions.Explanation
    exp.ate, exp.se, exp.blocks, exp.base, exp.forward_passes, exp.seconds
    table = explain_components(model, image, roi, components="stages",      # components.ComponentExplanation
                               intervention="swap", dataset=images)         #   .rows: ranked, with 95% CIs
    PdCR(Target.build(model, image, roi), bank).attribute(x)   # explainer: (B, 1, *S) = −ATE, as the baselines
    explain_rois(model, image, [roi1, roi2], intervention=bank)  # multiroi: many RoIs per forward pass
    wrap_model(net, ..., activation="none", threshold=0.5)      # a network predicting raw output > 0.5
    with eval_mode(model): ...                                    # the caller's modes come back afterwards

Modules: ``roi`` (RoI, outcomes, Dice), ``models`` (SegmentationModel, MONAI nets by
name, checkpoints), ``interventions`` (do(·) on blocks and activations), ``estimate``
(reference and adaptive ATE estimators), ``regions`` (input-region ATE maps),
``components`` (network-component ATE via forward hooks), ``data`` (DRIVE, split
folders, NIfTI/DICOM, synthetic), ``explainer`` (the PdCR class), ``multiroi`` (many RoIs
per pass), ``registry`` (outcomes, interventions, estimators), ``train`` (Lightning training), ``explain`` (the CLI pipeline and its
outputs), ``plots``, ``toy`` (constructed models with known effects), ``cli``, ``demo``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> its module; loaded on first use (PEP 562), so that importing
# ``triptych.pdcr.cli`` (and so ``triptych --help``) does not import torch and MONAI
_EXPORTS = {
    **dict.fromkeys(
        ["Component", "ComponentExplanation", "explain_components", "list_components"], "components"
    ),
    **dict.fromkeys(["SequentialRule", "reference_estimate", "sequential_estimate"], "estimate"),
    **dict.fromkeys(
        [
            "ActivationIntervention",
            "Blur",
            "DatasetMean",
            "PatchBank",
            "Zero",
            "apply_block",
            "make_intervention",
        ],
        "interventions",
    ),
    **dict.fromkeys(
        [
            "ModelSpec",
            "SegmentationModel",
            "build_model",
            "eval_mode",
            "load_model",
            "save_model",
            "with_output",
            "wrap_model",
        ],
        "models",
    ),
    "PdCR": "explainer",
    "load_torch_model": "external",
    "explain_rois": "multiroi",
    **dict.fromkeys(["Explanation", "explain_regions"], "regions"),
    **dict.fromkeys(["RoI", "RoIDice", "SoftMass", "dice", "make_outcome"], "roi"),
}

if TYPE_CHECKING:  # static tools see the real imports
    from triptych.pdcr.components import Component, ComponentExplanation, explain_components, list_components
    from triptych.pdcr.estimate import SequentialRule, reference_estimate, sequential_estimate
    from triptych.pdcr.explainer import PdCR
    from triptych.pdcr.external import load_torch_model
    from triptych.pdcr.interventions import (
        ActivationIntervention,
        Blur,
        DatasetMean,
        PatchBank,
        Zero,
        apply_block,
        make_intervention,
    )
    from triptych.pdcr.models import (
        ModelSpec,
        SegmentationModel,
        build_model,
        eval_mode,
        load_model,
        save_model,
        with_output,
        wrap_model,
    )
    from triptych.pdcr.multiroi import explain_rois
    from triptych.pdcr.regions import Explanation, explain_regions
    from triptych.pdcr.roi import RoI, RoIDice, SoftMass, dice, make_outcome

__all__ = [
    "ActivationIntervention",
    "Component",
    "ComponentExplanation",
    "Explanation",
    "SequentialRule",
    "explain_components",
    "explain_regions",
    "explain_rois",
    "eval_mode",
    "with_output",
    "PdCR",
    "list_components",
    "reference_estimate",
    "save_model",
    "sequential_estimate",
    "Blur",
    "DatasetMean",
    "ModelSpec",
    "PatchBank",
    "RoI",
    "RoIDice",
    "SegmentationModel",
    "SoftMass",
    "Zero",
    "apply_block",
    "load_torch_model",
    "build_model",
    "dice",
    "load_model",
    "make_intervention",
    "make_outcome",
    "wrap_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'triptych.pdcr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"triptych.pdcr.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

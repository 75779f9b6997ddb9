"""PdCR as one explainer among the baselines: ``PdCR(target).attribute(inputs)`` and ``.explain(image)``.

The interface is the baselines' (:mod:`triptych.pdcr.baselines`, Captum-style): a
:class:`~triptych.pdcr.baselines.Target` fixes the model, the RoI and the outcome, and
``attribute`` maps a batch (B, C, *S) to (B, 1, *S) with *higher = more support for the
RoI*, i.e. −ATE (a negative ATE means the block supported the segmentation). ``explain``
returns the full :class:`~triptych.pdcr.regions.Explanation` (ATE, SE, q-values, blocks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from triptych.pdcr.baselines import Target
from triptych.pdcr.estimate import SequentialRule
from triptych.pdcr.interventions import RegionIntervention
from triptych.pdcr.regions import Explanation, explain_regions


class PdCR:
    """Input-region ATE explainer with the baselines' interface.

    ``intervention``: a region intervention (patch bank, zero, mean, blur) or its name
    with ``dataset``; ``estimator``: a name in :data:`triptych.pdcr.registry.ESTIMATORS`.
    """

    def __init__(
        self,
        target: Target,
        intervention: RegionIntervention | str = "patch_bank",
        *,
        block: int = 8,
        coarse_block: int | None = None,
        estimator: str = "adaptive",
        rule: SequentialRule | None = None,
        seed: int = 0,
        batch_size: int = 64,
        dataset: list[Tensor] | None = None,
        show_progress: bool = False,
    ) -> None:
        self.target, self.intervention = target, intervention
        self.options: dict[str, Any] = {
            "block": block,
            "coarse_block": coarse_block,
            "estimator": estimator,
            "rule": rule,
            "seed": seed,
            "batch_size": batch_size,
            "dataset": dataset,
            "show_progress": show_progress,
        }
        self.explanations: list[Explanation] = []  # one per explained image, latest last

    def explain(self, image: Tensor) -> Explanation:
        """The ATE explanation of the target's RoI on one image (C, *S)."""
        exp = explain_regions(
            self.target.model,
            image,
            self.target.roi,
            outcome=self.target.outcome_fn,
            intervention=self.intervention,
            **self.options,
        )
        self.explanations.append(exp)
        return exp

    def attribute(self, inputs: Tensor) -> Tensor:
        """(B, C, *S) -> (B, 1, *S): −ATE per pixel (higher = the pixels support the RoI more)."""
        maps = [-self.explain(x).ate for x in inputs]
        return torch.from_numpy(np.stack(maps)[:, None]).float()

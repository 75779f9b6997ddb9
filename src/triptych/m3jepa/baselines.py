"""Baselines run under exactly the predictor's protocol (same features, data, trainer, selection).

- ``clip``: CLIP-style linear heads on the encoders' pooled features, symmetric InfoNCE,
  learnable temperature;
- ``mlp``: the same predictor with one MLP in place of the mixture of experts;
- ``summed``: the MoE predictor trained on the summed task losses instead of AGD, for as many
  optimiser steps as AGD (each epoch visits every item once per task).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from triptych.m3jepa.features import EncodedBatch


class ClipHeads(nn.Module):
    """One linear projection per modality on pooled features: B×D_m → B×P."""

    def __init__(self, dims: dict[str, int], dim: int = 256) -> None:
        super().__init__()
        self.dims, self.dim = dict(dims), dim
        self.heads = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})

    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> Tensor:
        return self.heads[src](batch.pooled)

    def embed_key(self, tgt: str, batch: EncodedBatch) -> Tensor:
        return self.heads[tgt](batch.pooled)


def method_configs(
    predictor: dict[str, Any], clip_dim: int = 256, clip_temperature: float = 0.07
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{method: (model_config, train-config overrides)}`` for M3-JEPA and its three baselines.

    ``predictor`` is the full predictor's config (``PredictorConfig`` fields); the
    ablations change exactly one thing each.
    """
    full = {"type": "predictor", **predictor, "mixer": "moe"}
    return {
        "m3jepa": (full, {"schedule": "cyclic"}),
        # at equal optimiser steps: AGD takes one step per task per batch, so summed sees T× the batches
        "moe_summed": (full, {"schedule": "summed", "match_agd_steps": True}),
        "mlp": ({**full, "mixer": "mlp"}, {"schedule": "cyclic"}),
        "clip_linear": (
            {"type": "clip", "dims": dict(predictor["dims"]), "dim": clip_dim},
            {
                "schedule": "summed",
                "learnable_temperature": True,
                "temperature": clip_temperature,
                "alpha": 1.0,
            },
        ),
    }

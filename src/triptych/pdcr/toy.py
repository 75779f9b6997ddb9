"""Constructed models whose causal effects are known analytically (for tests and sanity checks).

:class:`LinearRoIModel` outputs the same probability at every pixel,
p(x) = c + Σ_k w_k · mean(x[k]), so under the soft-mass outcome replacing block k by a
patch p has effect 100 · w_k · (mean(p) − mean(x[k])), and the ATE over a bank of
patches is 100 · w_k · (E[mean(p)] − mean(x[k])) (:func:`linear_block_ate`).

:class:`ChannelDrivenNet` is a two-layer network whose ``features`` layer has one
channel that carries almost all of the weight on the output, so it must rank first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from triptych.pdcr.models import SegmentationModel, wrap_model


class LinearRoIModel(nn.Module):
    """(B, C, *S) -> (B, 1, *S): p = c + Σ_ij W_ij · mean_c x_ij at every pixel; W is per-pixel."""

    def __init__(self, weights: torch.Tensor, bias: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("weights", weights.float())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.bias + (x.mean(1) * self.weights).flatten(1).sum(1)
        return score.view(-1, 1, *([1] * (x.ndim - 2))).expand(-1, 1, *x.shape[2:]).contiguous()


def linear_model(
    block_weights: dict[tuple[tuple[int, int], ...], float],
    shape: Sequence[int],
    in_channels: int = 1,
    bias: float = 0.3,
) -> SegmentationModel:
    """A :class:`LinearRoIModel` with total weight w_k spread evenly over each block k."""
    w = torch.zeros(tuple(shape))
    for block, wk in block_weights.items():
        sl = tuple(slice(a, b) for a, b in block)
        w[sl] = wk / float(np.prod([b - a for a, b in block]))
    return wrap_model(
        LinearRoIModel(w, bias),
        spatial_dims=len(shape),
        in_channels=in_channels,
        out_channels=1,
        emits="probabilities",
        activation="sigmoid",
    )


def linear_block_ate(
    model: SegmentationModel, image: torch.Tensor, block: tuple[tuple[int, int], ...], patch_mean: float
) -> float:
    """Analytic ATE_k = 100 · Σ_{i∈k} W_i · (E[mean(p)] − mean_c x_i) for the soft-mass outcome."""
    sl = tuple(slice(a, b) for a, b in block)
    w = model.net.weights[sl]
    return float(100.0 * (w * (patch_mean - image.mean(0)[sl])).sum())


class ChannelDrivenNet(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) logits; ``features`` has ``channels`` channels, ``driver`` dominates."""

    def __init__(self, channels: int = 6, driver: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.features = nn.Conv2d(1, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            self.features.weight.copy_(0.1 + 0.02 * torch.randn(self.features.weight.shape, generator=gen))
            self.features.bias.fill_(0.1)
            head = 0.05 * torch.randn(channels, generator=gen)
            head[driver] = 4.0
            self.head.weight.copy_(head.view(1, channels, 1, 1))
            self.head.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)))


def channel_driven_model(channels: int = 6, driver: int = 2) -> SegmentationModel:
    return wrap_model(
        ChannelDrivenNet(channels, driver),
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        emits="logits",
        activation="sigmoid",
    )

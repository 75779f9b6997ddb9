"""M3-JEPA losses: symmetric InfoNCE, latent regression, their α mix, and gate load balancing.

L = α · L_contrastive + (1 − α) · L_regression  (+ λ · L_balance)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triptych.core.errors import InputError


class Temperature(nn.Module):
    """τ of InfoNCE: fixed (the paper's 0.03) or learnable, stored as log τ and clamped."""

    def __init__(self, init: float = 0.03, learnable: bool = False, minimum: float = 0.01) -> None:
        super().__init__()
        log_tau = torch.tensor(math.log(init))
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.minimum = minimum

    def forward(self) -> Tensor:
        return self.log_tau.exp().clamp_min(self.minimum)


def positives_from_ids(query_ids: Tensor, key_ids: Tensor) -> Tensor:
    """B×B boolean: pair i's query and pair j's key belong together (same source or same target item).

    With several captions per image, or many images per label, a batch can hold the same
    item twice; those pairs are positives, not negatives.
    """
    return query_ids.unsqueeze(1).eq(query_ids.unsqueeze(0)) | key_ids.unsqueeze(1).eq(key_ids.unsqueeze(0))


def info_nce(a: Tensor, b: Tensor, tau: Tensor | float, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: ½[CE(â b̂ᵀ/τ) + CE(b̂ âᵀ/τ)] on L2-normalised rows of a, b (B×P).

    ``positives`` (B×B bool, diagonal true) spreads the target over every positive; the
    default is the identity.
    """
    return symmetric_cross_entropy(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau, positives)


def symmetric_cross_entropy(logits: Tensor, positives: Tensor | None = None) -> Tensor:
    """½[CE(logits) + CE(logitsᵀ)] of a B×B score matrix, the target spread over ``positives`` (default: the diagonal)."""
    if positives is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = positives.to(logits.dtype)
    return 0.5 * (
        F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
        + F.cross_entropy(logits.T, pos.T / pos.T.sum(1, keepdim=True))
    )


def fused_info_nce(
    query: Tensor,
    key: Tensor,
    reverse_query: Tensor,
    reverse_key: Tensor,
    tau: Tensor | float,
    positives: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE on the fused score the ranking uses: s(a, b) = q̂_{a→b}·k̂_b + q̂_{b→a}·k̂_a, over τ.

    ``query``/``key``: this direction's query vectors of the B sources and key vectors of the B
    targets; ``reverse_query``: the reverse direction's query vectors of the targets,
    ``reverse_key``: its key vectors of the sources (all B×P, rows paired).
    :func:`triptych.m3jepa.retrieval.evaluate_tasks` ranks by the same sum of cosines.
    """
    q, k, rq, rk = (F.normalize(x, dim=-1) for x in (query, key, reverse_query, reverse_key))
    fused = q @ k.T + rk @ rq.T
    return symmetric_cross_entropy(fused / tau, positives)


def latent_regression(
    pred: Tensor, target: Tensor, kind: Literal["smooth_l1", "mse"] = "smooth_l1"
) -> Tensor:
    """L_regression between the predicted and the real pooled target embedding (B×D)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise InputError(f"regression loss {kind!r}: use 'smooth_l1' or 'mse'")


def load_balancing(probs: Tensor, index: Tensor, experts: int) -> Tensor:
    """Switch-Transformer balance E · Σ_e f_e P_e (f_e: share of top-k assignments, P_e: mean gate prob); 1 when uniform."""
    f = torch.bincount(index.reshape(-1), minlength=experts).to(probs.dtype) / index.numel()
    return experts * (f * probs.mean(0)).sum()


def alpha_mix(contrastive: Tensor, regression: Tensor, alpha: float = 0.5) -> Tensor:
    """L = α · L_contrastive + (1 − α) · L_regression."""
    return alpha * contrastive + (1.0 - alpha) * regression


def gather_across_ranks(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor concatenated over all DDP ranks (rank order), gradients kept for this rank's part.

    As in open_clip: ``all_gather`` returns copies without gradients, so this rank's slot is
    replaced by its own tensor, and the loss on the gathered batch still trains the local
    embeddings against every rank's negatives. Without an initialised process group (one
    process) the tensors come back unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for t in tensors:
        parts = [torch.zeros_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        parts[rank] = t
        out.append(torch.cat(parts))
    return tuple(out)


class M3JepaLoss(nn.Module):
    """L = α · InfoNCE(q, k; τ) + (1 − α) · regression(ŷ, y): owns τ (fixed or learnable), α and the regression kind.

    ``gather`` computes InfoNCE over every DDP rank's batch (:func:`gather_across_ranks`),
    so each rank's queries see all ranks' keys as negatives; positives follow the item ids.
    Without predictions (CLIP-style heads) the loss is InfoNCE alone.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        regression: Literal["smooth_l1", "mse"] = "smooth_l1",
        gather: bool = False,
        fused_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if regression not in ("smooth_l1", "mse"):
            raise InputError(f"regression loss {regression!r}: use 'smooth_l1' or 'mse'")
        if not 0.0 <= fused_weight <= 1.0:
            raise InputError(f"fused_contrastive {fused_weight}: use a share in [0, 1]")
        self.alpha, self.regression, self.gather = float(alpha), regression, gather
        self.fused_weight = float(fused_weight)
        self.temperature = Temperature(temperature, learnable_temperature)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        query_ids: Tensor,
        key_ids: Tensor,
        predicted: Tensor | None = None,
        target: Tensor | None = None,
        reverse: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss, its parts) for B pairs: contrastive query/key vectors, their item ids, optional regression pair.

        ``reverse`` (the reverse direction's query vectors of the targets and key vectors of the
        sources) with ``fused_weight`` w > 0 makes the contrastive term
        (1 − w) · InfoNCE(q, k) + w · InfoNCE on the fused score (:func:`fused_info_nce`).
        """
        extra = list(reverse) if reverse is not None and self.fused_weight > 0 else []
        if self.gather:
            query, key, query_ids, key_ids, *extra = gather_across_ranks(
                query, key, query_ids, key_ids, *extra
            )
        tau, positives = self.temperature(), positives_from_ids(query_ids, key_ids)
        contrastive = info_nce(query, key, tau, positives)
        logs = {"contrastive": contrastive.item()}
        if extra:
            fused = fused_info_nce(query, key, *extra, tau, positives)
            contrastive = (1.0 - self.fused_weight) * contrastive + self.fused_weight * fused
            logs["fused"] = fused.item()
        if predicted is None or target is None:
            return contrastive, logs
        regression = latent_regression(predicted, target, self.regression)
        loss = alpha_mix(contrastive, regression, self.alpha)
        return loss, {**logs, "regression": regression.item()}

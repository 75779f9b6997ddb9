"""Our PLE variant for small assays: CGC experts that read Morgan fingerprints.

On the paper's split (≈2,000 training molecules) a Morgan-fingerprint random forest
beats the Attentive FP PLE on 3CL inhibition (0.92 against 0.82 ROC-AUC): substructure
counts carry the target signal, and 3.25 M graph parameters do not learn it from so few
molecules. This model keeps the paper's multi-task structure -- one level of CGC with a
shared expert and one private expert per task, a softmax gate per task and a
150 -> 32 -> 1 tower -- but every expert is an MLP over log Morgan counts
(radius 2, 2048 folds):

    E_k(m) = ReLU(W_k2 Dropout(ReLU(W_k1 log(1 + c(m)))))          (fingerprint expert)
    e_t = sum_k g_{t,k}(m) E_k(m),  g_t = softmax(G_t [E_k(m)]_k)   (CGC mix, light gate)
    logit_t = Tower_t(e_t)

Trained with the same masked focal loss as the graph models (Adam, early stopping on
validation loss, the best epoch kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from triptych.matic.model import cgc_mix, make_towers


class FingerprintExpert(nn.Module):
    """Two-layer MLP from a fingerprint vector to a ``hidden``-d molecule embedding."""

    def __init__(
        self, in_dim: int, hidden: int = 150, dropout: float = 0.1, width: int = 512, in_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(
                in_dropout
            ),  # drops fingerprint bits: a regulariser against memorising rare substructures
            nn.Linear(in_dim, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, hidden),
            nn.ReLU(),
        )

    def forward(self, fp: Tensor) -> Tensor:
        """``fp [B, in_dim]`` -> ``[B, hidden]``."""
        return self.net(fp)


class FingerprintPLE(nn.Module):
    """One CGC level over fingerprint experts (``n_shared`` shared, ``n_private`` per task)."""

    def __init__(
        self,
        n_tasks: int,
        in_dim: int = 2048,
        n_shared: int = 1,
        n_private: int = 1,
        hidden: int = 150,
        dropout: float = 0.1,
        tower_hidden: int = 32,
        width: int = 512,
        in_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_experts = n_shared + n_private * n_tasks
        self.experts = nn.ModuleList(
            FingerprintExpert(in_dim, hidden, dropout, width, in_dropout) for _ in range(n_experts)
        )
        shared = list(range(n_shared))
        self.gate_experts = [
            [n_shared + t * n_private + k for k in range(n_private)] + shared for t in range(n_tasks)
        ]
        self.gates = nn.ModuleList(nn.Linear(len(m) * hidden, len(m)) for m in self.gate_experts)
        self.towers = make_towers(n_tasks, hidden, tower_hidden, dropout)

    def forward(self, fp: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``fp [B, in_dim]`` -> task logits ``[B, T]`` and per-task gate weights."""
        emb = torch.stack([e(fp) for e in self.experts], dim=1)  # [B, K, H]
        gates, task_emb = cgc_mix(emb, self.gate_experts, lambda t, e_t: self.gates[t](e_t.flatten(1)))
        logits = torch.cat([tower(task_emb[:, t]) for t, tower in enumerate(self.towers)], dim=1)
        return logits, gates


@dataclass
class FitConfig:
    """Optimisation of :class:`FingerprintPLE` (the graph models' loss; early stopping on validation loss)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 10
    dropout: float = 0.5  # 0.1 with no bit dropout overfit by epoch 2 on the paper split's validation set
    in_dropout: float = 0.2
    width: int = 256
    seed: int = 0


def fit_fingerprint_ple(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, cfg: FitConfig
) -> tuple[FingerprintPLE, dict]:
    """Train on ``(x_train, y_train)`` (labels NaN = missing), early-stop on validation loss; best weights.

    Returns the model (eval mode) and ``{"epochs_run", "best_epoch", "best_val_loss"}``.
    """
    from triptych.core.seed import seed_everything
    from triptych.matic.train import masked_focal_loss

    seed_everything(cfg.seed)
    n_tasks = y_train.shape[1]
    model = FingerprintPLE(
        n_tasks, x_train.shape[1], dropout=cfg.dropout, width=cfg.width, in_dropout=cfg.in_dropout
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = torch.full((n_tasks,), 1.0 / n_tasks)
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, epoch = float("inf"), None, -1, 0
    for epoch in range(cfg.max_epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            masked_focal_loss(model(xt[idx])[0], yt[idx], weights).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(masked_focal_loss(model(xv)[0], yv, weights))
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs_run": epoch + 1, "best_epoch": best_epoch + 1, "best_val_loss": best}


@torch.no_grad()
def fingerprint_logits(model: FingerprintPLE, x: np.ndarray) -> np.ndarray:
    """``(n, T)`` task logits of a fitted model."""
    model.eval()
    return model(torch.as_tensor(x, dtype=torch.float32))[0].numpy().astype(np.float64)

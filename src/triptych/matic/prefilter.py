"""A fingerprint cascade for very large libraries: a cheap model ranks every molecule, the PLE the best few.

    phi(m) = log(1 + c(m)),  c = Morgan counts (radius 2, 2048 bins)
    s(m)   = MLP(phi(m))  ~  log dual(m) = sum_t log p_t(m)                  (distilled from the PLE)
    screen: rank the library by s; the PLE scores the top ``fraction``; the others keep s only.

The prefilter imitates the PLE it stands in for, not the assay labels (a model fitted to
the labels ranks differently, and what the cascade must keep is the PLE's own top
hits). It is fitted right after the PLE, on molecules the PLE has scored: the training
molecules plus a drug-like corpus (default: the second half of the embedded MOSES subset;
the speed benchmark screens the first half, so its recall is measured on molecules the
prefilter never saw). The fit holds out a tenth of those molecules and stores its
Spearman correlation and top-1% recall with the checkpoint.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from triptych.core.checkpoint import save_checkpoint
from triptych.core.errors import InputError
from triptych.matic.cascade import (  # noqa: F401 (KIND and the features are part of this module's API)
    FILENAME,
    KIND,
    PrefilterConfig,
    PrefilterWeights,
    fingerprint_features,
    load_prefilter_weights,
)

LOG_FLOOR = 1e-6  # log p is clipped here: below it the ranking is irrelevant to a screen


class FingerprintMLP(nn.Module):
    """log1p(Morgan counts) -> hidden -> the PLE's log dual score (standardised)."""

    def __init__(self, config: PrefilterConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.n_bits, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def log_dual(probs: np.ndarray) -> np.ndarray:
    """The distillation target: ``sum_t log p_t`` (ranks as the dual score), floored at ``LOG_FLOOR``."""
    return np.log(np.clip(probs, LOG_FLOOR, 1.0)).sum(axis=1)


def top_recall(reference: np.ndarray, proxy: np.ndarray, top: float = 0.01, fraction: float = 0.05) -> float:
    """Share of the ``top`` best by ``reference`` that are among the ``fraction`` best by ``proxy``."""
    n = len(reference)
    k_top, k_keep = max(1, round(top * n)), max(1, round(fraction * n))
    best = set(np.argsort(-reference, kind="stable")[:k_top].tolist())
    kept = set(np.argsort(-proxy, kind="stable")[:k_keep].tolist())
    return len(best & kept) / len(best)


def default_corpus(n: int = 25_000) -> list[str]:
    """The last ``n`` SMILES of the embedded MOSES subset (50,000; benchmarks screen the first ones)."""
    src = resources.files("triptych.matic.generate") / "data" / "moses_train_50k.csv.gz"
    with gzip.open(src.open("rb"), "rt") as handle:
        lines = [line.strip() for line in handle][1:]
    return [s for s in lines[-n:] if s]


@dataclass
class Prefilter:
    """A fitted prefilter: ``scores(smiles)`` is its estimate of the PLE's log dual score (NaN if invalid)."""

    model: FingerprintMLP
    mean: float
    std: float
    path: Path | None = None

    def weights(self) -> PrefilterWeights:
        """The fitted MLP as numpy arrays: what a screen scores with (:mod:`cascade`)."""
        state = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        return PrefilterWeights.from_state(state, self.model.config, self.mean, self.std)

    def scores(self, smiles: Sequence[str]) -> np.ndarray:
        """The estimate of the PLE's log dual score of each SMILES (NaN where it does not parse)."""
        return self.weights().scores(smiles)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        return save_checkpoint(
            path,
            {"state_dict": self.model.state_dict(), "mean": self.mean, "std": self.std},
            kind=KIND,
            config=asdict(self.model.config),
            extra=extra or {},
        )


def load_prefilter(path: str | Path) -> Prefilter:
    """Read a ``matic.prefilter`` checkpoint, or a one-line :class:`InputError`."""
    path = Path(path)
    w = load_prefilter_weights(path)
    model = FingerprintMLP(w.config)
    state = {"net.0.weight": w.w1, "net.0.bias": w.b1, "net.2.weight": w.w2, "net.2.bias": w.b2}
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    except RuntimeError as exc:  # shapes that do not match the config
        raise InputError(f"prefilter {path}: not a usable matic.prefilter checkpoint ({exc})") from None
    return Prefilter(model.eval(), w.mean, w.std, path)


def fit_prefilter(
    predictor,
    smiles: Sequence[str],
    *,
    config: PrefilterConfig | None = None,
    epochs: int = 30,
    seed: int = 0,
    workers: int | None = None,
    log=print,
) -> tuple[Prefilter, dict]:
    """Distil ``predictor`` (a MATIC :class:`~triptych.matic.predictor.Predictor`) into a fingerprint MLP.

    Returns the prefilter and its held-out agreement: Spearman correlation with the PLE's
    log dual score and the recall of the PLE's top 1% within the prefilter's top 5%/10%.
    """
    from scipy.stats import spearmanr

    from triptych.matic.screen import screen_smiles

    config = config or PrefilterConfig()
    smiles = list(dict.fromkeys(s for s in smiles if s))
    log(f"prefilter: scoring {len(smiles)} molecules with the PLE")
    probs = screen_smiles(predictor, smiles, workers=workers)
    probs = probs[[f"p_{t}" for t in predictor.tasks]].to_numpy(dtype=np.float64)
    phi, valid = fingerprint_features(smiles, config)
    ok = valid & ~np.isnan(probs).any(axis=1)
    if ok.sum() < 100:
        raise InputError(f"prefilter: only {int(ok.sum())} valid molecules to fit on; give a larger corpus")
    x, y = phi[ok], log_dual(probs[ok])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = max(50, len(y) // 10)
    test, train = order[:n_test], order[n_test:]
    mean, std = float(y[train].mean()), float(y[train].std() + 1e-8)
    torch.manual_seed(seed)
    model = FingerprintMLP(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(((y[train] - mean) / std).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    log(f"prefilter: fitting a fingerprint MLP on {len(train)} molecules ({epochs} epochs)")
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(256):
            loss = nn.functional.mse_loss(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    prefilter = Prefilter(model, mean, std)
    with torch.inference_mode():
        pred = model(torch.from_numpy(x[test])).numpy()
    held = {
        "n_fit": int(len(train)),
        "n_held_out": int(len(test)),
        "spearman_held_out": float(spearmanr(pred, y[test]).statistic),
        "top1pct_recall_at_5pct": top_recall(y[test], pred, 0.01, 0.05),
        "top1pct_recall_at_10pct": top_recall(y[test], pred, 0.01, 0.10),
    }
    log(
        f"prefilter: held-out Spearman {held['spearman_held_out']:.3f}, PLE top-1% recall "
        f"{held['top1pct_recall_at_5pct']:.2f} at 5%, {held['top1pct_recall_at_10pct']:.2f} at 10%"
    )
    return prefilter, held

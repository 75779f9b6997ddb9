"""Figures: the diverging ATE overlay with the RoI outlined, the pie + histogram, the component ranking.

As the reference: white = 0, colour scaled by max|ATE|, overlay = 0.7 · map + 0.3 · image.
3D volumes are shown on the axial slice through the RoI's centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slice2d(image: np.ndarray, ate: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 3D inputs, the first-axis slice through the RoI centre; 2D passes through. image (C, *S)."""
    if ate.ndim == 2:
        return image, ate, roi
    k = int(np.round(np.nonzero(roi)[0].mean()))
    return image[:, k], ate[k], roi[k]


def _rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0,1] -> (H, W, 3)."""
    img = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    return np.clip(np.moveaxis(img, 0, -1), 0, 1)


def ate_overlay(image: torch.Tensor | np.ndarray, ate: np.ndarray, roi: np.ndarray, title: str = ""):
    """Image | diverging ATE map | 0.7·map + 0.3·image overlay, RoI outlined in each."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    image = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image, dtype=float)
    image, ate, roi = _slice2d(image, ate, roi)
    vmax = float(np.abs(ate).max()) or 1.0
    cmap = plt.get_cmap("RdBu_r")
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    coloured = cmap(norm(ate))[..., :3]
    overlay = 0.7 * coloured + 0.3 * _rgb(image)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, shown, name in zip(axes, (_rgb(image), coloured, overlay), ("image", "ATE (red +, blue −)", "overlay"),
                               strict=True):
        ax.imshow(shown)
        ax.contour(roi.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        ax.set_title(name)
        ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes, fraction=0.02, label="ATE on outcome (points)")
    if title:
        fig.suptitle(title)
    return fig


def pie_histogram(summary: dict[str, Any]):
    """Share of positive/negative/zero blocks (pie) and the paper's histogram of block ATEs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    counts = [summary["positive_blocks"], summary["negative_blocks"], summary["zero_blocks"]]
    labels = ["positive", "negative", "zero"]
    keep = [(c, lab, col) for c, lab, col in zip(counts, labels, ("#d6604d", "#4393c3", "#cccccc"), strict=True) if c]
    if keep:
        a.pie([k[0] for k in keep], labels=[f"{k[1]} ({k[0]})" for k in keep], colors=[k[2] for k in keep],
              autopct="%1.0f%%")
    a.set_title("blocks by sign of ATE")
    edges = summary["histogram_edges"]
    names = [f"[{edges[i]}, {edges[i + 1]})" for i in range(len(edges) - 1)]
    b.bar(range(len(names)), summary["histogram_counts"], color="#777777")
    b.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    b.set_ylabel("blocks")
    b.set_title("histogram of block ATEs")
    fig.tight_layout()
    return fig


def component_bars(rows: list[dict[str, Any]], top: int = 20):
    """Horizontal bars of component ATEs (raw mean) with 95% CIs, ranked."""
    plt = _plt()
    rows = rows[:top]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    means = np.array([r["mean"] for r in rows])
    err = np.array([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]])
    ax.barh(y, means, xerr=err, color=["#d6604d" if m > 0 else "#4393c3" for m in means], capsize=2)
    ax.set_yticks(y, [r["component"] for r in rows], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("ATE on outcome (points), 95% CI")
    ax.set_title("network components ranked by |ATE|")
    fig.tight_layout()
    return fig

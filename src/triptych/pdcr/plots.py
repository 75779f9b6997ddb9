"""Figures: the diverging ATE overlay with the RoI outlined, the pie + histogram, the component ranking.

As the reference: white = 0, colour scaled by max|ATE|, overlay = 0.7 · map + 0.3 · image,
and **red = negative ATE** (replacing the block lowered the outcome: the block supported
the RoI), **blue = positive** (replacing it raised the outcome: the block hurt it). Every
legend says so. 3D volumes are shown on the axial slice through the RoI's centre.
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


def _slice2d(
    image: np.ndarray, ate: np.ndarray, roi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    cmap = plt.get_cmap("RdBu")  # low (negative ATE, support) red, high (positive, hurt) blue
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    coloured = cmap(norm(ate))[..., :3]
    overlay = 0.7 * coloured + 0.3 * _rgb(image)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, shown, name in zip(
        axes,
        (_rgb(image), coloured, overlay),
        ("image", "ATE (red −: supports, blue +: hurts)", "overlay"),
        strict=True,
    ):
        ax.imshow(shown)
        ax.contour(roi.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        ax.set_title(name)
        ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(
        sm,
        ax=axes,
        fraction=0.02,
        label="ATE (points): red < 0, replacing the block lowered the outcome (it supported the RoI); "
        "blue > 0, it raised it",
    )
    if title:
        fig.suptitle(title)
    return fig


SUPPORT, HURT = "#d6604d", "#4393c3"  # red: negative ATE (supports the RoI); blue: positive (hurts it)


def pie_histogram(summary: dict[str, Any]):
    """Blocks by significance and sign (pie, BH-controlled) and the paper's histogram of block ATEs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    counts = [
        summary["significant_negative"],
        summary["significant_positive"],
        summary["not_significant"],
        summary["called_zero"],
    ]
    labels = ["supports (ATE < 0, q < α)", "hurts (ATE > 0, q < α)", "not significant", "zero"]
    colours = (SUPPORT, HURT, "#cccccc", "#f4f4f4")
    keep = [(c, lab, col) for c, lab, col in zip(counts, labels, colours, strict=True) if c]
    if keep:
        a.pie(
            [k[0] for k in keep],
            labels=[f"{k[1]} ({k[0]})" for k in keep],
            colors=[k[2] for k in keep],
            autopct="%1.0f%%",
            wedgeprops={"edgecolor": "#999999", "linewidth": 0.5},
        )
    a.set_title(f"blocks by significance (Benjamini–Hochberg, α = {summary.get('alpha', 0.05):g})")
    edges = summary["histogram_edges"]
    names = [f"[{edges[i]}, {edges[i + 1]})" for i in range(len(edges) - 1)]
    mids = [
        (float(edges[i]) + float(edges[i + 1])) / 2
        if np.isfinite([float(edges[i]), float(edges[i + 1])]).all()
        else (float("-inf") if i == 0 else float("inf"))
        for i in range(len(names))
    ]
    b.bar(
        range(len(names)),
        summary["histogram_counts"],
        color=[SUPPORT if m < 0 else HURT if m > 0 else "#cccccc" for m in mids],
    )
    b.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    b.set_ylabel("blocks")
    b.set_title("histogram of block ATEs (red: supports, blue: hurts)")
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
    ax.barh(y, means, xerr=err, color=[SUPPORT if m < 0 else HURT for m in means], capsize=2)
    ax.set_yticks(y, [r["component"] for r in rows], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("ATE on outcome (points), 95% CI; red < 0: the component supports the RoI, blue > 0: hurts")
    ax.set_title("network components ranked by |ATE|")
    fig.tight_layout()
    return fig

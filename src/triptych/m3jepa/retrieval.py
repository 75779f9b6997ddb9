"""Evaluation: Recall@K both ways, the supervised label probe, and the mean over seeds.

With several captions per image, an image query hits at K if ANY of its captions is in
its top K; a caption query hits if its image is. Classification is retrieval with each
label's text as the other modality: accuracy = Recall@1 of image→label. When the aligner
was trained on those label texts (a label cache's train split) that is a supervised probe
(with CLIP-style heads, a linear probe), reported as ``label_probe``; zero-shot
classification, with no training on the labels, is :mod:`triptych.m3jepa.zeroshot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triptych.core.results import mean_sd
from triptych.m3jepa.features import EncodedBatch, Features
from triptych.m3jepa.tasks import Task

KS = (1, 5, 10)


def relevance_matrix(pairs: np.ndarray, queries: int, keys: int) -> Tensor:
    """Q×K boolean: key k is a correct answer to query q (from P×2 (query, key) pairs)."""
    rel = torch.zeros(queries, keys, dtype=torch.bool)
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    rel[pairs[:, 0], pairs[:, 1]] = True
    return rel


def recall_at_k(scores: Tensor, relevant: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """R@K = % of queries whose best-ranked relevant key is among the top K (scores Q×K).

    The rank of the best relevant key counts the keys scored strictly higher (ties in
    the query's favour, which only matters for exactly equal scores).
    """
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one relevant key")
    best = scores.masked_fill(~relevant, float("-inf")).max(1, keepdim=True).values
    rank = (scores > best).sum(1)
    return {f"r{k}": 100.0 * float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def embed_rows(
    fn: Callable[[EncodedBatch], Tensor],
    features: Features,
    rows: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    normalise: bool = True,
) -> Tensor:
    """``fn`` over ``features`` rows in batches, L2-normalised (unless ``normalise`` is off), on the CPU (N×P)."""
    out = []
    for start in range(0, len(rows), batch_size):
        b = features.batch(rows[start : start + batch_size])
        b = EncodedBatch(b.tokens.to(device), b.mask.to(device), b.pooled.to(device))
        y = fn(b)
        out.append((F.normalize(y, dim=-1) if normalise else y).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def task_scores(model: nn.Module, task: Task, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(scores Q×K of ``task.src`` queries against ``task.tgt`` keys, relevance Q×K) over the task's pairs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    q_rows, q_pos = np.unique(task.pairs[:, 0], return_inverse=True)
    k_rows, k_pos = np.unique(task.pairs[:, 1], return_inverse=True)
    q = embed_rows(
        lambda b: model.embed_query(task.src, task.tgt, b), task.src_features, q_rows, device, batch_size
    )
    k = embed_rows(lambda b: model.embed_key(task.tgt, b), task.tgt_features, k_rows, device, batch_size)
    model.train(was_training)
    return q @ k.T, relevance_matrix(np.stack([q_pos, k_pos], 1), len(q_rows), len(k_rows))


def evaluate_task(model: nn.Module, task: Task, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K of a trained aligner on one task (e.g. image→text over the test split)."""
    scores, relevant = task_scores(model, task)
    return recall_at_k(scores, relevant, ks)


def evaluate_tasks(
    model: nn.Module, tasks: Sequence[Task], fuse: bool = False
) -> dict[str, dict[str, float]]:
    """Recall@K of every task; with ``fuse``, a task whose reverse is also given ranks by both directions.

    Fusion scores a pair (a, b) by s = q_{a→b}·k_b + q_{b→a}·k_a, the two predictors' sum. For
    CLIP-style heads both terms are the same similarity, so fusion leaves their ranking unchanged.
    """
    scored = {(t.src, t.tgt): (t, *task_scores(model, t)) for t in tasks}
    out = {}
    for t in tasks:
        _, scores, relevant = scored[(t.src, t.tgt)]
        reverse = scored.get((t.tgt, t.src))
        if fuse and reverse is not None and _same_items(t, reverse[0]):
            scores = scores + reverse[1].T
        out[t.name] = recall_at_k(scores, relevant)
    return out


def direction_metrics(model: nn.Module, tasks: Sequence[Task], fuse: bool) -> dict[str, dict[str, float]]:
    """{"i2t": R@K, "t2i": R@K} of a split's two tasks (media→text, text→media): the benchmark's row.

    ``triptych m3jepa evaluate`` and the benchmark both call this, with the checkpoint's own
    ``fuse_directions``, so evaluating a benchmark checkpoint reproduces its row.
    """
    by_name = evaluate_tasks(model, tasks, fuse)
    media = next(t.src for t in tasks if t.tgt == "text")
    by_dir = {(t.src, t.tgt): by_name[t.name] for t in tasks}
    return {"i2t": by_dir[(media, "text")], "t2i": by_dir[("text", media)]}


def _same_items(task: Task, reverse: Task) -> bool:
    return np.array_equal(np.unique(task.pairs[:, 0]), np.unique(reverse.pairs[:, 1])) and np.array_equal(
        np.unique(task.pairs[:, 1]), np.unique(reverse.pairs[:, 0])
    )


def zero_shot_accuracy(
    image_vectors: Tensor, label_vectors: Tensor, labels: Sequence[int] | Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-K accuracy (%) of classifying images by their nearest label text (N×P, C×P, N labels)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if (
        labels.shape != (image_vectors.shape[0],)
        or labels.numel()
        and not 0 <= int(labels.min()) <= int(labels.max()) < label_vectors.shape[0]
    ):
        raise ValueError(
            f"need one label in 0..{label_vectors.shape[0] - 1} per image ({image_vectors.shape[0]}), "
            f"got labels of shape {tuple(labels.shape)}"
        )
    relevant = F.one_hot(labels, label_vectors.shape[0]).bool()
    scores = F.normalize(image_vectors, dim=-1) @ F.normalize(label_vectors, dim=-1).T
    out = recall_at_k(scores, relevant, [k for k in ks if k <= label_vectors.shape[0]])
    return {k.replace("r", "top"): v for k, v in out.items()}


def over_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Nested per-seed metric dicts → the same nesting with lists over seeds (the results.json form)."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: over_seeds([d[k] for d in per_seed]) for k in first}
    return [float(v) for v in per_seed]


def mean_over_seeds(per_seed: Sequence[dict[str, Any]], fmt: str = "{:.1f}") -> dict[str, Any]:
    """``mean ± sd`` strings over seeds, with the nesting of each per-seed dict."""
    lists = over_seeds(per_seed)

    def walk(node: Any) -> Any:
        return {k: walk(v) for k, v in node.items()} if isinstance(node, dict) else mean_sd(node, fmt)

    return walk(lists)


def label_probe_task(model: nn.Module, cache: Any, split: str) -> dict[str, float]:
    """The label probe: a split's images of an image-label cache classified with the label texts as keys.

    Supervised, not zero-shot: the aligner was trained on these label texts (on the cache's
    train split); with the CLIP-style heads (``--method clip_linear``) it is a linear probe
    on the frozen features. Zero-shot classification is :mod:`triptych.m3jepa.zeroshot`.

    Each label's text is one of the cached captions (image-label folders caption every
    image with its label's text), so a label's key is read from the text-cache row of its
    first caption. Labels that caption no image in the cache cannot be keys and are left out.
    """
    from triptych.core.errors import InputError

    data = cache.data
    if not data.labels:
        raise InputError(
            f"dataset {data.name} has no labels; the label probe needs an image-label dataset (labels:DIR)"
        )
    image_rows, caption_rows, caption_image = cache.split(split)
    first_row: dict[str, int] = {}
    for j, text in enumerate(data.captions):
        first_row.setdefault(text, j)
    # dict.fromkeys: two class folders may give the same text ("hot_dog", "hot dog"); one key each
    present = [t for t in dict.fromkeys(data.labels) if t in first_row]
    label_of = {text: c for c, text in enumerate(present)}
    targets = np.full(len(image_rows), -1, dtype=np.int64)
    for j, i in zip(caption_rows.tolist(), caption_image.tolist(), strict=True):
        if data.captions[j] in label_of:
            targets[i] = label_of[data.captions[j]]
    if (targets < 0).any():
        bad = data.images[image_rows[int(np.flatnonzero(targets < 0)[0])]]
        raise InputError(
            f"dataset {data.name}: image {bad!r} has no caption that is a label text; "
            "the label probe needs an image-label dataset (labels:DIR)"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout in the embeddings
    q = embed_rows(lambda b: model.embed_query("image", "text", b), cache.image, image_rows, device)
    k = embed_rows(
        lambda b: model.embed_key("text", b),
        cache.text,
        np.array([first_row[t] for t in present], dtype=np.int64),
        device,
    )
    model.train(was_training)
    return zero_shot_accuracy(q, k, targets)

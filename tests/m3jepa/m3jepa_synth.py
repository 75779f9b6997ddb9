"""Synthetic image–caption features for the M3-JEPA tests: a shared latent seen by both 'encoders'.

Image tokens (6 × 32) and caption tokens (5 × 24, last one sometimes padding) are noisy
non-linear functions of one latent per image, so alignment is learnable but not trivial.
"""

from __future__ import annotations

import numpy as np

from triptych.m3jepa.data import ImageCaptions
from triptych.m3jepa.features import Features, PairedCache, ShardedArray

DIMS = {"image": 32, "text": 24}


def features(
    tokens: np.ndarray, mask: np.ndarray, ids: list[str], modality: str, encoder: str = "synthetic"
) -> Features:
    tokens = np.where(mask[..., None], tokens, 0).astype(np.float16)
    pooled = (tokens.astype(np.float32) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    manifest = {
        "format": "test",
        "modality": modality,
        "encoder": encoder,
        "fingerprint": "f0",
        "dim": tokens.shape[-1],
        "length": tokens.shape[1],
        "count": len(ids),
    }
    return Features(
        ShardedArray([tokens]),
        ShardedArray([mask]),
        ShardedArray([pooled.astype(np.float32)]),
        ids,
        manifest,
        None,
    )


def caption_set(n_images: int = 120, captions_per_image: int = 2, seed: int = 0, noise: float = 0.6):
    """A cache of a dataset with 60/20/20 splits: image and text Features, rows in dataset order."""
    g = np.random.default_rng(seed)
    fixed = np.random.default_rng(1234)
    w_img, w_txt = fixed.normal(size=(8, DIMS["image"])), fixed.normal(size=(8, DIMS["text"]))
    latent = g.normal(size=(n_images, 8))
    img = np.tanh(latent @ w_img)[:, None, :] + noise * g.normal(size=(n_images, 6, DIMS["image"]))
    cap_img = np.repeat(np.arange(n_images), captions_per_image)
    txt = np.tanh(latent[cap_img] @ w_txt)[:, None, :] + noise * g.normal(
        size=(len(cap_img), 5, DIMS["text"])
    )
    txt_mask = np.ones((len(cap_img), 5), bool)
    txt_mask[:, 4] = g.random(len(cap_img)) > 0.5
    names = [f"img{i:04d}.png" for i in range(n_images)]
    a, b = int(0.6 * n_images), int(0.8 * n_images)
    data = ImageCaptions(
        "synthetic",
        None,
        names,
        [f"caption {j}" for j in range(len(cap_img))],
        cap_img,
        {"train": names[:a], "dev": names[a:b], "test": names[b:]},
    )
    return PairedCache(
        data,
        features(img, np.ones((n_images, 6), bool), names, "image"),
        features(txt, txt_mask, data.caption_ids, "text"),
    )


class _ArrayEncoder:
    """A stand-in encoder that returns precomputed rows (its batch items are row numbers)."""

    def __init__(self, features: Features, modality: str):
        self.features, self.modality, self.name = features, modality, "synthetic"
        self.dim, self.length = features.tokens.shape[-1], features.tokens.shape[1]

    def fingerprint(self) -> str:
        return "f0"

    def encode(self, batch):
        return self.features.batch(np.asarray(batch))


def write_cache(root, cache: PairedCache) -> None:
    """Write an in-memory synthetic cache to disk in the `triptych m3jepa encode` layout."""
    import json
    from pathlib import Path

    from triptych.m3jepa.features import write_features

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    record = cache.data.to_json()
    record["root"] = str(root)
    (root / "dataset.json").write_text(json.dumps(record))
    write_features(
        root / "image", cache.data.images, lambda i: i, _ArrayEncoder(cache.image, "image"), shard_size=64
    )
    write_features(
        root / "text", cache.data.caption_ids, lambda i: i, _ArrayEncoder(cache.text, "text"), shard_size=64
    )


CLASSES = ["cat", "dog", "hot_dog"]
LABELS = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]  # read_label_folder's template


def label_set(per_class: int = 5, wrong: dict[int, int] | None = None, noise: float = 0.05, seed: int = 0):
    """A cache of an image-label dataset (as ``labels:DIR`` gives): 3 classes, per-class 60/20/20 splits.

    Image c's features are one-hot(c) + noise in 3 dims (one token); every caption is its
    label's text with features one-hot(label) in 3 dims, as one text encoder gives for one
    text. ``wrong`` moves image rows' features onto another class's one-hot (misclassified).
    """
    g = np.random.default_rng(seed)
    names, classes, splits = [], [], {"train": [], "dev": [], "test": []}
    for c in range(len(CLASSES)):
        ids = [f"{CLASSES[c]}/{k}.png" for k in range(per_class)]
        a, b = int(0.6 * per_class), int(0.8 * per_class)
        splits["train"] += ids[:a]
        splits["dev"] += ids[a:b]
        splits["test"] += ids[b:]
        names += ids
        classes += [c] * per_class
    classes = np.array(classes)
    look = classes.copy()
    for row, c in (wrong or {}).items():
        look[row] = c
    img = np.eye(3)[look][:, None, :] + noise * g.normal(size=(len(names), 1, 3))
    txt = np.eye(3)[classes][:, None, :]
    data = ImageCaptions(
        "labels",
        None,
        names,
        [LABELS[c] for c in classes],
        np.arange(len(names)),
        splits,
        labels=list(LABELS),
    )
    return PairedCache(
        data,
        features(img, np.ones((len(names), 1), bool), names, "image"),
        features(txt, np.ones((len(names), 1), bool), data.caption_ids, "text"),
    )


def cli_train_evaluate(tmp_path, *train_args: str) -> tuple[dict, str, dict]:
    """``triptych m3jepa train`` on ``tmp_path/cache``, then ``evaluate`` its checkpoint.

    Returns (train summary, evaluate's printed output, evaluate's results).
    """
    import json

    from typer.testing import CliRunner

    from triptych.m3jepa.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            *train_args,
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            summary["checkpoint"],
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert res.exit_code == 0, res.output
    return summary, res.output, json.loads((tmp_path / "eval" / "results.json").read_text())["results"]


def recall_by_hand(
    checkpoint, cache, split: str = "test", fuse: bool | None = None
) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 of a saved checkpoint on a split, written out independently of ``retrieval``.

    Every query's items are scored with the checkpoint's own normalised vectors (both
    directions summed when ``fuse``, default: as it was trained); the position of its best
    relevant item in a descending sort (ties counted in its favour) decides each hit.
    """
    import numpy as np
    import torch

    from triptych.m3jepa.aligner import load_aligner

    aligner = load_aligner(checkpoint)
    fuse = aligner.train_config.get("fuse_directions", False) if fuse is None else fuse
    media = cache.modality
    image_rows, caption_rows, caption_image = cache.split(split)

    def vectors(fn, feats, rows):
        with torch.no_grad():
            return fn(feats.batch(np.asarray(rows))).numpy().astype(np.float64)

    q_img = vectors(lambda b: aligner.embed_query(media, "text", b), cache.image, image_rows)
    k_img = vectors(lambda b: aligner.embed_key(media, b), cache.image, image_rows)
    q_txt = vectors(lambda b: aligner.embed_query("text", media, b), cache.text, caption_rows)
    k_txt = vectors(lambda b: aligner.embed_key("text", b), cache.text, caption_rows)
    i2t, t2i = q_img @ k_txt.T, q_txt @ k_img.T
    if fuse:
        i2t, t2i = i2t + t2i.T, t2i + i2t.T

    def recall(scores, relevant):  # relevant: list of sets of key columns, one per query
        out = {}
        for k in (1, 5, 10):
            hits = 0
            for row, rel in zip(scores, relevant, strict=True):
                best = max(row[j] for j in rel)
                hits += int(sum(1 for s in row if s > best) < k)
            out[f"r{k}"] = 100.0 * hits / len(scores)
        return out

    captions_of = [{j for j, i in enumerate(caption_image) if i == img} for img in range(len(image_rows))]
    return {
        f"{media}->text": recall(i2t, captions_of),
        f"text->{media}": recall(t2i, [{int(i)} for i in caption_image]),
    }

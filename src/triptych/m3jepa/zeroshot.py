"""Zero-shot image classification: label prompts through the text encoder and the trained predictor.

No training on the labels: an aligner trained on image–caption pairs classifies the images
of a label folder by retrieval against the class names. Each class c is written out in T
prompt templates ("a photo of a {}.", ...), which the frozen text encoder encodes; as in
CLIP's prompt ensembles, the class vector is the mean of the T unit vectors, renormalised:

    K_t(c) = normalise(mean_t normalise(embed_key(text, prompt_t(c))))          the text key
    Q_t(c) = normalise(mean_t normalise(embed_query(text -> image, prompt_t(c))))  the predictor's image guess

An image x scores against class c as retrieval ranks image→text (the fused score when the
aligner was trained with it):

    s(x, c) = q(x) · K_t(c) [+ k(x) · Q_t(c)],   q(x) = normalise(embed_query(image -> text, x)),
                                                k(x) = normalise(embed_key(image, x)).

The supervised path, an aligner trained on the label texts themselves, is a probe, not
zero-shot: ``triptych m3jepa evaluate`` reports it as ``label_probe`` (with the CLIP-style
heads, ``--method clip_linear``, it is exactly a linear probe).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from triptych.core.errors import InputError
from triptych.m3jepa.features import EncodedBatch, Features
from triptych.m3jepa.retrieval import embed_rows, recall_at_k

# A short prompt ensemble in the style of CLIP's ImageNet templates (Radford et al. 2021).
TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
)


def read_templates(file: str | Path) -> list[str]:
    """Prompt templates from a text file, one per line, each with one ``{}`` (or ``{label}``) for the class."""
    from triptych.core.inputs import read_text

    lines = [line.strip() for line in read_text(file, "template file", "one template per line").splitlines()]
    templates = [t.replace("{label}", "{}") for t in lines if t]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise InputError(
            f"{file}: every template needs exactly one {{}} for the class name "
            f"({'no templates' if not templates else repr(bad[0])})"
        )
    return templates


def class_names(data: Any) -> list[str]:
    """The class names of an image-label dataset (``labels:DIR``), in the order of ``data.labels``.

    A class's name is its folder (``<label>/<image>`` or ``<split>/<label>/<image>``), with
    underscores read as spaces.
    """
    from triptych.m3jepa.data import image_labels

    labels = image_labels(data)
    names: dict[int, str] = {}
    for i, c in enumerate(labels.tolist()):
        names.setdefault(c, Path(data.images[i]).parent.name.replace("_", " "))
    return [names.get(c, data.labels[c]) for c in range(len(data.labels))]


@torch.no_grad()
def class_vectors(
    aligner: Any,
    text_encoder: Any,
    classes: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    fused: bool = True,
    batch_size: int = 64,
) -> Tensor:
    """[K_t(c), Q_t(c)] per class (C × 2P; C × P without ``fused``): template-averaged, renormalised."""
    prompts = [t.format(c) for c in classes for t in templates]
    keys, queries = [], []
    for start in range(0, len(prompts), batch_size):
        out = text_encoder.encode(prompts[start : start + batch_size])
        b = EncodedBatch(out.tokens.float().cpu(), out.mask.cpu(), out.pooled.float().cpu())
        keys.append(F.normalize(aligner.embed_key("text", b), dim=-1))
        if fused:
            queries.append(F.normalize(aligner.embed_query("text", "image", b), dim=-1))
    shape = (len(classes), len(templates), -1)
    parts = [torch.cat(keys)] + ([torch.cat(queries)] if fused else [])
    # the prompt ensemble: mean of the unit vectors over templates, renormalised (per half)
    return torch.cat([F.normalize(p.reshape(shape).mean(1), dim=-1) for p in parts], dim=1)


def image_vectors(aligner: Any, features: Features, rows: np.ndarray, fused: bool = True) -> Tensor:
    """[q(x), k(x)] per image (N × 2P; N × P without ``fused``), unit halves."""
    q = embed_rows(lambda b: aligner.embed_query("image", "text", b), features, rows)
    if not fused:
        return q
    return torch.cat([q, embed_rows(lambda b: aligner.embed_key("image", b), features, rows)], dim=1)


def zero_shot_scores(image: Tensor, classes: Tensor) -> Tensor:
    """s(x, c) = q(x)·K_t(c) + k(x)·Q_t(c): the image half meets the key half, and the reverse."""
    return image @ classes.T


def zero_shot_classify(
    aligner: Any,
    cache: Any,
    text_encoder: Any,
    split: str = "test",
    templates: Sequence[str] = TEMPLATES,
    fused: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) of classifying a split's images of a label cache by prompted class names.

    Only the images' cached features and the class names are read; the label captions of
    the cache are never used, and nothing is trained.
    """
    from triptych.m3jepa.data import image_labels

    data = cache.data
    if not data.labels:
        raise InputError(
            f"dataset {data.name} has no labels; zero-shot classification needs an image-label cache "
            "(`triptych m3jepa encode --data labels:DIR`)"
        )
    names = class_names(data)
    image_rows, _, _ = cache.split(split)
    targets = image_labels(data)[image_rows]
    scores = zero_shot_scores(
        image_vectors(aligner, cache.image, image_rows, fused),
        class_vectors(aligner, text_encoder, names, templates, fused),
    )
    relevant = F.one_hot(torch.as_tensor(targets), len(names)).bool()
    accuracy = recall_at_k(scores, relevant, [k for k in (1, 5) if k <= len(names)])
    return {
        **{k.replace("r", "top"): v for k, v in accuracy.items()},
        "classes": len(names),
        "images": len(image_rows),
        "templates": len(templates),
        "fused": fused,
    }


def encoder_for(aligner: Any, modality: str, device: str = "cpu") -> Any:
    """The frozen encoder the aligner was trained with (from its checkpoint's record), checked by fingerprint."""
    from triptych.m3jepa.encoders import encoder_from_record

    info = (getattr(aligner, "encoders", None) or {}).get(modality)
    return encoder_from_record(info, modality, device, source="checkpoint", remedy="retrain it")

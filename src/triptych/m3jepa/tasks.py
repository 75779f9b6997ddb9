"""Tasks: one direction of alignment over one dataset, as pairs of rows into two feature caches.

A task (image→text, text→image, audio→text, image→label, ...) is what training steps on
(one optimiser step per task under AGD) and what evaluation scores (Recall@K of its
queries against its keys). It depends only on the feature caches, so training
(:mod:`triptych.m3jepa.train`) and evaluation (:mod:`triptych.m3jepa.retrieval`) both import
it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from triptych.core.errors import InputError
from triptych.m3jepa.features import Features


@dataclass
class Task:
    """One AGD task: ``src -> tgt`` over ``pairs`` (P×2 rows into ``src_features`` / ``tgt_features``).

    ``group_by`` ("src", "tgt" or None) makes an epoch visit each item of that side once
    with one random partner (e.g. each image once with one of its five captions).
    """

    src: str
    tgt: str
    src_features: Features
    tgt_features: Features
    pairs: np.ndarray
    group_by: Literal["src", "tgt"] | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        self.pairs = np.ascontiguousarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        if len(self.pairs) == 0:
            raise InputError(f"task {self.name} has no pairs; check the split and the captions")

    @property
    def name(self) -> str:
        return f"{self.dataset + ':' if self.dataset else ''}{self.src}->{self.tgt}"


def caption_tasks(
    images: Features,
    captions: Features,
    caption_image: Sequence[int] | np.ndarray,
    image_rows: np.ndarray | None = None,
    caption_rows: np.ndarray | None = None,
    dataset: str = "",
    media: str = "image",
) -> list[Task]:
    """image→text and text→image tasks for an image–caption set (``media="audio"``: audio→text, text→audio).

    ``caption_image[j]`` is caption j's image (positions in ``image_rows`` / ``caption_rows``,
    the rows of these items in the two caches; default: the caches' own order).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    image_rows = np.arange(len(images)) if image_rows is None else np.asarray(image_rows)
    caption_rows = np.arange(len(captions)) if caption_rows is None else np.asarray(caption_rows)
    pairs = np.stack([image_rows[caption_image], caption_rows], 1)
    return [
        Task(media, "text", images, captions, pairs, group_by="src", dataset=dataset),
        Task("text", media, captions, images, pairs[:, ::-1], group_by="tgt", dataset=dataset),
    ]


def split_tasks(cache: Any, split: str) -> list[Task]:
    """media→text and text→media tasks of one split of a :class:`~triptych.m3jepa.features.PairedCache`."""
    image_rows, caption_rows, caption_image = cache.split(split)
    return caption_tasks(
        cache.image, cache.text, caption_image, image_rows, caption_rows, media=cache.modality
    )

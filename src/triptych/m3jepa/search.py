"""Cross-modal search: an index of aligned image (and caption) vectors, queried by text or by image.

Keys are the aligner's L2-normalised target vectors (``embed_key``); a query is the aligner's
prediction of the other modality (``embed_query``), so a score is the cosine s(q, k) = q . k.
The index (:mod:`triptych.m3jepa.index_store`) also keeps each item's own prediction of the
other modality, and search then ranks by both directions' scores, as the benchmark does: for a
caption t and an image i,

    s(t, i) = q_{t→i}(t) · k(i) + q_{i→t}(i) · k(t)                          (fused score)

computed as one dot product of concatenated vectors; s/2 is a mean cosine.

Two further steps, both optional, make a typical caption find its image more often:

- **Ensembles.** Several checkpoints (seeds) of the same encoders: each vector is the
  concatenation of the members' vectors, scaled by 1/sqrt(n), so s is the members' mean.
- **Querybank normalisation** (:mod:`triptych.m3jepa.querybank`): s'(q, i) = s(q, i) - b_i.

A search is exact (one matrix product over every item: ``--exact``) or approximate, through
the index's FAISS IVF index over the folded vectors [K/c, -b] (:mod:`triptych.m3jepa.ann`),
which ranks by the same s' and scans only the cells nearest to the query.

Anything with ``embed_query(src, tgt, batch)``, ``embed_key(tgt, batch)`` and an ``encoders``
dict (an :class:`Aligner`) can serve: :func:`triptych.m3jepa.train.load_aligner` gives one from
a training checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from triptych.core.errors import InputError
from triptych.core.inputs import at_least
from triptych.m3jepa.aligner import Aligner
from triptych.m3jepa.features import EncodedBatch, Features, cache_precision, check_compatible
from triptych.m3jepa.index_store import Hit, SearchIndex, load_index
from triptych.m3jepa.querybank import add_querybank, bank_queries, querybank_bias
from triptych.m3jepa.retrieval import embed_rows

__all__ = [
    "Hit",
    "SearchIndex",
    "Searcher",
    "add_querybank",
    "bank_queries",
    "build_index",
    "index_cache",
    "index_images",
    "index_ranks",
    "load_index",
    "query_vectors",
    "querybank_bias",
    "self_test",
]


def embed_keys(
    aligner: Aligner,
    modality: str,
    features: Features,
    rows: np.ndarray | None = None,
    batch_size: int = 256,
    query_for: str | None = None,
) -> torch.Tensor:
    """k = normalise(embed_key(modality, x)) for the given cache rows, in batches (N x P).

    With ``query_for``, the item's prediction of that modality instead, normalise(embed_query).
    """
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)

    def embed(batch: EncodedBatch) -> torch.Tensor:
        if query_for:
            return aligner.embed_query(modality, query_for, batch)
        return aligner.embed_key(modality, batch)

    return embed_rows(embed, features, rows, batch_size=batch_size).float()


def query_vectors(aligner: Aligner, src: str, tgt: str, batch: EncodedBatch, fused: bool) -> torch.Tensor:
    """q = normalise(embed_query(src -> tgt, x)), then the item's own key normalise(embed_key(src, x)) if fused."""
    q = F.normalize(aligner.embed_query(src, tgt, batch), dim=-1)
    if fused:  # the query's own key, for the reverse direction's term of the fused score
        q = torch.cat([q, F.normalize(aligner.embed_key(src, batch), dim=-1)], dim=1)
    return q.float().cpu()


def index_ranks(index: SearchIndex) -> np.ndarray:
    """Rank (1 = best) of each indexed caption's own image, searching with the stored caption vectors.

    The offline form of :func:`self_test` (no encoder calls), for choosing β on a dev split.
    """
    if index.caption_image is None or index.text_keys is None:
        raise InputError("ranking the indexed captions needs an index with captions")
    if not index.fused:  # an index made before fusion keeps no caption predictions to query with
        raise InputError("this index keeps no caption predictions; rebuild it with `triptych m3jepa index`")
    scores, _ = index.scores(torch.cat([index.text_queries, index.text_keys], 1), "image")
    own = scores[torch.arange(len(scores)), torch.as_tensor(index.caption_image)]
    return ((scores > own[:, None]).sum(1) + 1).numpy()


def encoder_record(features: Features) -> dict[str, Any]:
    """What an index keeps about the encoder behind a cache, to rebuild it for queries."""
    m = features.manifest
    return {
        "encoder": m["encoder"],
        "fingerprint": m["fingerprint"],
        "precision": cache_precision(m),
        "dim": int(m["dim"]),
        "length": int(m["length"]),
    }


def build_index(
    aligner: Aligner,
    image_features: Features,
    image_paths: Sequence[str],
    image_rows: np.ndarray | None = None,
    text_features: Features | None = None,
    captions: Sequence[str] = (),
    caption_rows: np.ndarray | None = None,
    caption_image: np.ndarray | None = None,
    checkpoints: Sequence[str] = (),
) -> SearchIndex:
    """Embed cached image (and caption) features with the aligner into a :class:`SearchIndex`."""
    encoders = {"image": encoder_record(image_features)}
    check_encoder(aligner, "image", image_features)
    index = SearchIndex(
        [str(p) for p in image_paths],
        embed_keys(aligner, "image", image_features, image_rows),
        encoders,
        [str(c) for c in checkpoints],
    )
    if text_features is not None:
        check_encoder(aligner, "text", text_features)
        encoders["text"] = encoder_record(text_features)
        index.captions = list(captions)
        index.caption_image = np.asarray(caption_image)
        index.text_keys = embed_keys(aligner, "text", text_features, caption_rows)
        index.image_queries = embed_keys(aligner, "image", image_features, image_rows, query_for="text")
        index.text_queries = embed_keys(aligner, "text", text_features, caption_rows, query_for="image")
    return index


def check_encoder(aligner: Aligner, modality: str, features: Features) -> None:
    """The cache must come from the encoder the aligner was trained on (same name, config, width)."""
    info = (getattr(aligner, "encoders", None) or {}).get(modality)
    if info:
        check_compatible(
            features.manifest,
            features.path,
            encoder=info.get("encoder"),
            fingerprint=info.get("fingerprint"),
            dim=info.get("dim"),
            precision=info.get("precision", "fp32"),  # models from before the field: fp32 caches
        )


class Searcher:
    """Queries an index: text -> images, image -> captions; query encoders are built on first use."""

    def __init__(
        self,
        index: SearchIndex,
        aligner: Aligner,
        encoders: dict[str, Any] | None = None,
        device: str = "cpu",
        exact: bool = False,
        nprobe: int | None = None,
    ):
        self.index, self.aligner, self.device = index, aligner, device
        self.encoders = dict(encoders or {})
        self.timings: dict[str, float] = {}
        self.exact, self.nprobe = exact, nprobe
        self._ann: dict[str, Any] = {}

    def approximate(self, modality: str) -> Any:
        """The index's memory-mapped ANN index for ``modality`` items, or None (exact search)."""
        if self.exact or modality not in self.index.ann or self.index.folder is None:
            return None
        if modality not in self._ann:
            from triptych.m3jepa.ann import AnnIndex

            self._ann[modality] = AnnIndex(self.index.folder, modality, self.nprobe)
        return self._ann[modality]

    def encoder(self, modality: str) -> Any:
        """The query encoder for ``modality``: the same encoder (and config) that made the index keys."""
        if modality not in self.encoders:
            from triptych.m3jepa.encoders import encoder_from_record

            info = self.index.encoders.get(modality) or (getattr(self.aligner, "encoders", {}) or {}).get(
                modality
            )
            enc = encoder_from_record(
                info, modality, self.device, source="index", remedy="rebuild it with `triptych m3jepa index`"
            )
            self.encoders[modality] = enc
        return self.encoders[modality]

    @torch.no_grad()
    def query_vectors(self, src: str, tgt: str, items: Sequence[Any]) -> torch.Tensor:
        """Encode ``items`` and map them to query vectors (:func:`query_vectors`): Q x P; timings kept."""
        enc = self.encoder(src)
        start = time.perf_counter()
        with torch.inference_mode():
            out = enc.encode(items)
        batch = EncodedBatch(out.tokens.float().cpu(), out.mask.cpu(), out.pooled.float().cpu())
        middle = time.perf_counter()
        q = query_vectors(self.aligner, src, tgt, batch, self.index.fused)
        self.timings = {"encode_s": middle - start, "predict_s": time.perf_counter() - middle}
        return q

    def ranked(
        self, q: torch.Tensor, modality: str, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores s', rows, mean cosines), each Q x k, best first: approximate when the index has an ANN."""
        ann = self.approximate(modality)
        if ann is None:  # exact: one product with every key
            scores, cosine = self.index.scores(q, modality)
            best, rows = scores.topk(min(k, scores.shape[1]), dim=1)
            return best, rows, cosine.gather(1, rows)
        from triptych.m3jepa.ann import fold_queries

        # the codes (SQ8 or PQ) find candidates; their exact scores come from the memory-mapped vectors
        best, rows = ann.search(
            fold_queries(q.numpy()), k, vectors=lambda r: self.index.folded(modality, torch.from_numpy(r))
        )
        best, rows = torch.from_numpy(best), torch.from_numpy(rows)
        bias = self.index.bias(modality)
        # s' = s - b, so the reported cosine is the score plus the item's bias (a few rows of a memory map)
        cos = best if bias is None else best + bias[rows.clamp_min(0).reshape(-1)].reshape(rows.shape)
        return best, rows, cos

    def _hits(self, q: torch.Tensor, modality: str, names: Sequence[str], k: int) -> list[list[Hit]]:
        at_least(k, 1, "k")
        start = time.perf_counter()
        best, rows, cos = self.ranked(q, modality, k)
        self.timings["score_s"] = time.perf_counter() - start
        return [
            [
                Hit(r + 1, names[int(j)], float(s), int(j), float(c))
                for r, (s, j, c) in enumerate(zip(srow, jrow, crow, strict=True))
                if j >= 0
            ]  # -1: fewer found
            for srow, jrow, crow in zip(best.tolist(), rows.tolist(), cos.tolist(), strict=True)
        ]

    def text_to_images(self, texts: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """For each text, the k indexed images with the highest cosine score."""
        texts = [t.strip() for t in texts]
        if not all(texts):
            raise InputError("--text is empty; give a caption to search for")
        return self._hits(self.query_vectors("text", "image", texts), "image", self.index.images, k)

    def image_to_captions(self, images: Sequence[Any], k: int = 5) -> list[list[Hit]]:
        """For each image (PIL), the k indexed captions with the highest cosine score."""
        self.index.key_rows("text", 0, 1)  # refuses an index without captions before any encoding
        return self._hits(self.query_vectors("image", "text", images), "text", self.index.captions, k)


def self_test(searcher: Searcher, queries: int = 200, k: int = 5) -> dict[str, Any]:
    """Each of ``queries`` indexed captions (evenly spaced), searched alone: is its own image in the top k?

    Returns the hit rate (%), the own image's rank (median and quartiles: the median is the
    "typical caption"), and per-query latency percentiles (ms) of the encode, predict and
    score steps and of their sum, over an index of N images.
    """
    at_least(k, 1, "k")
    at_least(queries, 1, "queries")
    index = searcher.index
    if index.caption_image is None or not index.captions:
        raise InputError("--self-test needs an index with captions (build it with --cache or --captions)")
    rows = np.unique(np.linspace(0, len(index.captions) - 1, min(queries, len(index.captions))).astype(int))
    ranks, times = [], []
    for j in rows:
        found = searcher.text_to_images([index.captions[j]], len(index.images))[
            0
        ]  # full ranking: sorting is ~free
        # an approximate search may not reach the own image at all: rank it last
        ranks.append(
            1 + next((r for r, h in enumerate(found) if h.row == index.caption_image[j]), len(index.images))
        )
        times.append({**searcher.timings, "total_s": sum(searcher.timings.values())})
    hits = np.asarray(ranks) <= k
    latency = {
        key.removesuffix("_s"): {
            f"p{q}": float(1000 * np.percentile([t[key] for t in times], q)) for q in (50, 95)
        }
        for key in times[0]
    }
    return {
        "queries": len(rows),
        "images": len(index.images),
        "k": k,
        "hit_rate": 100.0 * float(np.mean(hits)),
        "median_rank": float(np.median(ranks)),
        "rank_quartiles": [float(q) for q in np.percentile(ranks, [25, 75])],
        "latency_ms": latency,
    }


def index_cache(
    aligner: Aligner, cache: str | os.PathLike, split: str | None = None, checkpoints: Sequence[str] = ()
) -> SearchIndex:
    """An index over an encoded dataset (``triptych m3jepa encode``), optionally one split: images and captions."""
    from triptych.m3jepa.features import load_cache

    paired = load_cache(cache)
    if paired.modality != "image":
        raise InputError(
            f"cache {cache} holds {paired.modality} clips; index and search work on images only "
            "(use `triptych m3jepa evaluate` for audio-text retrieval)"
        )
    if split:
        image_rows, caption_rows, caption_image = paired.split(split)
    else:
        image_rows, caption_rows = np.arange(len(paired.image)), np.arange(len(paired.text))
        caption_image = paired.data.caption_image
    paths = [str(paired.data.image_path(int(i))) for i in image_rows]
    return build_index(
        aligner,
        paired.image,
        paths,
        image_rows,
        paired.text,
        [paired.data.captions[int(j)] for j in caption_rows],
        caption_rows,
        caption_image,
        checkpoints,
    )


def index_images(
    aligner: Aligner,
    data: Any,
    work: str | os.PathLike,
    image_encoder: Any,
    text_encoder: Any = None,
    checkpoints: Sequence[str] = (),
    batch_size: int = 8,
) -> SearchIndex:
    """Encode a dataset's images (and captions, given a text encoder) into ``work`` (resumable), then index."""
    from triptych.m3jepa.features import encode_dataset, load_features

    encoders = [image_encoder] + ([text_encoder] if text_encoder is not None and data.captions else [])
    encode_dataset(data, work, encoders, batch_size=batch_size)
    images = load_features(Path(work) / "image")
    paths = [str(data.image_path(i)) for i in range(len(data.images))]
    if len(encoders) == 1:
        return build_index(aligner, images, paths, checkpoints=checkpoints)
    return build_index(
        aligner,
        images,
        paths,
        text_features=load_features(Path(work) / "text"),
        captions=data.captions,
        caption_image=data.caption_image,
        checkpoints=checkpoints,
    )


def image_folder(folder: str | os.PathLike) -> Any:
    """All images in a folder (recursively) as an ImageCaptions without captions."""
    from triptych.m3jepa.data import IMAGE_SUFFIXES, ImageCaptions

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder")
    names = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise InputError(f"--images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return ImageCaptions(folder.name, folder, names, [], np.zeros(0, dtype=np.int64))


def write_results_page(
    path: str | os.PathLike,
    query: str,
    hits: Sequence[Hit],
    kind: str,
    query_image: str | None = None,
    timings: dict[str, float] | None = None,
) -> Path:
    """One HTML page (core.report) with the query and its ranked results (images or captions)."""
    from triptych.core.report import Report

    report = Report(f"M3-JEPA search: {query}")
    section = report.section("Query")
    if query_image:
        section.figure(query_image, caption=Path(query_image).name)
    else:
        section.text(query)
    if timings:
        section.text(
            "Latency: " + ", ".join(f"{k.removesuffix('_s')} {1000 * v:.1f} ms" for k, v in timings.items())
        )
    results = report.section(f"Top {len(hits)} {kind}")
    results.table(
        [
            {
                "rank": h.rank,
                "score": round(h.score, 4),
                "cosine": round(h.cosine, 4),
                kind.rstrip("s"): h.item,
            }
            for h in hits
        ]
    )
    if kind == "images":
        for h in hits:
            results.figure(h.item, caption=f"#{h.rank}  score {h.score:.3f}  {Path(h.item).name}")
    return report.write(path)

"""Cross-modal search: an index of aligned image (and caption) vectors, queried by text or by image.

An index folder holds ``index.json`` (format, the aligner checkpoint, the encoders behind
the vectors, image paths, captions and each caption's image), ``image_keys.npy`` (N x P)
and, when captions were indexed, ``text_keys.npy`` (M x P). Keys are the aligner's
L2-normalised target vectors (``embed_key``); a query is the aligner's prediction of the
other modality (``embed_query``), so a score is the cosine s(q, k) = q . k.

An index built with captions also keeps each item's own prediction of the other modality
(``image_queries.npy``, ``text_queries.npy``), and search then ranks by both directions'
scores, as the benchmark does (``--fuse``): for a caption t and an image i,

    s(t, i) = q_{t→i}(t) · k(i) + q_{i→t}(i) · k(t)                          (fused score)

computed as one dot product of concatenated vectors; s/2 is a mean cosine.

Two further steps, both optional, make a typical caption find its image more often:

- **Ensembles.** Several checkpoints (seeds) of the same encoders: each vector is the
  concatenation of the members' vectors, scaled by 1/sqrt(n), so s is the members' mean.
- **Querybank normalisation** (Bogolin et al., CVPR 2022, inverted-softmax form). Some
  images are "hubs", close to many captions. A bank of captions that are *not* queries
  (the training split's) measures each image's hubness, and a query ranks images by

      s'(q, i) = s(q, i) - b_i,   b_i = (1/β) log Σ_{c in bank} exp(β s(c, i))     (QB-norm)

  which is the log of the inverted softmax exp(β s(q,i)) / Σ_c exp(β s(c,i)), divided by β.
  Image queries against captions use a bank of training images the same way.

Anything with ``embed_query(src, tgt, batch)``, ``embed_key(tgt, batch)`` and an
``encoders`` dict (modality -> encoder name, fingerprint, dim) can serve as the aligner:
:func:`triptych.m3jepa.train.load_aligner` gives one from a training checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from triptych.core.errors import InputError
from triptych.core.inputs import at_least, read_json
from triptych.core.io import atomic_output_dir
from triptych.m3jepa.features import EncodedBatch, Features, check_compatible
from triptych.m3jepa.retrieval import embed_rows

FORMAT = "triptych.m3jepa.index/1"
OPTIONAL_ARRAYS = ("text_keys", "image_queries", "text_queries", "image_bias", "text_bias")


@dataclass
class Hit:
    """One search result: rank (1 = best), item (image path or caption), ranking score, row, mean cosine.

    ``score`` is what the ranking sorts by: the cosine less the item's querybank bias
    (the plain cosine when the index has no querybank).
    """

    rank: int
    item: str
    score: float
    row: int
    cosine: float = float("nan")


@dataclass
class SearchIndex:
    """Image keys (N x P) for text queries and optional caption keys (M x P) for image queries."""

    images: list[str]
    image_keys: torch.Tensor
    encoders: dict[str, dict[str, Any]]
    checkpoints: list[str] = field(default_factory=list)  # one per ensemble member
    captions: list[str] = field(default_factory=list)
    caption_image: np.ndarray | None = None
    text_keys: torch.Tensor | None = None
    image_queries: torch.Tensor | None = None  # N x P, q_{image→text}: for fused scores
    text_queries: torch.Tensor | None = None  # M x P, q_{text→image}
    image_bias: torch.Tensor | None = None  # N, querybank bias b_i for text queries
    text_bias: torch.Tensor | None = None  # M, querybank bias for image queries
    querybank: dict[str, Any] = field(default_factory=dict)  # beta, bank sizes and source
    _joined: dict[str, tuple[tuple[int, int], torch.Tensor]] = field(default_factory=dict, repr=False,
                                                                    compare=False)

    @property
    def fused(self) -> bool:
        return self.image_queries is not None and self.text_queries is not None

    def keys(self, modality: str) -> torch.Tensor:
        """The index side of a score for ``modality`` items: keys, or [keys, own predictions] when fused."""
        keys = self.image_keys if modality == "image" else self.text_keys
        if keys is None:
            raise InputError("this index has no captions; build it with captions (--cache, or --captions FILE) "
                             "to search by image")
        if not self.fused:
            return keys
        own = self.image_queries if modality == "image" else self.text_queries
        # joined once per index, not per query (a query's scoring is one matrix product)
        made = self._joined.get(modality)
        if made is None or made[0] != (id(keys), id(own)):
            made = self._joined[modality] = ((id(keys), id(own)), torch.cat([keys, own], 1))
        return made[1]

    def bias(self, modality: str) -> torch.Tensor | None:
        return self.image_bias if modality == "image" else self.text_bias

    def scores(self, queries: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ranking scores s' = s - b, mean cosines s) of query vectors against the ``modality`` items: Q x N."""
        keys = self.keys(modality)
        if queries.shape[1] != keys.shape[1]:
            raise InputError(f"query vectors ({queries.shape[1]}-d) do not match the index ({keys.shape[1]}-d); "
                             "search with the checkpoints the index was built with")
        cosine = queries @ keys.T / (2 if self.fused else 1)
        bias = self.bias(modality)
        return (cosine if bias is None else cosine - bias), cosine

    def save(self, out: str | os.PathLike, keep: Sequence[str] = ()) -> Path:
        """Write the index folder atomically, replacing it whole (an interrupted run leaves the old index intact).

        ``keep`` names entries of ``out`` that move into the new folder (``features``, the images' encoding).
        """
        with atomic_output_dir(out, keep=keep) as staging:
            np.save(staging / "image_keys.npy", self.image_keys.numpy().astype(np.float32))
            for name in OPTIONAL_ARRAYS:
                if getattr(self, name) is not None:
                    np.save(staging / f"{name}.npy", getattr(self, name).numpy().astype(np.float32))
            meta = {"format": FORMAT, "checkpoints": self.checkpoints, "encoders": self.encoders,
                    "images": self.images, "captions": self.captions, "querybank": self.querybank,
                    "caption_image": None if self.caption_image is None else self.caption_image.tolist()}
            (staging / "index.json").write_text(json.dumps(meta, indent=1))
        return Path(out)


def load_index(path: str | os.PathLike) -> SearchIndex:
    """Read an index folder written by :meth:`SearchIndex.save` (``triptych m3jepa index``)."""
    path = Path(path)
    if not (path / "index.json").is_file():
        raise InputError(f"{path} is not a search index (no index.json); build one with `triptych m3jepa index`")
    meta = read_json(path / "index.json", "search index file", "rebuild the index with `triptych m3jepa index`")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{path}: index format {found!r} is not {FORMAT!r}; rebuild the index")
    try:
        arrays = {name: torch.from_numpy(np.load(path / f"{name}.npy", allow_pickle=False)) for name in OPTIONAL_ARRAYS
                  if (path / f"{name}.npy").is_file()}
        checkpoints = meta.get("checkpoints") or ([meta["checkpoint"]] if meta.get("checkpoint") else [])
        keys = torch.from_numpy(np.load(path / "image_keys.npy", allow_pickle=False))
        return SearchIndex(meta["images"], keys, meta["encoders"], checkpoints, meta.get("captions") or [],
                           None if meta.get("caption_image") is None else np.asarray(meta["caption_image"]),
                           querybank=meta.get("querybank") or {}, **arrays)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: the search index is incomplete or corrupt ({type(exc).__name__}); rebuild it "
                         "with `triptych m3jepa index`") from None


def embed_keys(aligner: Any, modality: str, features: Features, rows: np.ndarray | None = None,
               batch_size: int = 256, query_for: str | None = None) -> torch.Tensor:
    """k = normalise(embed_key(modality, x)) for the given cache rows, in batches (N x P).

    With ``query_for``, the item's prediction of that modality instead, normalise(embed_query).
    """
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)

    def embed(batch: EncodedBatch) -> torch.Tensor:
        if query_for:
            return aligner.embed_query(modality, query_for, batch)
        return aligner.embed_key(modality, batch)

    return embed_rows(embed, features, rows, batch_size=batch_size).float()


def query_vectors(aligner: Any, src: str, tgt: str, batch: EncodedBatch, fused: bool) -> torch.Tensor:
    """q = normalise(embed_query(src -> tgt, x)), then the item's own key normalise(embed_key(src, x)) if fused."""
    q = F.normalize(aligner.embed_query(src, tgt, batch), dim=-1)
    if fused:  # the query's own key, for the reverse direction's term of the fused score
        q = torch.cat([q, F.normalize(aligner.embed_key(src, batch), dim=-1)], dim=1)
    return q.float().cpu()


def querybank_bias(bank: torch.Tensor, index: SearchIndex, modality: str, beta: float,
                   chunk: int = 2048) -> torch.Tensor:
    """b_i = (1/β) log Σ_{c in bank} exp(β s(c, i)) for every indexed ``modality`` item i (QB-norm)."""
    if beta <= 0:
        raise InputError(f"the querybank temperature beta must be > 0 (got {beta})")
    total = None
    for start in range(0, len(bank), chunk):  # the bank x index matrix can be large: accumulate in chunks
        _, cosine = index.scores(bank[start:start + chunk], modality)
        part = torch.logsumexp(beta * cosine, dim=0)
        total = part if total is None else torch.logaddexp(total, part)
    if total is None:
        raise InputError("the querybank is empty")
    return total / beta


def bank_queries(aligner: Any, bank: Any, split: str | None = "train", size: int = 10000,
                 fused: bool = True) -> dict[str, torch.Tensor]:
    """Query vectors of a querybank: at most ``size`` evenly spaced captions and images of ``bank``'s split.

    ``bank`` is an encoded dataset (:class:`~triptych.m3jepa.features.PairedCache`) made with the
    aligner's encoders; ``split`` picks its rows (None: all). Returns {"text": C x P, "image": I x P},
    the same vectors a search would make of those items (:func:`query_vectors`).
    """
    if split:
        image_rows, caption_rows, _ = bank.split(split)
    else:
        image_rows, caption_rows = np.arange(len(bank.image)), np.arange(len(bank.text))
    _check(aligner, "text", bank.text)
    _check(aligner, "image", bank.image)

    def spaced(rows: np.ndarray) -> np.ndarray:
        return rows[np.unique(np.linspace(0, len(rows) - 1, min(size, len(rows))).astype(int))] if len(rows) else rows

    return {src: embed_rows(lambda b, src=src, tgt=tgt: query_vectors(aligner, src, tgt, b, fused), feats,
                            spaced(rows), normalise=False)
            for src, tgt, feats, rows in (("text", "image", bank.text, caption_rows),
                                          ("image", "text", bank.image, image_rows))}


def add_querybank(index: SearchIndex, queries: dict[str, torch.Tensor], beta: float = 20.0,
                  **record: Any) -> SearchIndex:
    """Attach QB-norm biases to ``index``: its images' from the bank's captions, its captions' from its images.

    ``queries`` comes from :func:`bank_queries`; the bank's items must not be the queries you
    will search with (use the training split). ``record`` notes where the bank came from.
    """
    index.image_bias = querybank_bias(queries["text"], index, "image", beta)
    index.querybank = {"beta": beta, **record, "captions": len(queries["text"])}
    if index.text_keys is not None:
        index.text_bias = querybank_bias(queries["image"], index, "text", beta)
        index.querybank["images"] = len(queries["image"])
    return index


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
    return {"encoder": m["encoder"], "fingerprint": m["fingerprint"], "dim": int(m["dim"]),
            "length": int(m["length"])}


def build_index(aligner: Any, image_features: Features, image_paths: Sequence[str],
                image_rows: np.ndarray | None = None, text_features: Features | None = None,
                captions: Sequence[str] = (), caption_rows: np.ndarray | None = None,
                caption_image: np.ndarray | None = None, checkpoints: Sequence[str] = ()) -> SearchIndex:
    """Embed cached image (and caption) features with the aligner into a :class:`SearchIndex`."""
    encoders = {"image": encoder_record(image_features)}
    _check(aligner, "image", image_features)
    index = SearchIndex([str(p) for p in image_paths], embed_keys(aligner, "image", image_features, image_rows),
                        encoders, [str(c) for c in checkpoints])
    if text_features is not None:
        _check(aligner, "text", text_features)
        encoders["text"] = encoder_record(text_features)
        index.captions = list(captions)
        index.caption_image = np.asarray(caption_image)
        index.text_keys = embed_keys(aligner, "text", text_features, caption_rows)
        index.image_queries = embed_keys(aligner, "image", image_features, image_rows, query_for="text")
        index.text_queries = embed_keys(aligner, "text", text_features, caption_rows, query_for="image")
    return index


def _check(aligner: Any, modality: str, features: Features) -> None:
    """The cache must come from the encoder the aligner was trained on (same name, config, width)."""
    info = (getattr(aligner, "encoders", None) or {}).get(modality)
    if info:
        check_compatible(features.manifest, features.path, encoder=info.get("encoder"),
                         fingerprint=info.get("fingerprint"), dim=info.get("dim"))


class Searcher:
    """Queries an index: text -> images, image -> captions; query encoders are built on first use."""

    def __init__(self, index: SearchIndex, aligner: Any, encoders: dict[str, Any] | None = None,
                 device: str = "cpu"):
        self.index, self.aligner, self.device = index, aligner, device
        self.encoders = dict(encoders or {})
        self.timings: dict[str, float] = {}

    def encoder(self, modality: str) -> Any:
        """The query encoder for ``modality``: the same encoder (and config) that made the index keys."""
        if modality not in self.encoders:
            from triptych.m3jepa.encoders import make_encoder

            info = self.index.encoders.get(modality) or (getattr(self.aligner, "encoders", {}) or {}).get(modality)
            if not info:
                raise InputError(f"the index does not say which {modality} encoder the aligner was trained on; "
                                 "rebuild it with `triptych m3jepa index`")
            enc = make_encoder(info["encoder"], modality=modality, length=info.get("length"), device=self.device)
            if info.get("fingerprint") and enc.fingerprint() != info["fingerprint"]:
                raise InputError(f"{modality} encoder {info['encoder']!r} here differs from the one the index was "
                                 "built with (another version or configuration); rebuild the index")
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

    def _hits(self, q: torch.Tensor, modality: str, names: Sequence[str], k: int) -> list[list[Hit]]:
        at_least(k, 1, "k")
        start = time.perf_counter()
        scores, cosine = self.index.scores(q, modality)
        best, rows = scores.topk(min(k, scores.shape[1]), dim=1)
        cos = cosine.gather(1, rows)
        self.timings["score_s"] = time.perf_counter() - start
        return [[Hit(r + 1, names[int(j)], float(s), int(j), float(c))
                 for r, (s, j, c) in enumerate(zip(srow, jrow, crow, strict=True))]
                for srow, jrow, crow in zip(best.tolist(), rows.tolist(), cos.tolist(), strict=True)]

    def text_to_images(self, texts: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """For each text, the k indexed images with the highest cosine score."""
        texts = [t.strip() for t in texts]
        if not all(texts):
            raise InputError("--text is empty; give a caption to search for")
        return self._hits(self.query_vectors("text", "image", texts), "image", self.index.images, k)

    def image_to_captions(self, images: Sequence[Any], k: int = 5) -> list[list[Hit]]:
        """For each image (PIL), the k indexed captions with the highest cosine score."""
        self.index.keys("text")  # refuses an index without captions before any encoding
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
        found = searcher.text_to_images([index.captions[j]], len(index.images))[0]  # full ranking: sorting is ~free
        ranks.append(1 + next(r for r, h in enumerate(found) if h.row == index.caption_image[j]))
        times.append({**searcher.timings, "total_s": sum(searcher.timings.values())})
    hits = np.asarray(ranks) <= k
    latency = {key.removesuffix("_s"): {f"p{q}": float(1000 * np.percentile([t[key] for t in times], q))
                                       for q in (50, 95)} for key in times[0]}
    return {"queries": len(rows), "images": len(index.images), "k": k,
            "hit_rate": 100.0 * float(np.mean(hits)), "median_rank": float(np.median(ranks)),
            "rank_quartiles": [float(q) for q in np.percentile(ranks, [25, 75])], "latency_ms": latency}


def index_cache(aligner: Any, cache: str | os.PathLike, split: str | None = None,
                checkpoints: Sequence[str] = ()) -> SearchIndex:
    """An index over an encoded dataset (``triptych m3jepa encode``), optionally one split: images and captions."""
    from triptych.m3jepa.features import load_cache

    paired = load_cache(cache)
    if paired.modality != "image":
        raise InputError(f"cache {cache} holds {paired.modality} clips; index and search work on images only "
                         "(use `triptych m3jepa evaluate` for audio-text retrieval)")
    if split:
        image_rows, caption_rows, caption_image = paired.split(split)
    else:
        image_rows, caption_rows = np.arange(len(paired.image)), np.arange(len(paired.text))
        caption_image = paired.data.caption_image
    paths = [str(paired.data.image_path(int(i))) for i in image_rows]
    return build_index(aligner, paired.image, paths, image_rows, paired.text,
                       [paired.data.captions[int(j)] for j in caption_rows], caption_rows, caption_image, checkpoints)


def index_images(aligner: Any, data: Any, work: str | os.PathLike, image_encoder: Any, text_encoder: Any = None,
                 checkpoints: Sequence[str] = (), batch_size: int = 32) -> SearchIndex:
    """Encode a dataset's images (and captions, given a text encoder) into ``work`` (resumable), then index."""
    from triptych.m3jepa.features import encode_dataset, load_features

    encoders = [image_encoder] + ([text_encoder] if text_encoder is not None and data.captions else [])
    encode_dataset(data, work, encoders, batch_size=batch_size)
    images = load_features(Path(work) / "image")
    paths = [str(data.image_path(i)) for i in range(len(data.images))]
    if len(encoders) == 1:
        return build_index(aligner, images, paths, checkpoints=checkpoints)
    return build_index(aligner, images, paths, text_features=load_features(Path(work) / "text"),
                       captions=data.captions, caption_image=data.caption_image, checkpoints=checkpoints)


def image_folder(folder: str | os.PathLike) -> Any:
    """All images in a folder (recursively) as an ImageCaptions without captions."""
    from triptych.m3jepa.data import IMAGE_SUFFIXES, ImageCaptions

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder")
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise InputError(f"--images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return ImageCaptions(folder.name, folder, names, [], np.zeros(0, dtype=np.int64))


def write_results_page(path: str | os.PathLike, query: str, hits: Sequence[Hit], kind: str,
                       query_image: str | None = None, timings: dict[str, float] | None = None) -> Path:
    """One HTML page (core.report) with the query and its ranked results (images or captions)."""
    from triptych.core.report import Report

    report = Report(f"M3-JEPA search: {query}")
    section = report.section("Query")
    if query_image:
        section.figure(query_image, caption=Path(query_image).name)
    else:
        section.text(query)
    if timings:
        section.text("Latency: " + ", ".join(f"{k.removesuffix('_s')} {1000 * v:.1f} ms" for k, v in timings.items()))
    results = report.section(f"Top {len(hits)} {kind}")
    results.table([{"rank": h.rank, "score": round(h.score, 4), "cosine": round(h.cosine, 4), kind.rstrip("s"): h.item}
                   for h in hits])
    if kind == "images":
        for h in hits:
            results.figure(h.item, caption=f"#{h.rank}  score {h.score:.3f}  {Path(h.item).name}")
    return report.write(path)

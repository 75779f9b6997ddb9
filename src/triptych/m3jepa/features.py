"""Feature cache: a dataset encoded once by a frozen encoder, stored as memory-mapped shards.

Layout of one cache folder (one modality, one encoder)::

    <cache>/manifest.json          what made it and what is finished (see below)
    <cache>/ids.json               the N item ids, in row order
    <cache>/shard-00000/tokens.npy N_s x L x D  float16   token embeddings, zero where padded
    <cache>/shard-00000/mask.npy   N_s x L      bool      True for real tokens
    <cache>/shard-00000/pooled.npy N_s x D      float32   the encoder's own pooled vector
    <cache>/shard-00001/...

``manifest.json`` holds ``format``, ``modality``, ``encoder`` (name), ``fingerprint``
(encoder version + preprocessing config hash), ``precision`` (fp32 or bf16: what the
encoder computed in; absent in caches written before it existed, which are fp32), ``dim``
(D), ``length`` (L), ``dtype`` (of tokens), ``count`` (N), ``shard_size``, ``shards``
(list of ``{"name", "start", "count"}``, only finished ones) and ``complete``. Rows keep the order of ``ids.json``;
shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``.

Writing is resumable: each shard is written to a staging folder and renamed into place,
and only then added to the manifest, so after an interruption :func:`write_features`
recomputes nothing that the manifest lists as finished. Readers memory-map the shards
(:func:`load_features`), so a cache larger than memory can be read by batches.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.core.inputs import read_json
from triptych.core.io import atomic_output_dir, write_text
from triptych.core.progress import progress_bar

FORMAT = "triptych.m3jepa.features/1"
MANIFEST = "manifest.json"
IDS = "ids.json"


@dataclass
class EncodedBatch:
    """One encoded batch: tokens B x L x D, mask B x L (True = real token), pooled B x D."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class CachableEncoder(Protocol):
    """What the cache needs from an encoder (see :mod:`triptych.m3jepa.encoders`)."""

    name: str
    modality: str
    dim: int
    length: int

    def fingerprint(self) -> str: ...

    def encode(self, batch: Sequence[Any]) -> EncodedBatch: ...


class ShardedArray:
    """A read-only array that concatenates memory-mapped shards along axis 0.

    Indexing with an int, a slice, an integer array or a boolean mask returns a numpy
    array read from only the shards it touches; ``np.asarray(a)`` reads everything.
    """

    def __init__(self, shards: Sequence[np.ndarray]):
        if not shards:
            raise ValueError("ShardedArray needs at least one shard")
        self.shards = list(shards)
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.shape: tuple[int, ...] = (int(self.offsets[-1]), *self.shards[0].shape[1:])
        self.dtype = self.shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # rows first, then the remaining axes on what was read
            rows = self[index[0]]
            return (
                rows[index[1:]] if isinstance(index[0], int | np.integer) else rows[(slice(None), *index[1:])]
            )
        if isinstance(index, int | np.integer):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} rows")
            s = int(np.searchsorted(self.offsets, i, side="right") - 1)
            return np.asarray(self.shards[s][i - self.offsets[s]])
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(shard_of):
            rows = shard_of == s
            out[rows] = self.shards[s][index[rows] - self.offsets[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = np.concatenate([np.asarray(s) for s in self.shards], axis=0)
        return full if dtype is None else full.astype(dtype)


@dataclass
class Features:
    """A loaded cache: ``tokens`` N x L x D, ``mask`` N x L, ``pooled`` N x D, ``ids`` (N)."""

    tokens: ShardedArray
    mask: ShardedArray
    pooled: ShardedArray
    ids: list[str]
    manifest: dict[str, Any]
    path: Path | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def length(self) -> int:
        return int(self.manifest["length"])

    @property
    def encoder(self) -> str:
        return str(self.manifest["encoder"])

    def index_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; an InputError names the first id the cache lacks."""
        rows = {item: i for i, item in enumerate(self.ids)}
        try:
            return np.array([rows[item] for item in ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(
                f"feature cache {self.path}: no item {exc.args[0]!r}; re-run "
                "`triptych m3jepa encode` on the dataset that contains it"
            ) from None

    def batch(self, rows: Any) -> EncodedBatch:
        """Rows as float32 tensors (tokens, mask, pooled), ready for a predictor."""
        return EncodedBatch(
            torch.from_numpy(self.tokens[rows].astype(np.float32)),
            torch.from_numpy(self.mask[rows]),
            torch.from_numpy(self.pooled[rows].astype(np.float32)),
        )


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The cache's manifest, or None if ``path`` holds no cache."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    manifest = read_json(file, "feature cache manifest", "delete the folder and encode again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InputError(
            f"feature cache {path}: format {found!r} is not {FORMAT!r}; "
            "encode again with this version of triptych"
        )
    return manifest


def check_compatible(
    manifest: dict[str, Any],
    path: Any,
    *,
    encoder: str | None = None,
    fingerprint: str | None = None,
    dim: int | None = None,
    modality: str | None = None,
    precision: str | None = None,
) -> None:
    """Raise an InputError if the cache was made by another encoder, config, precision or dimension."""
    if encoder is not None and manifest["encoder"] != encoder:
        raise InputError(
            f"feature cache {path} was made with encoder {manifest['encoder']!r}, not "
            f"{encoder!r}; encode the data again with {encoder!r} into another folder"
        )
    if precision is not None and cache_precision(manifest) != precision:
        raise InputError(
            f"feature cache {path} holds {cache_precision(manifest)} features, not {precision}; encode "
            f"again with --precision {precision} into another folder"
        )
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise InputError(
            f"feature cache {path} was made with another version or configuration of encoder "
            f"{manifest['encoder']!r} (fingerprint {manifest['fingerprint']} != {fingerprint}); "
            "encode again into another folder"
        )
    if dim is not None and int(manifest["dim"]) != int(dim):
        raise InputError(
            f"feature cache {path} holds {manifest['dim']}-d features ({manifest['encoder']}) but "
            f"{dim}-d are expected; use a cache made with the encoder the model was trained on"
        )
    if modality is not None and manifest["modality"] != modality:
        raise InputError(
            f"feature cache {path} holds {manifest['modality']} features, not {modality}; "
            "pass the other cache folder"
        )


def cache_precision(manifest: dict[str, Any]) -> str:
    """The precision a cache was encoded in (caches from before the field existed are fp32)."""
    return str(manifest.get("precision", "fp32"))


def load_features(
    path: str | os.PathLike,
    *,
    encoder: str | None = None,
    fingerprint: str | None = None,
    dim: int | None = None,
    modality: str | None = None,
) -> Features:
    """Memory-map a finished cache; optional checks that it matches an encoder and dimension."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise InputError(
            f"{path} is not a feature cache (no {MANIFEST}); create it with `triptych m3jepa encode`"
        )
    if not manifest["complete"]:
        done = sum(s["count"] for s in manifest["shards"])
        raise InputError(
            f"feature cache {path} is unfinished ({done}/{manifest['count']} items); "
            "run the same `triptych m3jepa encode` command again to resume it"
        )
    check_compatible(manifest, path, encoder=encoder, fingerprint=fingerprint, dim=dim, modality=modality)
    ids = json.loads((path / IDS).read_text())
    parts = {
        key: [np.load(path / s["name"] / f"{key}.npy", mmap_mode="r") for s in manifest["shards"]]
        for key in ("tokens", "mask", "pooled")
    }
    if not manifest["shards"]:  # an empty dataset still loads, with zero rows
        shape = {
            "tokens": (0, manifest["length"], manifest["dim"]),
            "mask": (0, manifest["length"]),
            "pooled": (0, manifest["dim"]),
        }
        dtypes = {"tokens": manifest["dtype"], "mask": bool, "pooled": np.float32}
        parts = {key: [np.zeros(shape[key], dtype=dtypes[key])] for key in parts}
    return Features(
        ShardedArray(parts["tokens"]),
        ShardedArray(parts["mask"]),
        ShardedArray(parts["pooled"]),
        ids,
        manifest,
        path,
    )


def _new_manifest(encoder: CachableEncoder, count: int, shard_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "modality": encoder.modality,
        "encoder": encoder.name,
        "fingerprint": encoder.fingerprint(),
        "precision": getattr(encoder, "precision", "fp32"),
        "dim": int(encoder.dim),
        "length": int(encoder.length),
        "dtype": "float16",
        "count": count,
        "shard_size": shard_size,
        "shards": [],
        "complete": False,
    }


def write_features(
    path: str | os.PathLike,
    ids: Sequence[str],
    load: Callable[[int], Any],
    encoder: CachableEncoder,
    *,
    shard_size: int = 1024,
    batch_size: int = 32,
    desc: str | None = None,
    loader_workers: int = 0,
    ray: RayPlan | None = None,
) -> Features:
    """Encode items ``load(0) .. load(N-1)`` (ids ``ids``) into the cache at ``path``, resuming.

    A folder that already holds a cache of the same ids, encoder and shard size is
    resumed: finished shards are kept and never recomputed. A cache made with another
    encoder, configuration or id list raises an InputError and is left untouched.

    ``loader_workers`` processes decode and preprocess items (a torch DataLoader) while the
    encoder runs; ``ray`` encodes the shards on Ray workers instead (:func:`encode_on_ray`).
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise InputError(f"feature cache {path}: item ids are not unique; each item needs its own id")
    manifest = read_manifest(path)
    if manifest is not None:
        check_compatible(
            manifest,
            path,
            encoder=encoder.name,
            fingerprint=encoder.fingerprint(),
            dim=encoder.dim,
            modality=encoder.modality,
            precision=getattr(encoder, "precision", "fp32"),
        )
        old_ids = json.loads((path / IDS).read_text())
        if old_ids != ids or manifest["shard_size"] != shard_size or manifest["length"] != encoder.length:
            raise InputError(
                f"feature cache {path} holds other items or another shard size / token length; "
                "pass a new --out folder (or delete this one) to encode this dataset"
            )
    else:
        if path.exists() and any(path.iterdir()):
            raise InputError(f"{path} exists and is not a feature cache; choose an empty or new --out folder")
        manifest = _new_manifest(encoder, len(ids), shard_size)
        path.mkdir(parents=True, exist_ok=True)
        write_text(path / IDS, json.dumps(ids))
        write_text(path / MANIFEST, json.dumps(manifest, indent=1))
    for stale in path.glob(".shard-*.tmp"):  # staging folders of a run that was killed mid-shard
        shutil.rmtree(stale, ignore_errors=True)
    done = {s["start"] for s in manifest["shards"]}
    starts = range(0, len(ids), shard_size)
    todo = [s for s in starts if s not in done]
    if ray is not None and todo:
        encode_on_ray(path, manifest, todo, len(ids), load, ray, batch_size, loader_workers)
        todo = []
    with progress_bar(len(ids), desc or f"encode {encoder.modality} ({encoder.name})", unit="item") as bar:
        if manifest["shards"]:  # say so when resuming: these items are not encoded again
            bar.update(sum(s["count"] for s in manifest["shards"]))
            bar.set_postfix_str(f"resumed: {len(manifest['shards'])} shards already done", refresh=True)
        for start in todo:
            stop = min(start + shard_size, len(ids))
            arrays = encode_rows(encoder, load, range(start, stop), batch_size, loader_workers, bar.update)
            _save_shard(path, manifest, start, arrays)
    manifest["complete"] = True
    write_text(path / MANIFEST, json.dumps(manifest, indent=1))
    return load_features(path)


def _save_shard(path: Path, manifest: dict[str, Any], start: int, arrays: Sequence[np.ndarray]) -> None:
    """Write one finished shard (tokens, mask, pooled) atomically, then list it in the manifest."""
    name = f"shard-{start // manifest['shard_size']:05d}"
    with atomic_output_dir(path / name) as staging:
        for key, dtype, a in zip(
            ("tokens", "mask", "pooled"), (np.float16, bool, np.float32), arrays, strict=True
        ):
            np.save(staging / f"{key}.npy", np.asarray(a).astype(dtype))
    count = len(arrays[0])
    manifest["shards"] = sorted(
        [
            *[s for s in manifest["shards"] if s["start"] != start],
            {"name": name, "start": start, "count": count},
        ],
        key=lambda s: s["start"],
    )
    write_text(path / MANIFEST, json.dumps(manifest, indent=1))


class _Items(torch.utils.data.Dataset):
    """Items ``load(i)`` of some rows, each through the encoder's ``preprocess`` when it has one."""

    def __init__(self, load: Callable[[int], Any], rows: Sequence[int], prepare: Callable[[Any], Any] | None):
        self.load, self.rows, self.prepare = load, rows, prepare

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        item = self.load(self.rows[i])
        return item if self.prepare is None else self.prepare(item)


def _collate(items: list[Any]) -> Any:
    if not items or not torch.is_tensor(items[0]):
        return items
    batch = torch.stack(items)
    # image batches in the layout image_tensor gives (a permuted NHWC array): the same conv kernels
    # run, so the features are bit-identical to encoding the PIL images directly
    return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch


def encode_rows(
    encoder: CachableEncoder,
    load: Callable[[int], Any],
    rows: Sequence[int],
    batch_size: int = 32,
    loader_workers: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode items ``load(r)`` for ``rows``: (tokens N x L x D, mask N x L, pooled N x D), padding zeroed.

    Encoders with ``preprocess(item) -> tensor`` and ``encode_tensors(batch)`` (the image
    encoders) split the work: decoding and resizing happen in ``loader_workers`` DataLoader
    processes (0: here) while this process runs the network on the previous batch. Texts are
    encoded shortest first (:func:`by_length`) and put back in order.
    """
    order = None
    if encoder.modality == "text":
        items = [load(r) for r in rows]
        if all(isinstance(t, str) for t in items):
            order = by_length(items)
            load, rows = items.__getitem__, order
    prepare = getattr(encoder, "preprocess", None)
    dataset = _Items(load, rows, prepare)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=loader_workers,
        collate_fn=_collate,
        prefetch_factor=2 if loader_workers else None,
    )
    chunks = []
    for batch in loader:
        chunks.append(_encode_checked(encoder, batch))
        if progress is not None:
            progress(len(batch))
    if not chunks:
        return (
            np.zeros((0, encoder.length, encoder.dim), np.float32),
            np.zeros((0, encoder.length), bool),
            np.zeros((0, encoder.dim), np.float32),
        )
    arrays = [np.concatenate([c[k] for c in chunks]) for k in range(3)]
    if order is not None:  # back to the rows' order
        arrays = [a[np.argsort(order)] for a in arrays]
    return tuple(arrays)  # type: ignore[return-value]


def by_length(texts: Sequence[str]) -> np.ndarray:
    """Positions of ``texts`` from shortest to longest (stable).

    A batch is padded to its longest text, so batching texts of similar length wastes less
    of the network on padding (on Flickr8k captions, 1.5x faster; the features change by
    float rounding only, as padding is masked).
    """
    return np.argsort([len(t) for t in texts], kind="stable")


def _encode_checked(encoder: CachableEncoder, batch: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the encoder, check its shapes against what it declared (B x L x D), zero the padding."""
    with torch.inference_mode():
        out = encoder.encode_tensors(batch) if torch.is_tensor(batch) else encoder.encode(batch)
    want = (len(batch), encoder.length, encoder.dim)
    if (
        tuple(out.tokens.shape) != want
        or tuple(out.mask.shape) != want[:2]
        or tuple(out.pooled.shape) != (want[0], want[2])
    ):
        raise RuntimeError(
            f"encoder {encoder.name} returned tokens {tuple(out.tokens.shape)}, mask "
            f"{tuple(out.mask.shape)}, pooled {tuple(out.pooled.shape)}; expected {want}"
        )
    tokens = out.tokens.float().masked_fill(~out.mask.bool()[..., None], 0.0)
    return tokens.cpu().numpy(), out.mask.bool().cpu().numpy(), out.pooled.float().cpu().numpy()


@dataclass
class RayPlan:
    """Encode a cache's shards on Ray (:mod:`triptych.core.batch`): who builds the encoder, and where.

    ``make_encoder`` is a picklable zero-argument callable (e.g. ``functools.partial`` of
    :func:`~triptych.m3jepa.encoders.make_encoder`): each worker process builds its own encoder once.
    """

    make_encoder: Callable[[], CachableEncoder]
    workers: int | None = None  # None: as many as the CPUs hold
    ray_address: str | None = None
    threads_per_worker: int = 1


class ShardEncoder:
    """A Ray shard worker: encodes rows [start, stop) of a shard; the arrays travel as float16/bool bytes."""

    def __init__(
        self,
        make_encoder: Callable[[], CachableEncoder],
        load: Callable[[int], Any],
        batch_size: int,
        loader_workers: int,
    ) -> None:
        self.encoder, self.load = make_encoder(), load
        self.batch_size, self.loader_workers = batch_size, loader_workers

    def __call__(self, shard: dict[str, Any]) -> Any:
        import pandas as pd

        tokens, mask, pooled = encode_rows(
            self.encoder,
            self.load,
            range(shard["start"], shard["stop"]),
            self.batch_size,
            self.loader_workers,
        )
        return pd.DataFrame(
            {
                "row": np.arange(shard["start"], shard["stop"]),
                "tokens": [t.astype(np.float16).tobytes() for t in tokens],
                "mask": [m.tobytes() for m in mask],
                "pooled": [p.astype(np.float32).tobytes() for p in pooled],
            }
        )


def encode_on_ray(
    path: Path,
    manifest: dict[str, Any],
    todo: Sequence[int],
    count: int,
    load: Callable[[int], Any],
    plan: RayPlan,
    batch_size: int,
    loader_workers: int = 0,
) -> None:
    """Encode the shards starting at ``todo`` on Ray workers; each finished shard joins the cache at once.

    Resumable twice over: shards the manifest lists are not handed out, and a shard a worker
    finished (``<cache>/.ray/shards/<name>.parquet``) is not encoded again if the run dies
    before it joined the cache.
    """
    import functools

    import pandas as pd

    from triptych.core.batch import run_shards

    size, length, dim = manifest["shard_size"], manifest["length"], manifest["dim"]
    shards = [
        {"id": f"shard-{start // size:05d}", "start": int(start), "stop": int(min(start + size, count))}
        for start in todo
    ]
    results = run_shards(
        functools.partial(ShardEncoder, plan.make_encoder, load, batch_size, loader_workers),
        shards,
        path / ".ray",
        workers=plan.workers,
        ray_address=plan.ray_address,
        progress_desc=f"encode {manifest['modality']} ({manifest['encoder']}) on Ray",
        threads_per_worker=plan.threads_per_worker,
    )
    for shard, result in zip(shards, results, strict=True):
        table = pd.read_parquet(result.path)
        n = len(table)
        arrays = (
            np.frombuffer(b"".join(table["tokens"]), np.float16).reshape(n, length, dim),
            np.frombuffer(b"".join(table["mask"]), bool).reshape(n, length),
            np.frombuffer(b"".join(table["pooled"]), np.float32).reshape(n, dim),
        )
        _save_shard(path, manifest, shard["start"], arrays)
        result.path.unlink()
    shutil.rmtree(path / ".ray", ignore_errors=True)


DATASET = "dataset.json"


@dataclass
class PairedCache:
    """An encoded image-caption dataset: ``<root>/dataset.json`` + ``<root>/image/`` + ``<root>/text/``.

    ``image`` rows follow ``data.images`` and ``text`` rows follow ``data.captions``, so
    ``data.caption_image[j]`` is the image row of caption row ``j`` in both. For an
    audio-caption set, ``image`` holds the clips' features (folder ``<root>/audio/``) and
    :attr:`modality` is ``"audio"``.
    """

    data: Any  # triptych.m3jepa.data.ImageCaptions
    image: Features
    text: Features

    @property
    def modality(self) -> str:
        """The non-text modality: "image", or "audio" for an audio-caption set."""
        return getattr(self.data, "modality", "image")

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of split ``name``: image rows, caption rows, and each caption's image as an index into the first."""
        image_rows = self.image.index_of(self.data.splits[name]) if name in self.data.splits else None
        if image_rows is None:
            raise InputError(
                f"cache {self.image.path.parent}: no split {name!r}; it has {sorted(self.data.splits)}"
            )
        local = np.full(len(self.data.images), -1, dtype=np.int64)
        local[image_rows] = np.arange(len(image_rows))
        caption_rows = np.flatnonzero(local[self.data.caption_image] >= 0)
        return image_rows, caption_rows, local[self.data.caption_image[caption_rows]]


def encode_dataset(
    data: Any,
    out: str | os.PathLike,
    encoders: Sequence[CachableEncoder],
    *,
    shard_size: int = 512,
    batch_size: int = 8,
    text_batch_size: int = 128,
    loader_workers: int = 0,
    ray: dict[str, RayPlan] | None = None,
) -> Path:
    """Encode an ImageCaptions dataset into ``out`` (one cache per encoder's modality), resumably.

    ``batch_size`` images (or clips) and ``text_batch_size`` captions per encoder call (on a
    2-core CPU, EfficientNet-Lite0 is fastest with 8 images a call, whose activations stay in
    cache, and MiniLM with 128 length-sorted captions); ``loader_workers``:
    DataLoader processes decoding images; ``ray``: per modality, a :class:`RayPlan` to encode
    that modality's shards on Ray workers.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = data.to_json()
    if (out / DATASET).is_file() and json.loads((out / DATASET).read_text()) != record:
        raise InputError(f"{out} already holds the cache of another dataset; pass a new --out folder")
    write_text(out / DATASET, json.dumps(record))
    media = getattr(data, "modality", "image")
    for encoder in encoders:
        if encoder.modality == media:
            write_features(
                out / media,
                data.images,
                data.load_item,
                encoder,
                shard_size=shard_size,
                batch_size=batch_size,
                loader_workers=loader_workers,
                ray=(ray or {}).get(media),
            )
        elif encoder.modality == "text":
            write_features(
                out / "text",
                data.caption_ids,
                data.captions.__getitem__,
                encoder,
                shard_size=shard_size,
                batch_size=text_batch_size,
                ray=(ray or {}).get("text"),
            )
        else:
            raise InputError(
                f"encoder {encoder.name} is a {encoder.modality} encoder; a {media}-caption dataset "
                f"needs {media} and text encoders"
            )
    return out


def load_cache(
    root: str | os.PathLike,
    *,
    image_dim: int | None = None,
    text_dim: int | None = None,
    image_encoder: str | None = None,
    text_encoder: str | None = None,
) -> PairedCache:
    """Read a cache written by :func:`encode_dataset` (``triptych m3jepa encode``), checking encoders/dims."""
    from triptych.m3jepa.data import ImageCaptions

    root = Path(root)
    if not (root / DATASET).is_file():
        raise InputError(
            f"{root} is not an encoded dataset (no {DATASET}); create it with `triptych m3jepa encode`"
        )
    data = ImageCaptions.from_json(json.loads((root / DATASET).read_text()))
    image = load_features(root / data.modality, encoder=image_encoder, dim=image_dim, modality=data.modality)
    text = load_features(root / "text", encoder=text_encoder, dim=text_dim, modality="text")
    if image.ids != data.images or text.ids != data.caption_ids:
        raise InputError(f"{root}: the image/text caches do not match {DATASET}; encode the dataset again")
    return PairedCache(data, image, text)

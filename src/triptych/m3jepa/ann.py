"""Approximate nearest-neighbour search over a collection of aligned vectors (FAISS, IVF on disk).

A search ranks items i by the querybank-normalised fused score (see :mod:`triptych.m3jepa.search`)

    s'(q, i) = (q · K_i) / c - b_i,                      c = 2 for fused scores, else 1

where K_i is the item's index-side vector (its key, or [key, own prediction] when fused, an
ensemble's members concatenated) and b_i its QB-norm bias. Appending one coordinate folds
the bias and the scale into a single inner product,

    x_i = [K_i / c, -b_i],   y = [q, 1]   =>   y · x_i = s'(q, i),                  (folded vectors)

so any maximum-inner-product index ranks by exactly the score the exact search uses.

The index is an inverted file (IVF: k-means cells on the folded vectors, inner-product
metric; each query visits the ``nprobe`` cells nearest to it) whose lists live on disk
(``OnDiskInvertedLists``) and are memory-mapped when searched, so the collection need not
fit in RAM. It is built by streaming: the coarse quantiser is trained on a sample, then
blocks of vectors are added to empty copies, written, and merged into one lists file
(``faiss.contrib.ondisk.merge_ondisk``), so building holds one block at a time. Vectors are
kept exactly (``Flat``) or as 8-bit scalars (``SQ8``, 4× smaller, for memory).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.errors import InputError

INDEX_FILE = "ann_{name}.faiss"
LISTS_FILE = "ann_{name}.ivfdata"
META_FILE = "ann_{name}.json"


@dataclass
class AnnConfig:
    """How the IVF index is built and searched (nlist 0: about 4·sqrt(N) cells)."""

    nlist: int = 0
    nprobe: int = 64
    storage: str = "Flat"  # "Flat" (exact vectors) or "SQ8" (8-bit scalar quantised)
    train_size: int = 100_000  # vectors the k-means cells are trained on
    block_size: int = 100_000  # vectors added (and held in memory) at a time

    def cells(self, count: int) -> int:
        """The number of IVF cells for ``count`` vectors: as configured, else ~4·sqrt(N), at least 1."""
        n = self.nlist or int(4 * np.sqrt(max(count, 1)))
        return int(max(1, min(n, count // 39 or 1)))  # faiss wants ~39 training points per cell


def fold(keys: np.ndarray, bias: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    """x = [K / c, -b] (float32): an inner product with [q, 1] is the ranking score s' = q·K/c - b."""
    keys = np.asarray(keys, dtype=np.float32) / np.float32(scale)
    b = np.zeros(len(keys), np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([keys, -b[:, None]], 1))


def fold_queries(queries: np.ndarray) -> np.ndarray:
    """y = [q, 1]: the query side of the folded inner product."""
    queries = np.asarray(queries, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([queries, np.ones((len(queries), 1), np.float32)], 1))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # an optional dependency: a clear message, not a traceback
        raise InputError("approximate search needs FAISS: pip install 'triptych[m3jepa]' (faiss-cpu), "
                         "or search with --exact") from exc
    return faiss


def build_ivf(train: np.ndarray, blocks: Iterable[np.ndarray], count: int, folder: str | os.PathLike, name: str,
              config: AnnConfig | None = None, progress: Any = None) -> dict[str, Any]:
    """Build an on-disk IVF index over ``count`` folded vectors arriving in ``blocks``; returns its record.

    ``train`` is a sample of the same vectors (at most ``config.train_size`` are used) for the
    k-means cells; row r of the concatenated blocks gets id r. Writes ``ann_<name>.faiss``
    (quantiser and list offsets), ``ann_<name>.ivfdata`` (the lists, memory-mapped when
    searched) and ``ann_<name>.json`` into ``folder``.
    """
    faiss = _faiss()
    from faiss.contrib.ondisk import merge_ondisk

    cfg = config or AnnConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = np.ascontiguousarray(np.asarray(train, dtype=np.float32)[: cfg.train_size])
    dim, nlist = train.shape[1], cfg.cells(count)
    start = time.perf_counter()
    empty = faiss.index_factory(dim, f"IVF{nlist},{cfg.storage}", faiss.METRIC_INNER_PRODUCT)
    empty.train(train)
    trained_s = time.perf_counter() - start
    parts, added, tmp = [], 0, folder / f".ann_{name}_blocks"
    tmp.mkdir(exist_ok=True)
    try:
        for block in blocks:  # one block in memory at a time: add it to an empty copy, write it out
            block = np.ascontiguousarray(block, dtype=np.float32)
            if block.shape[1] != dim:
                raise InputError(f"ANN block of width {block.shape[1]} does not match the trained {dim}")
            part = faiss.clone_index(empty)
            part.add_with_ids(block, np.arange(added, added + len(block), dtype=np.int64))
            parts.append(str(tmp / f"block{len(parts):05d}.faiss"))
            faiss.write_index(part, parts[-1])
            added += len(block)
            del part
            if progress is not None:
                progress(len(block))
        if added != count:
            raise InputError(f"the ANN build expected {count} vectors and received {added}")
        index = faiss.clone_index(empty)
        # merge the blocks' lists into one file; the index keeps only its basename (relocatable)
        lists = folder / LISTS_FILE.format(name=name)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            merge_ondisk(index, parts, lists.name)
        finally:
            os.chdir(cwd)
        index.ntotal = added
        faiss.write_index(index, str(folder / INDEX_FILE.format(name=name)))
    finally:
        for p in parts:
            Path(p).unlink(missing_ok=True)
        tmp.rmdir()
    record = {"kind": f"IVF{nlist},{cfg.storage}", "metric": "inner_product", "count": count, "dim": dim,
              "config": {**asdict(cfg), "nlist": nlist}, "train_seconds": trained_s,
              "build_seconds": time.perf_counter() - start}
    (folder / META_FILE.format(name=name)).write_text(json.dumps(record, indent=1))
    return record


class AnnIndex:
    """An on-disk IVF index, memory-mapped: ``search(queries, k)`` -> (scores s', rows), as faiss gives them."""

    def __init__(self, folder: str | os.PathLike, name: str, nprobe: int | None = None) -> None:
        faiss = _faiss()
        folder = Path(folder)
        path = folder / INDEX_FILE.format(name=name)
        if not path.is_file():
            raise InputError(f"{folder} has no approximate index for {name}; rebuild it with `triptych m3jepa "
                             "index`, or search with --exact")
        self.record = json.loads((folder / META_FILE.format(name=name)).read_text())
        # the lists file is found next to the index file and memory-mapped, never read whole
        self.index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        self.nprobe = int(nprobe or self.record["config"]["nprobe"])

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, folded_queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product with folded queries [q, 1]: (Q x k scores, Q x k rows, -1 = none)."""
        faiss = _faiss()
        queries = np.ascontiguousarray(folded_queries, dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise InputError(f"query vectors ({queries.shape[1] - 1}-d) do not match the approximate index "
                             f"({self.dim - 1}-d); search with the checkpoints the index was built with")
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe))
        return self.index.search(queries, int(min(k, len(self))), params=params)


def blocks_of(array: Any, size: int) -> Iterator[np.ndarray]:
    """Consecutive row blocks of an array-like (e.g. a memory-mapped .npy) as float32 arrays."""
    for start in range(0, len(array), size):
        yield np.asarray(array[start:start + size], dtype=np.float32)

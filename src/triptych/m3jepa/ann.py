"""Approximate nearest-neighbour search over a collection of aligned vectors (FAISS, IVF on disk).

A search ranks items i by the querybank-normalised fused score (see :mod:`triptych.m3jepa.search`)

    s'(q, i) = (q · K_i) / c - b_i,                      c = 2 for fused scores, else 1

where K_i is the item's index-side vector (its key, or [key, own prediction] when fused, an
ensemble's members concatenated) and b_i its QB-norm bias. Appending one coordinate folds
the bias and the scale into a single inner product,

    x_i = [K_i / c, -b_i],   y = [q, 1]   =>   y · x_i = s'(q, i),                  (folded vectors)

so any maximum-inner-product index ranks by exactly the score the exact search uses. Zero
columns pad the folded vectors to a multiple of 32 dims (product quantisers need it); they
change no inner product.

The index is an inverted file (IVF: k-means cells on the folded vectors, inner-product
metric; each query visits the ``nprobe`` cells nearest to it). Two storages:

- ``PQ`` (default): each vector as a 4-bit product-quantised code of dim/8 bytes, scanned
  with SIMD look-up tables (FAISS "fast scan"), so a query can visit many cells; the best
  ``rerank`` candidates are then re-scored exactly from the full vectors, which stay on disk
  and are memory-mapped (only the candidates' rows are read). The codes of 10⁶ vectors take
  ~36 MB of RAM; the index is built by adding blocks of vectors, one block in memory at a time.
- ``Flat`` / ``SQ8``: exact (or 8-bit) vectors in inverted lists that live on disk
  (``OnDiskInvertedLists``) and are memory-mapped when searched; blocks are added to empty
  copies of the trained index, written, and merged into one lists file
  (``faiss.contrib.ondisk.merge_ondisk``). Exact scores, no re-ranking, but each visited
  vector costs a full dot product.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
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
    storage: str = "PQ"  # "PQ" (4-bit fast-scan codes + exact re-ranking), "Flat" or "SQ8" (lists on disk)
    rerank: int = 200  # PQ: candidates re-scored exactly from the memory-mapped vectors
    train_size: int = 100_000  # vectors the k-means cells (and PQ codebooks) are trained on
    block_size: int = 100_000  # vectors added (and held in memory) at a time

    def cells(self, count: int) -> int:
        """The number of IVF cells for ``count`` vectors: as configured, else ~4·sqrt(N), at least 1."""
        n = self.nlist or int(4 * np.sqrt(max(count, 1)))
        return int(max(1, min(n, count // 39 or 1)))  # faiss wants ~39 training points per cell


PAD = 32  # folded widths are padded with zeros to a multiple of this


def _padded(parts: list[np.ndarray]) -> np.ndarray:
    width = sum(p.shape[1] for p in parts)
    zeros = np.zeros((len(parts[0]), -width % PAD), np.float32)
    return np.ascontiguousarray(np.concatenate([*parts, zeros], 1), dtype=np.float32)


def fold(keys: np.ndarray, bias: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    """x = [K / c, -b, 0...] (float32): an inner product with [q, 1, 0...] is the ranking score s' = q·K/c - b."""
    keys = np.asarray(keys, dtype=np.float32) / np.float32(scale)
    b = np.zeros(len(keys), np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
    return _padded([keys, -b[:, None]])


def fold_queries(queries: np.ndarray) -> np.ndarray:
    """y = [q, 1, 0...]: the query side of the folded inner product."""
    queries = np.asarray(queries, dtype=np.float32)
    return _padded([queries, np.ones((len(queries), 1), np.float32)])


def factory_string(dim: int, nlist: int, storage: str) -> str:
    """The FAISS index_factory string: IVF cells and the storage of the vectors."""
    if storage == "PQ":
        # 4 dims per 4-bit sub-quantiser (dim/8 bytes a vector); an HNSW graph over the cell centroids
        # assigns each vector to its cell without scoring every centroid
        return f"IVF{nlist}_HNSW32,PQ{dim // 4}x4fs"
    if storage in ("Flat", "SQ8"):
        return f"IVF{nlist},{storage}"
    raise InputError(f"ANN storage {storage!r}: choose PQ, Flat or SQ8")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # an optional dependency: a clear message, not a traceback
        raise InputError(
            "approximate search needs FAISS: pip install 'triptych[m3jepa]' (faiss-cpu), "
            "or search with --exact"
        ) from exc
    return faiss


def build_ivf(
    train: np.ndarray,
    blocks: Iterable[np.ndarray],
    count: int,
    folder: str | os.PathLike,
    name: str,
    config: AnnConfig | None = None,
    progress: Any = None,
) -> dict[str, Any]:
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
    kind = factory_string(dim, nlist, cfg.storage)
    start = time.perf_counter()
    empty = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    empty.cp.niter = 10  # k-means iterations: cells need not be perfect, the probes cover the rest
    empty.train(train)
    trained_s = time.perf_counter() - start
    if cfg.storage == "PQ":  # compact codes: the index stays small in RAM; blocks stream in
        added = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            empty.add_with_ids(block, np.arange(added, added + len(block), dtype=np.int64))
            added += len(block)
            if progress is not None:
                progress(len(block))
        if added != count:
            raise InputError(f"the ANN build expected {count} vectors and received {added}")
        faiss.write_index(empty, str(folder / INDEX_FILE.format(name=name)))
        return _record(folder, name, kind, count, dim, cfg, nlist, trained_s, start)
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
    return _record(folder, name, kind, count, dim, cfg, nlist, trained_s, start)


def _record(
    folder: Path,
    name: str,
    kind: str,
    count: int,
    dim: int,
    cfg: AnnConfig,
    nlist: int,
    trained_s: float,
    start: float,
) -> dict[str, Any]:
    record = {
        "kind": kind,
        "metric": "inner_product",
        "count": count,
        "dim": dim,
        "config": {**asdict(cfg), "nlist": nlist},
        "train_seconds": trained_s,
        "build_seconds": time.perf_counter() - start,
    }
    (folder / META_FILE.format(name=name)).write_text(json.dumps(record, indent=1))
    return record


class AnnIndex:
    """An on-disk IVF index, memory-mapped: ``search(queries, k)`` -> (scores s', rows), as faiss gives them."""

    def __init__(self, folder: str | os.PathLike, name: str, nprobe: int | None = None) -> None:
        faiss = _faiss()
        folder = Path(folder)
        path = folder / INDEX_FILE.format(name=name)
        if not path.is_file():
            raise InputError(
                f"{folder} has no approximate index for {name}; rebuild it with `triptych m3jepa "
                "index`, or search with --exact"
            )
        self.record = json.loads((folder / META_FILE.format(name=name)).read_text())
        config = self.record["config"]
        if config["storage"] == "PQ":  # codes in RAM (dim/8 bytes a vector); full vectors stay memory-mapped
            self.index = faiss.read_index(str(path))
        else:  # the lists file is found next to the index file and memory-mapped, never read whole
            self.index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        self.nprobe = int(nprobe or config["nprobe"])
        self.rerank = int(config.get("rerank", 0)) if config["storage"] == "PQ" else 0

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(
        self,
        folded_queries: np.ndarray,
        k: int,
        nprobe: int | None = None,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        rerank: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product with folded queries: (Q x k scores, Q x k rows; -1 = none found).

        With product-quantised codes, the best ``rerank`` candidates are re-scored exactly with
        ``vectors(rows)`` (the folded vectors of those rows, e.g. from a memory map) and the
        scores returned are exact; without ``vectors`` they are the codes' approximations.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(folded_queries, dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise InputError(
                f"query vectors ({queries.shape[1]}-d folded) do not match the approximate index "
                f"({self.dim}-d); search with the checkpoints the index was built with"
            )
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe))
        k = int(min(k, len(self)))
        depth = max(k, self.rerank if rerank is None else rerank) if vectors is not None else k
        scores, rows = self.index.search(queries, int(min(depth, len(self))), params=params)
        if vectors is None or depth == 0:
            return scores[:, :k], rows[:, :k]
        out_s, out_r = (
            np.full((len(queries), k), -np.inf, np.float32),
            np.full((len(queries), k), -1, np.int64),
        )
        for i, (query, cand) in enumerate(zip(queries, rows, strict=True)):
            cand = np.sort(cand[cand >= 0])  # sorted rows: sequential reads of the memory map
            exact = vectors(cand) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            out_s[i, : len(best)], out_r[i, : len(best)] = exact[best], cand[best]
        return out_s, out_r


def blocks_of(array: Any, size: int) -> Iterator[np.ndarray]:
    """Consecutive row blocks of an array-like (e.g. a memory-mapped .npy) as float32 arrays."""
    for start in range(0, len(array), size):
        yield np.asarray(array[start : start + size], dtype=np.float32)

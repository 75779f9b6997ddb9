"""Approximate nearest-neighbour search over a collection of aligned vectors (FAISS, memory-mapped).

A search ranks items i by the querybank-normalised fused score (see :mod:`triptych.m3jepa.search`)

    s'(q, i) = (q · K_i) / c - b_i,                      c = 2 for fused scores, else 1

where K_i is the item's index-side vector (its key, or [key, own prediction] when fused, an
ensemble's members concatenated) and b_i its QB-norm bias. Appending one coordinate folds
the bias and the scale into a single inner product,

    x_i = [K_i / c, -b_i],   y = [q, 1]   =>   y · x_i = s'(q, i),                  (folded vectors)

so a maximum-inner-product search ranks by exactly the score the exact search uses. Zero
columns pad the folded vectors to a multiple of 32 dims (product quantisers need it), and
one of them is always left free for the reduction of inner products to distances
(Bachrach et al., RecSys 2014):

    x'_i = [x_i, sqrt(M² - |x_i|²)],   y' = [y, 0]   =>   |y' - x'_i|² = |y|² + M² - 2 s'(q, i)   (M ≥ max |x_i|)

The nearest vector in Euclidean distance is then the best-scoring one, and graphs and k-means
cells, which are built for distances, work as they do on any collection (on raw inner
products, vectors with small biases are everybody's neighbour and the cells are lopsided).

Two index kinds (:class:`AnnConfig`):

- ``HNSW``: a navigable small-world graph (Malkov & Yashunin, 2018) over the
  transformed vectors; each query walks it keeping ``ef_search`` candidates. ``storage``
  ``Flat`` keeps exact vectors: the file is memory-mapped (``IO_FLAG_MMAP_IFC``), only the
  graph (~2·M ids a vector) is read into RAM; ``SQ8`` keeps 8-bit codes in RAM (dim bytes a
  vector) and re-scores the candidates exactly from the memory-mapped folded vectors.
- ``IVF`` (default): k-means cells; each query visits the ``nprobe`` nearest cells. ``storage``
  ``SQ8`` (default) keeps 8-bit scalar-quantised vectors (dim bytes a vector) and ``Flat`` exact
  ones, in inverted lists on disk (``OnDiskInvertedLists``), memory-mapped when searched; ``PQ``
  keeps 4-bit product-quantised codes in RAM (dim/8 bytes a vector, SIMD "fast scan", optionally
  after an ``opq`` rotation). Codes (SQ8, PQ) are followed by re-scoring the best ``rerank``
  candidates exactly from the memory-mapped vectors. SQ8 is the default: on 10⁶ items gathered
  in tight clusters (real Flickr8k keys plus a smoothed bootstrap around them) 4-bit codes cannot
  order near-copies, and PQ needed 2,000 re-scored candidates to reach the Recall@10 that SQ8
  reaches with 50 (benchmarks/results/m3jepa_search_scale).

Either is built from blocks of vectors (one block in memory at a time; HNSW's storage grows
with the collection: 4·dim bytes a vector for Flat, dim for SQ8, plus the graph).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.errors import InputError

INDEX_FILE = "ann_{name}.faiss"
LISTS_FILE = "ann_{name}.ivfdata"
META_FILE = "ann_{name}.json"
KINDS = ("HNSW", "IVF")
STORAGES = {"HNSW": ("Flat", "SQ8"), "IVF": ("SQ8", "Flat", "PQ")}
# re-scoring depth by storage: 8-bit codes order candidates almost exactly, 4-bit PQ codes do not
RERANK = {"SQ8": 50, "PQ": 200}


@dataclass
class AnnConfig:
    """How the approximate index is built and searched (see the module docstring for the kinds)."""

    kind: str = "IVF"  # "IVF" (k-means cells) or "HNSW" (graph)
    storage: str = "SQ8"  # IVF: SQ8 | Flat | PQ; HNSW: Flat | SQ8
    m: int = 32  # HNSW: neighbours per node (2m on the bottom layer)
    ef_construction: int = 80  # HNSW: candidates kept while linking a new node
    ef_search: int = 64  # HNSW: candidates kept while searching (more: better recall, slower)
    nlist: int = 0  # IVF cells; 0: about 4·sqrt(N)
    nprobe: int = 64  # IVF: cells a query visits
    opq: bool = False  # IVF-PQ: learn a rotation before quantising (OPQ)
    rerank: int | None = None  # SQ8 / PQ: candidates re-scored exactly; None: RERANK[storage]
    train_size: int = 100_000  # vectors the cells / quantisers are trained on
    block_size: int = 100_000  # vectors added (and held in memory) at a time

    def cells(self, count: int) -> int:
        """The number of IVF cells for ``count`` vectors: as configured, else ~4·sqrt(N), at least 1."""
        n = self.nlist or int(4 * np.sqrt(max(count, 1)))
        return int(max(1, min(n, count // 39 or 1)))  # faiss wants ~39 training points per cell

    def rerank_depth(self) -> int:
        """Candidates re-scored exactly: as configured, else the storage's default (0: exact vectors)."""
        return RERANK.get(self.storage, 0) if self.rerank is None else int(self.rerank)

    def check(self) -> AnnConfig:
        if self.kind not in KINDS:
            raise InputError(f"ANN kind {self.kind!r}: choose {' or '.join(KINDS)}")
        if self.storage not in STORAGES[self.kind]:
            raise InputError(
                f"ANN storage {self.storage!r} with {self.kind}: choose {', '.join(STORAGES[self.kind])}"
            )
        return self

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AnnConfig:
        """The config stored in an index record (records of IVF-only versions have no ``kind``)."""
        known = {f.name for f in fields(cls)}
        return cls(**{"kind": "IVF", **{k: v for k, v in record.items() if k in known}})


PAD = 32  # folded widths are padded with zeros to a multiple of this, one column left free


def _padded(parts: list[np.ndarray]) -> np.ndarray:
    width = sum(p.shape[1] for p in parts)
    zeros = np.zeros((len(parts[0]), -(width + 1) % PAD + 1), np.float32)
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


def to_distance(folded: np.ndarray, bound: float) -> np.ndarray:
    """x' = [x, sqrt(M² - |x|²)] in the last (free) column: Euclidean neighbours of [y, 0] rank by y·x."""
    x = np.array(folded, dtype=np.float32)  # a copy: the caller's block stays as it was
    x[:, -1] = np.sqrt(np.maximum(np.float32(bound) ** 2 - np.einsum("ij,ij->i", x, x), 0.0))
    return x


def factory_string(dim: int, config: AnnConfig, nlist: int = 0) -> str:
    """The FAISS index_factory string of ``config`` for ``dim``-d vectors (``nlist`` cells for IVF)."""
    if config.kind == "HNSW":
        return f"HNSW{config.m}" + (",SQ8" if config.storage == "SQ8" else ",Flat")
    if config.storage == "PQ":  # 4 dims per 4-bit sub-quantiser (dim/8 bytes a vector), SIMD fast scan
        rotate = f"OPQ{dim // 4}_{dim}," if config.opq else ""
        return f"{rotate}IVF{nlist},PQ{dim // 4}x4fs"
    return f"IVF{nlist},{config.storage}"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # an optional dependency: a clear message, not a traceback
        raise InputError(
            "approximate search needs FAISS: pip install 'triptych[m3jepa]' (faiss-cpu), "
            "or search with --exact"
        ) from exc
    return faiss


def build_ann(
    train: np.ndarray,
    blocks: Iterable[np.ndarray],
    count: int,
    folder: str | os.PathLike,
    name: str,
    config: AnnConfig | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Build an approximate index over ``count`` folded vectors arriving in ``blocks``; returns its record.

    ``train`` is a sample of the same vectors (at most ``config.train_size`` are used): it sets
    the norm bound M of the distance reduction (with a margin) and trains the cells /
    quantisers. Row r of the concatenated blocks gets id r. Writes ``ann_<name>.faiss`` (and,
    for IVF Flat/SQ8, the lists file ``ann_<name>.ivfdata``) and ``ann_<name>.json`` into ``folder``.
    """
    faiss = _faiss()
    cfg = (config or AnnConfig()).check()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = np.ascontiguousarray(np.asarray(train, dtype=np.float32)[: cfg.train_size])
    # M: the largest norm seen, with a margin; a vector above it still gets a distance, just a
    # slightly optimistic one (its exact score is restored by re-scoring)
    bound = 1.05 * float(np.sqrt(np.einsum("ij,ij->i", train, train).max()))
    train = to_distance(train, bound)
    dim, nlist = train.shape[1], (cfg.cells(count) if cfg.kind == "IVF" else 0)
    kind = factory_string(dim, cfg, nlist)
    start = time.perf_counter()
    empty = faiss.index_factory(dim, kind, faiss.METRIC_L2)
    if cfg.kind == "HNSW":
        empty.hnsw.efConstruction = cfg.ef_construction
    else:
        faiss.extract_index_ivf(empty).cp.niter = 10  # k-means iterations: the probes cover the rest
    empty.train(train)
    trained_s = time.perf_counter() - start
    stream = (to_distance(b, bound) for b in blocks)
    if cfg.kind == "HNSW" or cfg.storage == "PQ":  # compact in RAM, or a graph: blocks stream in
        added = 0
        for block in stream:
            if cfg.kind == "HNSW":  # graph ids are insertion order: row r of the blocks is id r
                empty.add(block)
            else:
                empty.add_with_ids(block, np.arange(added, added + len(block), dtype=np.int64))
            added += len(block)
            if progress is not None:
                progress(len(block))
    else:
        added = _add_on_disk(empty, stream, folder, name, dim, progress)
    if added != count:
        raise InputError(f"the ANN build expected {count} vectors and received {added}")
    if cfg.kind == "HNSW" or cfg.storage == "PQ":
        faiss.write_index(empty, str(folder / INDEX_FILE.format(name=name)))
    record = {
        "kind": kind,
        "metric": "l2_of_inner_product",
        "bound": bound,
        "count": count,
        "dim": dim,
        "config": {**asdict(cfg), "nlist": nlist},
        "train_seconds": trained_s,
        "build_seconds": time.perf_counter() - start,
    }
    (folder / META_FILE.format(name=name)).write_text(json.dumps(record, indent=1))
    return record


def _add_on_disk(
    empty: Any, blocks: Iterable[np.ndarray], folder: Path, name: str, dim: int, progress: Any
) -> int:
    """IVF Flat/SQ8: add each block to an empty copy, write it, then merge the lists into one on-disk file."""
    faiss = _faiss()
    from faiss.contrib.ondisk import merge_ondisk

    folder = folder.resolve()  # the merge runs inside the folder: the block paths must not be relative
    parts, added, tmp = [], 0, folder / f".ann_{name}_blocks"
    tmp.mkdir(exist_ok=True)
    try:
        for block in blocks:  # one block in memory at a time
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
    return added


build_ivf = build_ann  # the name of earlier versions


class AnnIndex:
    """An on-disk approximate index, memory-mapped: ``search(queries, k)`` -> (scores s', rows)."""

    def __init__(
        self, folder: str | os.PathLike, name: str, nprobe: int | None = None, ef_search: int | None = None
    ) -> None:
        faiss = _faiss()
        folder = Path(folder)
        path = folder / INDEX_FILE.format(name=name)
        if not path.is_file():
            raise InputError(
                f"{folder} has no approximate index for {name}; rebuild it with `triptych m3jepa "
                "index`, or search with --exact"
            )
        self.record = json.loads((folder / META_FILE.format(name=name)).read_text())
        self.config = AnnConfig.from_record(self.record["config"])
        # distances of the reduction, or (records of earlier versions) raw inner products
        self.bound = self.record.get("bound")
        if self.config.kind == "IVF" and self.config.storage != "PQ":  # lists next to the index, mapped
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
        else:  # HNSW Flat: the vectors are memory-mapped, the graph (and PQ/SQ8 codes) read into RAM
            flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
        self.index = faiss.read_index(str(path), flags)
        self.nprobe = int(nprobe or self.config.nprobe)
        self.ef_search = int(ef_search or self.config.ef_search)
        # exact vectors need no re-scoring; codes do
        self.rerank = self.config.rerank_depth()

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _set(self, nprobe: int | None, ef_search: int | None) -> None:
        faiss = _faiss()
        if self.config.kind == "HNSW":
            faiss.downcast_index(self.index).hnsw.efSearch = int(ef_search or self.ef_search)
        else:
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe or self.nprobe)

    def search(
        self,
        folded_queries: np.ndarray,
        k: int,
        nprobe: int | None = None,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        rerank: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by the folded inner product: (Q x k scores, Q x k rows; -1 = none found).

        The best ``rerank`` candidates (at least k) are re-scored exactly with ``vectors(rows)``
        (the folded vectors of those rows, e.g. from a memory map) when it is given; otherwise
        the scores are recovered from the index's distances (approximate for codes).
        """
        queries = np.ascontiguousarray(folded_queries, dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise InputError(
                f"query vectors ({queries.shape[1]}-d folded) do not match the approximate index "
                f"({self.dim}-d); search with the checkpoints the index was built with"
            )
        self._set(nprobe, ef_search)
        k = int(min(k, len(self)))
        depth = max(k, self.rerank if rerank is None else rerank) if vectors is not None else k
        if self.config.kind == "HNSW":  # the walk keeps ef candidates: at least the depth asked for
            faiss = _faiss()
            hnsw = faiss.downcast_index(self.index).hnsw
            hnsw.efSearch = max(int(hnsw.efSearch), depth)
        dist, rows = self.index.search(queries, int(min(depth, len(self))))
        if self.bound is None:  # an index of raw inner products (earlier versions)
            scores = dist
        else:  # |y - x'|² = |y|² + M² - 2 y·x
            norms = np.einsum("ij,ij->i", queries, queries)[:, None]
            scores = 0.5 * (norms + np.float32(self.bound) ** 2 - dist)
        if vectors is None:
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

"""The search index on disk: aligned vectors (memory-mapped .npy), metadata in SQLite, an optional ANN index.

An index folder holds

- ``index.json``: format, the aligner checkpoints, the encoders behind the vectors, the
  querybank record and the approximate indexes built (small: no per-item lists);
- ``metadata.sqlite``: tables ``image(row, path)`` and ``caption(row, caption, image)``, read
  row by row when hits are shown, so a collection of 10⁶ items is never loaded whole;
- ``image_keys.npy`` (N x P) and, when captions were indexed, ``text_keys.npy`` (M x P),
  ``image_queries.npy``, ``text_queries.npy`` (each item's own prediction of the other
  modality, for fused scores), ``image_bias.npy`` / ``text_bias.npy`` (QB-norm) and
  ``caption_image.npy``; all memory-mapped on load (copy-on-write), so only the rows a search
  touches are read;
- ``ann_image.faiss`` + ``ann_image.ivfdata`` (and ``ann_text.*``): the approximate index of
  :mod:`triptych.m3jepa.ann` over the folded vectors [K/c, -b].

Index folders of format 1 (lists inside ``index.json``) still load.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.core.inputs import read_json
from triptych.core.io import atomic_output_dir

FORMAT = "triptych.m3jepa.index/2"
READABLE = ("triptych.m3jepa.index/1", FORMAT)
OPTIONAL_ARRAYS = ("text_keys", "image_queries", "text_queries", "image_bias", "text_bias")
METADATA = "metadata.sqlite"


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


class MetadataColumn(Sequence[str]):
    """One text column of ``metadata.sqlite`` (image paths or captions) as a read-only sequence by row."""

    def __init__(self, path: Path, table: str, column: str) -> None:
        self.path, self.table, self.column = path, table, column
        self._db: sqlite3.Connection | None = None
        self._len: int | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        return self._db

    def __len__(self) -> int:
        if self._len is None:
            self._len = int(self.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])
        return self._len

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)
        if row < 0:
            row += len(self)
        found = self.db.execute(f"SELECT {self.column} FROM {self.table} WHERE row = ?", (row,)).fetchone()
        if found is None:
            raise IndexError(f"{self.table} row {row} is not in {self.path}")
        return found[0]

    def __iter__(self) -> Iterator[str]:
        for (value,) in self.db.execute(f"SELECT {self.column} FROM {self.table} ORDER BY row"):
            yield value

    def __getstate__(self) -> dict[str, Any]:  # connections do not pickle; reopen on use
        return {**self.__dict__, "_db": None}


def write_metadata(
    path: str | os.PathLike,
    images: Iterable[str],
    captions: Iterable[str] = (),
    caption_image: Iterable[int] = (),
) -> Path:
    """Write the image paths and captions (with each caption's image row) to a SQLite file, streaming."""
    path = Path(path)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE image (row INTEGER PRIMARY KEY, path TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE caption (row INTEGER PRIMARY KEY, caption TEXT NOT NULL, image INTEGER NOT NULL)"
        )
        db.executemany("INSERT INTO image VALUES (?, ?)", ((i, str(p)) for i, p in enumerate(images)))
        db.executemany(
            "INSERT INTO caption VALUES (?, ?, ?)",
            ((j, str(c), int(i)) for j, (c, i) in enumerate(zip(captions, caption_image, strict=True))),
        )
    return path


@dataclass
class SearchIndex:
    """Image keys (N x P) for text queries and optional caption keys (M x P) for image queries."""

    images: Sequence[str]
    image_keys: torch.Tensor
    encoders: dict[str, dict[str, Any]]
    checkpoints: list[str] = field(default_factory=list)  # one per ensemble member
    captions: Sequence[str] = field(default_factory=list)
    caption_image: np.ndarray | None = None
    text_keys: torch.Tensor | None = None
    image_queries: torch.Tensor | None = None  # N x P, q_{image→text}: for fused scores
    text_queries: torch.Tensor | None = None  # M x P, q_{text→image}
    image_bias: torch.Tensor | None = None  # N, querybank bias b_i for text queries
    text_bias: torch.Tensor | None = None  # M, querybank bias for image queries
    querybank: dict[str, Any] = field(default_factory=dict)  # beta, bank sizes and source
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> approximate index record
    folder: Path | None = None  # where it was loaded from (its ANN files live there)
    _joined: dict[str, tuple[tuple[int, int], torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def fused(self) -> bool:
        return self.image_queries is not None and self.text_queries is not None

    @property
    def scale(self) -> float:
        """c in s = q·K / c: 2 for fused scores (two cosines summed), else 1."""
        return 2.0 if self.fused else 1.0

    def count(self, modality: str) -> int:
        keys = self.image_keys if modality == "image" else self.text_keys
        return 0 if keys is None else len(keys)

    def _sides(self, modality: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys = self.image_keys if modality == "image" else self.text_keys
        if keys is None:
            raise InputError(
                "this index has no captions; build it with captions (--cache, or --captions FILE) "
                "to search by image"
            )
        own = (self.image_queries if modality == "image" else self.text_queries) if self.fused else None
        return keys, own

    def key_rows(self, modality: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the index side K (keys, or [keys, own predictions] when fused)."""
        keys, own = self._sides(modality)
        return keys[start:stop] if own is None else torch.cat([keys[start:stop], own[start:stop]], 1)

    def keys(self, modality: str) -> torch.Tensor:
        """The index side of a score for ``modality`` items: keys, or [keys, own predictions] when fused."""
        keys, own = self._sides(modality)
        if own is None:
            return keys
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
            raise InputError(
                f"query vectors ({queries.shape[1]}-d) do not match the index ({keys.shape[1]}-d); "
                "search with the checkpoints the index was built with"
            )
        cosine = queries @ keys.T / self.scale
        bias = self.bias(modality)
        return (cosine if bias is None else cosine - bias), cosine

    def folded(self, modality: str, rows: Any) -> np.ndarray:
        """The folded vectors [K/c, -b] of some ``modality`` rows (a slice or indices; see :mod:`~triptych.m3jepa.ann`)."""
        from triptych.m3jepa.ann import fold

        keys, own = self._sides(modality)
        side = keys[rows] if own is None else torch.cat([keys[rows], own[rows]], 1)
        bias = self.bias(modality)
        return fold(side.numpy(), None if bias is None else bias[rows].numpy(), self.scale)

    def folded_blocks(self, modality: str, size: int = 65536) -> Iterator[np.ndarray]:
        """All folded vectors of the ``modality`` items, in row order, ``size`` rows at a time."""
        count = self.count(modality)
        for start in range(0, count, size):
            yield self.folded(modality, slice(start, min(start + size, count)))

    def save(self, out: str | os.PathLike, ann: Any = None, keep: Sequence[str] = ()) -> Path:
        """Write the index folder atomically, replacing it whole; with ``ann`` (an AnnConfig), build its ANN indexes.

        ``keep`` names entries of ``out`` that move into the new folder (``features``, the images' encoding).
        """
        with atomic_output_dir(out, keep=keep) as staging:
            np.save(staging / "image_keys.npy", self.image_keys.numpy().astype(np.float32))
            for name in OPTIONAL_ARRAYS:
                if getattr(self, name) is not None:
                    np.save(staging / f"{name}.npy", getattr(self, name).numpy().astype(np.float32))
            if self.caption_image is not None:
                np.save(staging / "caption_image.npy", np.asarray(self.caption_image, dtype=np.int64))
            write_metadata(
                staging / METADATA,
                self.images,
                self.captions,
                self.caption_image if self.caption_image is not None else (),
            )
            if ann is not None:
                self.ann = {m: build_ann(self, m, staging, ann) for m in ("image", "text") if self.count(m)}
            meta = {
                "format": FORMAT,
                "checkpoints": self.checkpoints,
                "encoders": self.encoders,
                "querybank": self.querybank,
                "ann": self.ann,
                "images": len(self.images),
                "captions": len(self.captions),
            }
            (staging / "index.json").write_text(json.dumps(meta, indent=1))
        self.folder = Path(out)
        return Path(out)


def build_ann(index: SearchIndex, modality: str, folder: Path, config: Any) -> dict[str, Any]:
    """The on-disk IVF index of one side of ``index`` (its folded vectors, streamed by blocks)."""
    from triptych.m3jepa.ann import build_ivf

    count = index.count(modality)
    # the k-means cells are trained on evenly spaced rows, not the first ones (which may be one class)
    sample = np.unique(np.linspace(0, count - 1, min(config.train_size, count)).astype(np.int64))
    return build_ivf(
        index.folded(modality, torch.from_numpy(sample)),
        index.folded_blocks(modality, config.block_size),
        count,
        folder,
        modality,
        config,
    )


def _array(path: Path) -> torch.Tensor:
    # copy-on-write memory map: pages are read when touched, and the tensor is writable for torch
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))


def load_index(path: str | os.PathLike) -> SearchIndex:
    """Read an index folder written by :meth:`SearchIndex.save` (``triptych m3jepa index``)."""
    path = Path(path)
    if not (path / "index.json").is_file():
        raise InputError(
            f"{path} is not a search index (no index.json); build one with `triptych m3jepa index`"
        )
    meta = read_json(
        path / "index.json", "search index file", "rebuild the index with `triptych m3jepa index`"
    )
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{path}: index format {found!r} is not {FORMAT!r}; rebuild the index")
    try:
        arrays = {
            name: _array(path / f"{name}.npy") for name in OPTIONAL_ARRAYS if (path / f"{name}.npy").is_file()
        }
        checkpoints = meta.get("checkpoints") or ([meta["checkpoint"]] if meta.get("checkpoint") else [])
        if meta["format"] == FORMAT:
            if not (path / METADATA).is_file():
                raise FileNotFoundError(METADATA)
            images: Sequence[str] = MetadataColumn(path / METADATA, "image", "path")
            captions: Sequence[str] = MetadataColumn(path / METADATA, "caption", "caption")
            caption_image = (
                np.load(path / "caption_image.npy", allow_pickle=False)
                if (path / "caption_image.npy").is_file()
                else None
            )
        else:  # format 1: the lists are inside index.json
            images, captions = meta["images"], meta.get("captions") or []
            caption_image = None if meta.get("caption_image") is None else np.asarray(meta["caption_image"])
        return SearchIndex(
            images,
            _array(path / "image_keys.npy"),
            meta["encoders"],
            checkpoints,
            captions,
            caption_image,
            querybank=meta.get("querybank") or {},
            ann=meta.get("ann") or {},
            folder=path,
            **arrays,
        )
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: the search index is incomplete or corrupt ({type(exc).__name__}); rebuild it "
            "with `triptych m3jepa index`"
        ) from None

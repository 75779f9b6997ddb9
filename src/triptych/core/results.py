"""Benchmark outputs: ``results.json`` for tools and ``results.md`` for people, written atomically.

Every JSON file triptych writes goes through :func:`json_text`: strict JSON, where a
metric that is not a number (NaN, e.g. ROC-AUC on one class, or an infinity) is ``null``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.io import write_text


def mean_sd(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``mean ± sd`` (sample sd) of a list of per-seed values; just the value for one seed."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return "n/a"
    if arr.size == 1:
        return fmt.format(arr[0])
    return f"{fmt.format(arr.mean())} ± {fmt.format(arr.std(ddof=1))}"


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = "{:.3f}"
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts), columns in first-seen order."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out: str | os.PathLike, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``out/results.json`` and ``out/results.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j = write_text(out / "results.json", json_text(results))
    m = write_text(out / "results.md", markdown)
    return j, m


def strict(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as plain JSON values: non-finite floats -> None, numpy -> Python, Path -> str, tuples -> lists.

    ``default`` converts any other type (as in :func:`json.dumps`); without it they are a TypeError.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Mapping):
        return {
            k if isinstance(k, str | int | float | bool) or k is None else str(k): strict(v, default)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple | set | frozenset):
        return [strict(v, default) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return strict(obj.tolist(), default)
    if isinstance(obj, Path):
        return str(obj)
    if default is not None:
        return strict(default(obj), None)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``obj`` (``null``, never ``NaN``), ending in a newline."""
    return json.dumps(strict(obj, default), indent=indent, allow_nan=False) + "\n"


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``obj`` to ``path`` as strict JSON, atomically."""
    return write_text(path, json_text(obj, indent, default))

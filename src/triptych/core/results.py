"""Benchmark outputs: ``results.json`` for tools and ``results.md`` for people, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = "{:.3f}") -> str:
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
    j = write_text(out / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    m = write_text(out / "results.md", markdown)
    return j, m


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

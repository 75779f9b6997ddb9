"""Progress bars for long work outside Lightning's training loop."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr; silent when TRIPTYCH_QUIET is set."""
    disable = bool(os.environ.get("TRIPTYCH_QUIET"))
    yield from tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, leave=False
    )


def progress_bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A manual progress bar (call ``.update(n)``); use as a context manager."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=bool(os.environ.get("TRIPTYCH_QUIET")),
        dynamic_ncols=True,
        leave=False,
    )

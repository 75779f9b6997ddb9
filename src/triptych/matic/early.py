"""Work a screen starts before it imports torch: featurising the first molecules of its file.

On a CPU, importing torch is most of a ``matic screen`` process's 1.7 s start-up, on one core.
:class:`FeaturePass` forks worker processes first (they hold only RDKit and numpy), which
featurise the file from its start meanwhile; when the model is loaded, :meth:`FeaturePass.take`
keeps what is done and stops them. The screen's scoring workers then featurise only the rest
(the arrays are the same: :meth:`AttentiveFPFeaturizer.arrays` either way).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator
from functools import partial
from itertools import islice
from pathlib import Path

from triptych.matic.featurize import DEFAULT, GraphArrays
from triptych.matic.library import read_chunks

Row = tuple[int, str, str]  # (line number, SMILES, name)


def fork_pool(workers: int, initializer=None):
    """``workers`` processes forked now, with what this process has imported (no torch yet in the CLI)."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=partial(_worker_start, initializer))


def _worker_start(initializer) -> None:
    # The CLI turns SIGTERM into a Python exception (a clean exit); a forked worker inherits that
    # handler, which a worker blocked on its task queue may never run, so Pool.terminate() would
    # wait for it for ever. A pool worker dies on SIGTERM at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer()


def _featurise(rows: list[Row]) -> tuple[list[int], list[GraphArrays | None]]:
    return [n for n, _, _ in rows], [DEFAULT.arrays(s) for _, s, _ in rows]


class FeaturePass:
    """The graph arrays of the first rows of ``path`` (at most ``limit``), made by ``workers`` processes."""

    def __init__(
        self,
        path: str | Path,
        smiles_col: str | None = None,
        workers: int = 2,
        chunk: int = 128,
        limit: int = 50_000,
    ) -> None:
        chunks: Iterator[list[Row]] = islice(read_chunks(path, chunk, smiles_col), max(1, limit // chunk))
        self._pool = fork_pool(workers)
        self._parts = self._pool.imap(_featurise, chunks)

    def take(self) -> dict[int, GraphArrays | None]:
        """What is done by now, by line number (``None``: does not parse); the workers stop."""
        done: dict[int, GraphArrays | None] = {}
        try:
            while True:
                lines, graphs = self._parts.next(timeout=0)
                done.update(zip(lines, graphs, strict=True))
        except (multiprocessing.TimeoutError, StopIteration):
            pass
        except Exception:  # noqa: BLE001 (a read error: the screen reads the file itself and reports it)
            pass
        finally:
            self._pool.terminate()  # the cores go to the scoring workers next
            self._pool.join()
        return done

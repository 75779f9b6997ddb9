"""One distributed batch engine: run a worker over shards of a large input with Ray.

``run_sharded(worker_factory, shards, out_dir)`` builds one worker per Ray worker process (an
actor, so a model is loaded once per process, not once per shard), feeds it the shards, and
writes each shard's table atomically to ``out_dir/shards/<id>.parquet`` as soon as it arrives.
A rerun skips the shards already on disk, so a killed run resumes and redoes no finished shard.
``workers=0`` runs the same loop in this process without Ray: the reference path, and the fast
one for small inputs. Both paths go through the same parquet files, so they return identical
tables.

Ray is imported inside functions only: importing this module (e.g. from a CLI) stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from triptych.core.errors import InputError, TriptychError
from triptych.core.io import atomic_write
from triptych.core.progress import progress_bar

if TYPE_CHECKING:
    import pandas as pd

Shard = dict[str, Any]
Worker = Callable[[Shard], "pd.DataFrame"]
WorkerFactory = Callable[[], Worker]

# The shard's own description travels inside its parquet footer: a rerun with a changed shard
# under the same id is caught instead of silently reusing a stale table.
_SHARD_KEY = b"triptych.shard"
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_RAY_ADDRESS_HINT = (
    "start one with `ray start --head` on the head node, pass its address "
    "(`--ray-address HOST:6379`, `ray://HOST:10001` or `auto`), or omit "
    "`--ray-address` to run on this machine"
)


@dataclass(frozen=True)
class ShardResult:
    """Where one shard's table lies, and whether this run computed it or found it done."""

    id: str
    path: Path
    rows: int
    reused: bool


@overload
def run_sharded(
    worker_factory: WorkerFactory,
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = ...,
    ray_address: str | None = ...,
    progress_desc: str = ...,
    return_paths: Literal[False] = ...,
    threads_per_worker: int = ...,
    gpus_per_worker: float = ...,
) -> pd.DataFrame: ...


@overload
def run_sharded(
    worker_factory: WorkerFactory,
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = ...,
    ray_address: str | None = ...,
    progress_desc: str = ...,
    return_paths: Literal[True],
    threads_per_worker: int = ...,
    gpus_per_worker: float = ...,
) -> list[Path]: ...


def run_sharded(
    worker_factory: WorkerFactory,
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress_desc: str = "shards",
    return_paths: bool = False,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
) -> pd.DataFrame | list[Path]:
    """Run ``worker_factory()(shard)`` over every shard and return the tables concatenated in
    the order of ``shards`` (the row index is reset).

    worker_factory: zero-argument, picklable callable (e.g. ``functools.partial`` of a
        module-level class) returning ``worker(shard) -> pandas.DataFrame``; called once per
        worker process.
    shards: JSON-able dicts, each with a unique string ``"id"`` (letters, digits, ``._-``).
    out_dir: ``out_dir/shards/<id>.parquet`` holds each finished shard; a rerun skips them.
    workers: Ray worker processes (default: CPUs // threads_per_worker, on this machine or on
        the cluster joined); 0 runs in this process without Ray.
    ray_address: None starts Ray on this machine (loopback only); ``"auto"``, ``"HOST:PORT"`` or
        ``"ray://HOST:PORT"`` joins a running cluster (workers there need triptych installed,
        and the driver writes every shard file, so no shared file system is needed). A Ray
        session already open in this process is used as it is.
    return_paths: return the shard files (in the order of ``shards``) instead of one table,
        so a million-row run never holds every shard in the driver's memory at once.
    threads_per_worker: torch/OpenMP/BLAS threads in each worker process (and the CPUs Ray
        reserves for it), so workers do not oversubscribe the cores.
    gpus_per_worker: GPUs Ray reserves for each worker (fractions share one GPU).
    """
    results = run_shards(
        worker_factory,
        shards,
        out_dir,
        workers=workers,
        ray_address=ray_address,
        progress_desc=progress_desc,
        threads_per_worker=threads_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
    if return_paths:
        return [result.path for result in results]
    return read_shards(results)


def run_shards(
    worker_factory: WorkerFactory,
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress_desc: str = "shards",
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
) -> list[ShardResult]:
    """Like :func:`run_sharded`, but return one :class:`ShardResult` per shard (in order) and
    read no table back."""
    specs = _validate(shards, workers, threads_per_worker, gpus_per_worker)
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(shard_dir)
    done = {
        shard["id"]: rows
        for shard in shards
        if (rows := _finished_rows(shard_path(out_dir, shard["id"]), specs[shard["id"]])) is not None
    }
    todo = [shard for shard in shards if shard["id"] not in done]
    computed: dict[str, int] = {}
    with progress_bar(total=len(shards), desc=progress_desc, unit="shard") as bar:
        bar.update(len(done))

        def finish(shard_id: str, table: pd.DataFrame) -> None:
            computed[shard_id] = _write_shard(shard_path(out_dir, shard_id), table, specs[shard_id])
            bar.update(1)

        if todo and workers == 0:
            _run_in_process(worker_factory, todo, finish)
        elif todo:
            _run_on_ray(
                worker_factory,
                todo,
                finish,
                workers=workers,
                ray_address=ray_address,
                threads_per_worker=threads_per_worker,
                gpus_per_worker=gpus_per_worker,
            )
    return [
        ShardResult(
            id=s["id"],
            path=shard_path(out_dir, s["id"]),
            rows=done[s["id"]] if s["id"] in done else computed[s["id"]],
            reused=s["id"] in done,
        )
        for s in shards
    ]


def shard_path(out_dir: str | os.PathLike, shard_id: str) -> Path:
    """The file holding one finished shard's table."""
    return Path(out_dir) / "shards" / f"{shard_id}.parquet"


def read_shards(results: Sequence[ShardResult | str | os.PathLike]) -> pd.DataFrame:
    """Concatenate shard files in the given order into one table (row index reset)."""
    import pandas as pd

    paths = [r.path if isinstance(r, ShardResult) else Path(r) for r in results]
    frames = [pd.read_parquet(path) for path in paths]
    if not frames:
        return pd.DataFrame()
    # Empty frames would only perturb the dtypes of the non-empty ones in concat.
    non_empty = [frame for frame in frames if len(frame)] or frames[:1]
    return pd.concat(non_empty, ignore_index=True)


@contextlib.contextmanager
def ray_session(
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
) -> Iterator[int]:
    """Use the Ray session already running in this process, or start/join one for the block.

    Yields the number of worker processes to use: ``workers``, or as many as the cluster's CPUs
    (and GPUs) hold, and never more (an actor Ray cannot place would wait for ever). A session
    this function started is shut down on exit; one already running is left alone (so tests
    and notebooks can reuse it).
    """
    started = False
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        init_ray(workers, ray_address, threads_per_worker)
        started = True
    elif ray_address is not None:
        _check_reachable(ray_address)  # a session is open already, but a bad address is still an error
    import ray

    try:
        resources = ray.cluster_resources()
        capacity = int(resources.get("CPU", 0)) // threads_per_worker
        if gpus_per_worker:
            capacity = min(capacity, int(resources.get("GPU", 0) / gpus_per_worker))
        if capacity < 1:
            raise InputError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                f"GPUs, too few for one worker ({threads_per_worker} threads, {gpus_per_worker:g} "
                "GPUs): lower the threads or GPUs per worker, or add nodes."
            )
        if workers is not None and workers > capacity:
            print(
                f"triptych: {workers} workers asked, the Ray cluster holds {capacity}; using {capacity}.",
                file=sys.stderr,
            )
        yield capacity if workers is None else min(workers, capacity)
    finally:
        if started:
            ray.shutdown()


class ShardWorker:
    """One worker per Ray worker process: it builds the (model-holding) worker once and then
    runs it on every shard it is handed. Also used as is by the in-process path."""

    def __init__(
        self, worker_factory: WorkerFactory | bytes, threads: int | None = None, sys_path: Sequence[str] = ()
    ) -> None:
        if threads is not None:
            limit_threads(threads)
        if isinstance(worker_factory, bytes):
            # Unpickled here, after the driver's import path is known, so a factory defined in a
            # module beside the driver's script (or a test file) imports in the worker too.
            sys.path.extend(p for p in sys_path if p not in sys.path)
            from ray import cloudpickle

            worker_factory = cloudpickle.loads(worker_factory)
        self.worker: Worker | None = None
        self.start_error: Exception | None = None
        try:
            self.worker = worker_factory()
        except Exception as err:
            # Ray reports a failed actor constructor as a bare ActorDiedError; a failed shard
            # call keeps the exception itself, so a worker that cannot start fails its first shard.
            self.start_error = err
        if threads is not None:
            limit_threads(threads)  # again: the factory may have imported torch just now

    def run(self, shard: Shard) -> tuple[str, pd.DataFrame]:
        if self.worker is None:
            raise self.start_error
        table = self.worker(shard)
        _check_table(table, shard["id"])
        return shard["id"], table


def limit_threads(threads: int) -> None:
    """Cap the intra-op threads of OpenMP/BLAS (for libraries loaded from now on) and torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")  # only if the worker uses torch: importing it costs seconds
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _run_in_process(
    worker_factory: WorkerFactory, todo: list[Shard], finish: Callable[[str, pd.DataFrame], None]
) -> None:
    worker = ShardWorker(worker_factory)
    for shard in todo:
        finish(*worker.run(shard))


def _run_on_ray(
    worker_factory: WorkerFactory,
    todo: list[Shard],
    finish: Callable[[str, pd.DataFrame], None],
    *,
    workers: int | None,
    ray_address: str | None,
    threads_per_worker: int,
    gpus_per_worker: float,
) -> None:
    with ray_session(workers, ray_address, threads_per_worker, gpus_per_worker) as n_workers:
        import ray
        from ray import cloudpickle
        from ray.util import ActorPool

        factory = cloudpickle.dumps(worker_factory)
        actor_cls = ray.remote(num_cpus=threads_per_worker, num_gpus=gpus_per_worker)(ShardWorker)
        actors = [
            actor_cls.remote(factory, threads_per_worker, list(sys.path))
            for _ in range(min(n_workers, len(todo)))
        ]
        # ActorPool keeps one shard in flight per actor; each table is written and dropped as it
        # arrives, so the driver holds at most one shard's table at a time.
        pool = ActorPool(actors)
        for shard in todo:
            pool.submit(lambda actor, s: actor.run.remote(s), shard)
        try:
            while pool.has_next():
                try:
                    shard_id, table = pool.get_next_unordered()
                except ray.exceptions.RayTaskError as err:
                    # A user error from a worker reaches the CLI as its own one line; anything else
                    # keeps Ray's wrapper, which carries the worker's traceback.
                    if isinstance(err.cause, TriptychError):
                        raise err.cause from None
                    raise
                finish(shard_id, table)
        finally:
            for actor in actors:
                ray.kill(actor)


def init_ray(workers: int | None = None, ray_address: str | None = None, threads_per_worker: int = 1) -> None:
    """Start Ray on this machine (``workers`` worker CPUs, loopback only, quiet) or join the
    cluster at ``ray_address``; an unreachable address is an :class:`InputError`."""
    # No phoning home (Ray's usage statistics).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local cluster listens on loopback only. Ray reads this switch (meant for laptops)
    # when it is first imported, so it only takes effect if nothing imported Ray before.
    if ray_address is None and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray turns token authentication on for new local clusters anyway; saying so explicitly
        # spares the warning it prints otherwise. Ray reads it on import too: setting it after an
        # earlier import would start the cluster and the driver in different modes.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import logging

    import ray

    # Workers' own output goes to Ray's log folder (/tmp/ray/session_latest/logs), not the
    # terminal; their exceptions still reach the caller.
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if ray_address is None:
        n_workers = workers if workers is not None else max(1, _local_cpus() // threads_per_worker)
        ray.init(num_cpus=n_workers * threads_per_worker, **quiet)  # each worker reserves its threads
        return
    _check_reachable(ray_address)
    try:
        ray.init(address=ray_address, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"--ray-address {ray_address!r}: cannot join a Ray cluster ({first}); {_RAY_ADDRESS_HINT}."
        ) from None


def _check_reachable(ray_address: str) -> None:
    """Fail in seconds, not after Ray's long connection retries, when HOST:PORT is not listening."""
    if ray_address == "auto":
        return
    host_port = ray_address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(
            f"--ray-address {ray_address!r} is not HOST:PORT, ray://HOST:PORT or auto; {_RAY_ADDRESS_HINT}."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise InputError(
            f"--ray-address {ray_address!r}: nothing answers there ({err.strerror or err}); "
            f"{_RAY_ADDRESS_HINT}."
        ) from None


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _validate(
    shards: Sequence[Shard], workers: int | None, threads_per_worker: int, gpus_per_worker: float
) -> dict[str, str]:
    """Check the arguments; return each shard's canonical JSON by id."""
    if isinstance(shards, dict | str) or not isinstance(shards, Sequence):
        raise InputError(f"shards must be a list of dicts with an 'id', got {type(shards).__name__}.")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise InputError(
            f"--workers {workers!r}: give 0 (in this process) or a positive number of processes."
        )
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise InputError(f"threads per worker {threads_per_worker!r}: give a positive integer.")
    if gpus_per_worker < 0:
        raise InputError(f"GPUs per worker {gpus_per_worker!r}: give 0 or a positive number.")
    specs: dict[str, str] = {}
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or "id" not in shard:
            raise InputError(f"shard {i} must be a dict with an 'id' key, got {shard!r:.80}.")
        shard_id = shard["id"]
        if not isinstance(shard_id, str) or not _ID_RE.match(shard_id):
            raise InputError(
                f"shard {i} has id {shard_id!r}: use a string of letters, digits, '.', '_' "
                "or '-' (it names the shard's file)."
            )
        if shard_id in specs:
            raise InputError(f"shard id {shard_id!r} appears twice: give every shard a unique id.")
        try:
            specs[shard_id] = json.dumps(shard, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"shard {shard_id!r} is not JSON-able ({err}): use plain str/int/float/"
                "list/dict values (e.g. file paths as str)."
            ) from None
    return specs


def _check_table(table: object, shard_id: str) -> None:
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"the worker returned {type(table).__name__} for shard {shard_id!r}; "
            "it must return a pandas.DataFrame."
        )


def _write_shard(path: Path, table: pd.DataFrame, spec: str) -> int:
    """Write one shard atomically, its description in the parquet footer; return its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), _SHARD_KEY: spec.encode()})
    with atomic_write(path, "wb") as handle:
        pq.write_table(arrow, handle)
    return len(table)


def _finished_rows(path: Path, spec: str) -> int | None:
    """Rows of a finished shard file written for this very shard; None when it must be (re)done."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)  # the footer only: cheap even for big shards
    except Exception:  # a damaged file (not ours: ours are written atomically) is simply redone
        return None
    found = (meta.metadata or {}).get(_SHARD_KEY)
    if found is None or json.loads(found) != json.loads(spec):
        raise InputError(
            f"{path} was written for a different shard ({(found or b'?').decode()[:120]}); "
            "give a new output folder, or delete it to start over."
        )
    return meta.num_rows


def _remove_stale_temp_files(shard_dir: Path) -> None:
    # A SIGKILLed run cannot clean up its half-written temporary file; the next run does.
    for tmp in shard_dir.glob(".*.parquet.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

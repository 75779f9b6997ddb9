"""Library-scale screening on the core's Ray layer: sharded inputs in, Parquet and a top-N CSV out.

    shards = plan_shards(inputs)                      (library.py: .smi/.csv/.sdf/Parquet, .gz, globs)
    per shard, in a worker holding the model once:
        rows -> parent = standardise(mol) -> unique parents -> p_t, dual = prod_t p_t,
                PAINS/Brenk alerts, max Tanimoto to the training set (in_domain)
    driver: run_sharded(..., return_paths=True), then one streaming pass over the shard files:
        predictions.parquet (all rows, + a cross-shard ``duplicate`` flag) and top.csv (top N
        unique valid parents by dual score, ties in input order), holding one shard at a time.

A killed run resumes: finished shards are on disk (``OUT/shards``) and are not recomputed.
The settings that change results travel inside every shard's description, so a rerun into
the same folder with other settings is refused instead of mixing two screens.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from triptych.core.errors import InputError
from triptych.core.io import atomic_write, write_text
from triptych.matic.library import Row, Shard, iter_library, plan_shards, read_shard

# The columns of every output row, after p_<task>... (see ShardScreener.score_rows).
KEY_COLUMN = {"smiles": "parent_smiles", "inchikey": "inchikey"}


@dataclass(frozen=True)
class LibraryScreenConfig:
    """Everything that decides a screened row's values (and so must match on resume)."""

    checkpoint: str
    tasks: tuple[str, ...] | None = None
    batch_size: int = 32
    device: str = "cpu"
    precision: str = "auto"  # of the model pass: fp32, bf16 or auto (resolved by screen_library)
    tautomers: bool = False
    dedup: str = "smiles"
    alerts: bool = True
    domain_reference: tuple[str, ...] = ()  # files of any library format, 'ncats' or 'matic:DIR'
    domain_threshold: float = 0.4

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_smiles(predictor, smiles: Sequence[str], batch_size: int) -> np.ndarray:
    """``(n, n_tasks)`` probabilities (NaN rows where featurisation fails), batched as ``matic screen`` batches.

    The single-file screen's own loop (:func:`triptych.matic.screen.iter_scored`: size-sorted
    batches, featurised and scored in this process, which is already one Ray worker), so both
    paths give a molecule the same score. The one call into MATIC's scoring.
    """
    from triptych.matic.screen import iter_scored

    rows = [(i, s, "") for i, s in enumerate(smiles)]
    prob = np.full((len(rows), len(predictor.tasks)), np.nan, dtype=np.float32)
    for batch_rows, valid, p in iter_scored(predictor, lambda: iter([rows]), batch_size, workers=0):
        idx = np.array([r[0] for r in batch_rows], dtype=np.int64)
        prob[idx[valid]] = p
    return prob


def reference_smiles(spec: str) -> list[str]:
    """SMILES of an applicability-domain reference: 'ncats', 'matic:DIR' (its training file) or a library."""
    if spec == "ncats":
        from triptych.matic.data import load_embedded

        return load_embedded().smiles
    if spec.startswith("matic:"):
        spec = str(Path(spec[len("matic:") :]) / "multi_train.csv")
    return [s for _, s, _ in iter_library(spec)]


def default_domain_reference(checkpoint: str | os.PathLike) -> tuple[str, ...]:
    """The training data named in ``metrics.json`` beside the checkpoint (written by ``matic train``)."""
    metrics = Path(checkpoint).parent / "metrics.json"
    try:
        data = json.loads(metrics.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return ()
    if not isinstance(data, str):
        return ()
    if (
        data == "ncats"
        or (data.startswith("matic:") and Path(data[6:], "multi_train.csv").is_file())
        or Path(data).is_file()
    ):
        return (data,)
    return ()


class ShardScreener:
    """One per worker process: the model, standardiser, alert catalogues and domain built once."""

    def __init__(self, config: LibraryScreenConfig) -> None:
        from triptych.matic.predictor import load_predictor
        from triptych.matic.standardize import Standardizer, mol_from_smiles

        self.config = config
        # The single-file screen's model path: the stacked pass without PyG, at the run's precision.
        self.predictor = load_predictor(
            config.checkpoint,
            list(config.tasks) if config.tasks else None,
            config.device,
            pyg=False,
            precision=config.precision,
        )
        self.standardize = Standardizer(config.tautomers)
        self.domain = None
        if config.domain_reference:
            from triptych.matic.domain import Domain

            ref = [s for spec in config.domain_reference for s in reference_smiles(spec)]
            self.domain = Domain([self.standardize(mol_from_smiles(s)) for s in ref], config.domain_threshold)

    def __call__(self, shard: Shard) -> pd.DataFrame:
        table = self.score_rows(read_shard(shard))
        table.insert(0, "file", shard["file"])
        return table

    def score_rows(self, rows: Sequence[Row]) -> pd.DataFrame:
        """One output row per input row; chemistry and the model run once per distinct parent."""
        from triptych.matic.standardize import dedup_keys, first_occurrence, mol_from_smiles, parent_smiles

        parents = [self.standardize(mol_from_smiles(s)) for _, s, _ in rows]
        keys = dedup_keys(parents, self.config.dedup)
        first = first_occurrence(keys)
        uniq = np.flatnonzero(first == np.arange(len(rows)))
        at = np.full(len(rows), -1, dtype=np.int64)  # row -> position of its parent among the unique ones
        at[uniq] = np.arange(len(uniq))
        at = np.where(first >= 0, at[np.maximum(first, 0)], -1)
        known = at >= 0

        def spread(values: np.ndarray, missing) -> np.ndarray:
            out = np.full((len(rows), *values.shape[1:]), missing, dtype=values.dtype)
            out[known] = values[at[known]]
            return out

        uniq_mols = [parents[i] for i in uniq]
        uniq_smiles = [parent_smiles(m) for m in uniq_mols]
        tasks = self.predictor.tasks
        prob = spread(
            score_smiles(self.predictor, uniq_smiles, self.config.batch_size).reshape(-1, len(tasks)), np.nan
        )
        table = pd.DataFrame(
            {
                "row": np.array([r for r, _, _ in rows], dtype=np.int64),
                "name": [n for _, _, n in rows],
                "smiles": [s for _, s, _ in rows],
                "parent_smiles": [parent_smiles(m) or "" for m in parents],
            }
        )
        if self.config.dedup == "inchikey":
            table["inchikey"] = [k or "" for k in keys]
        table["valid"] = ~np.isnan(prob).any(axis=1)
        for j, task in enumerate(tasks):
            table[f"p_{task}"] = prob[:, j]
        table["dual_score"] = prob.prod(axis=1)
        if self.config.alerts:
            from triptych.matic.alerts import alert_columns

            alerts = alert_columns(uniq_mols)
            for col in alerts.columns:
                values = alerts[col].to_numpy()
                table[col] = spread(values, False if values.dtype == bool else "")
        if self.domain is not None:
            for col, values in self.domain.columns(uniq_mols).items():
                table[col] = spread(values, np.nan if values.dtype.kind == "f" else False)
        return table


@dataclass
class LibraryScreenResult:
    n_total: int
    n_valid: int
    n_duplicates: int
    shards: int
    shards_reused: int
    seconds: float
    predictions: Path
    top: Path
    summary: Path

    @property
    def throughput(self) -> float:
        return self.n_total / self.seconds if self.seconds > 0 else float("nan")


def screen_library(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    config: LibraryScreenConfig,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 10_000,
    smiles_col: str | None = None,
    top_n: int = 1000,
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
) -> LibraryScreenResult:
    """Screen a (sharded) library on Ray (``workers=0``: in this process) into ``out_dir``.

    Writes ``predictions.parquet`` (every row, input order), ``top.csv`` (the ``top_n`` best
    unique valid parents by dual score), ``summary.json``, and ``shards/`` (for resume).
    """
    from triptych.core.batch import run_shards
    from triptych.matic.predictor import load_predictor
    from triptych.matic.screen import resolve_precision

    start = time.perf_counter()
    # "auto" is resolved here, once: every worker (and the resume check) sees the same precision.
    config = replace(config, precision=resolve_precision(config.precision, config.device))
    if top_n < 1:
        raise InputError(f"--top {top_n}: give a positive number of rows for top.csv")
    out_dir = Path(out_dir)
    if out_dir.suffix.lower() == ".csv" or out_dir.is_file():
        raise InputError(f"--out {out_dir}: a library screen writes a folder; give a folder name")
    # User errors surface here, in one line, before any worker starts.
    tasks = load_predictor(config.checkpoint, list(config.tasks) if config.tasks else None).tasks
    for spec in config.domain_reference:
        if not reference_smiles(spec):
            raise InputError(f"domain reference {spec}: no molecules; give the model's training set")
    shards = [{**s, "config": config.digest()} for s in plan_shards(inputs, shard_size, smiles_col)]
    results = run_shards(
        partial(ShardScreener, config),
        shards,
        out_dir,
        workers=workers,
        ray_address=ray_address,
        progress_desc="screening",
        threads_per_worker=threads_per_worker,
    )
    counts = _merge(results, out_dir, tasks, config, top_n)
    summary = {
        **counts,
        "shards": len(results),
        "shards_reused": sum(r.reused for r in results),
        "seconds": round(time.perf_counter() - start, 3),
        "config": asdict(config),
        "inputs": [str(i) for i in ([inputs] if isinstance(inputs, str | os.PathLike) else inputs)],
    }
    summary["molecules_per_second"] = round(summary["n_total"] / max(summary["seconds"], 1e-9), 1)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return LibraryScreenResult(
        counts["n_total"],
        counts["n_valid"],
        counts["n_duplicates"],
        len(results),
        summary["shards_reused"],
        summary["seconds"],
        out_dir / "predictions.parquet",
        out_dir / "top.csv",
        out_dir / "summary.json",
    )


def _merge(
    results, out_dir: Path, tasks: list[str], config: LibraryScreenConfig, top_n: int
) -> dict[str, int]:
    """One pass over the shard files: all rows to predictions.parquet, a running top-N to top.csv."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from triptych.matic.standardize import SeenKeys

    seen = SeenKeys()
    top = pd.DataFrame()
    n_total = n_valid = n_dup = 0
    schema = None
    with atomic_write(out_dir / "predictions.parquet", "wb") as handle:
        writer = None
        for result in results:
            table = pd.read_parquet(result.path)
            keys = table[KEY_COLUMN[config.dedup]].where(table["valid"], "")
            dup = seen.mark([k or None for k in keys.tolist()])
            table["duplicate"] = dup
            n_total += len(table)
            n_valid += int(table["valid"].sum())
            n_dup += int(dup.sum())
            arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
            if writer is None:
                schema = arrow.schema.remove_metadata()
                arrow = arrow.replace_schema_metadata(None)
                writer = pq.ParquetWriter(handle, schema)
            writer.write_table(arrow)
            # Streaming top-N: earlier rows first, so a stable sort breaks ties by input order.
            best = table[table["valid"] & ~table["duplicate"]].nlargest(top_n, "dual_score", keep="first")
            top = pd.concat([top, best], ignore_index=True) if len(top) else best
            top = top.sort_values("dual_score", ascending=False, kind="stable").head(top_n)
            del table, arrow
        if writer is not None:
            writer.close()
    top = top.reset_index(drop=True)
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    cols = [
        "rank",
        "file",
        "row",
        "name",
        "smiles",
        "parent_smiles",
        *(f"p_{t}" for t in tasks),
        "dual_score",
    ]
    cols += [
        c
        for c in ("pains", "pains_alert", "brenk", "brenk_alert", "max_sim_train", "in_domain")
        if c in top.columns
    ]
    with atomic_write(out_dir / "top.csv", "w", newline="", encoding="utf-8") as handle:
        top[cols].to_csv(handle, index=False, float_format="%.4f")
    return {
        "n_total": n_total,
        "n_valid": n_valid,
        "n_invalid": n_total - n_valid,
        "n_duplicates": n_dup,
        "n_top": len(top),
    }

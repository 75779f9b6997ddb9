"""The library-scale branch of ``triptych matic screen`` (kept apart so cli.py stays small and light).

Heavy libraries (torch, RDKit, Ray) are imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from triptych.core.errors import InputError


def single_input(inputs: list[str], out: Path) -> Path:
    """The one .smi/.csv file the in-process screen (``--out X.csv``) reads, or a one-line error."""
    from triptych.matic.library import expand_inputs, file_format

    files = expand_inputs(inputs)
    if len(files) != 1 or file_format(files[0]) not in ("smi", "csv") or len(inputs) != 1:
        raise InputError(
            f"--out {out} screens one .smi/.csv file in this process; for SDF, Parquet, several "
            "files or a glob give a folder as --out (the library run)"
        )
    return files[0]


def screen_library_command(
    *,
    checkpoint: Path,
    inputs: list[str],
    out: Path,
    smiles_col: str | None,
    tasks: list[str] | None,
    batch_size: int,
    threads: int,
    precision: str = "auto",
    device: str,
    workers: int | None,
    ray_address: str | None,
    shard_size: int,
    top: int,
    tautomers: bool,
    dedup: str,
    domain_ref: list[str],
    domain_threshold: float,
    alerts: bool = True,
) -> None:
    from triptych.matic.library_screen import LibraryScreenConfig, default_domain_reference, screen_library
    from triptych.matic.standardize import DEDUP_KEYS

    if out.suffix.lower() == ".csv":
        raise InputError(
            f"--out {out}: --workers/--ray-address run the library screen, which writes a folder; "
            "give a folder name as --out"
        )
    if dedup not in DEDUP_KEYS:
        raise InputError(f"--dedup {dedup!r} unknown; choose {' or '.join(DEDUP_KEYS)}")
    reference = tuple(_absolute(spec) for spec in (tuple(domain_ref) or default_domain_reference(checkpoint)))
    if not reference:
        typer.echo(
            "note: no --domain-ref and no metrics.json naming the training data beside the checkpoint; "
            "the max_sim_train/in_domain columns are left out",
            err=True,
        )
    if device != "cpu" and workers != 0:
        raise InputError(
            f"--device {device}: Ray workers run on CPU here; pass --workers 0 to screen on {device} "
            "in this process"
        )
    config = LibraryScreenConfig(
        checkpoint=str(checkpoint.resolve()),
        tasks=tuple(tasks) if tasks else None,
        batch_size=batch_size,
        device=device,
        precision=precision,
        tautomers=tautomers,
        dedup=dedup,
        alerts=alerts,
        domain_reference=reference,
        domain_threshold=domain_threshold,
    )
    result = screen_library(
        inputs,
        config,
        out,
        shard_size=shard_size,
        smiles_col=smiles_col,
        top_n=top,
        workers=workers,
        ray_address=ray_address,
        threads_per_worker=max(1, threads),
    )
    typer.echo(
        f"screened {result.n_valid}/{result.n_total} molecules ({result.n_duplicates} duplicate parents) "
        f"in {result.seconds:.1f} s ({result.throughput:.0f} mol/s), {result.shards} shards "
        f"({result.shards_reused} reused) -> {result.predictions}, {result.top}"
    )


def _absolute(spec: str) -> str:
    """A reference spec with its path made absolute: Ray workers need not share the driver's folder."""
    if spec == "ncats":
        return spec
    if spec.startswith("matic:"):
        return "matic:" + str(Path(spec[len("matic:") :]).resolve())
    return os.path.abspath(spec)  # textual, so a glob pattern stays a pattern

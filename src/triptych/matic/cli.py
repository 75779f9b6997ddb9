"""``triptych matic``: train, evaluate, screen, explain and benchmark multi-task molecule predictors.

Heavy libraries (RDKit, PyG, torch) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triptych.core.batch_options import RayAddressOpt, WorkersOpt
from triptych.core.trainer_flags import TrainerFlags, trainer_options

app = typer.Typer(
    help="MATIC: multi-task Attentive FP (PLE) for target-inhibitory and cell-active molecules.\n\n"
    "Example: triptych matic train --data ncats --out runs/matic",
    no_args_is_help=True,
)

DataOpt = Annotated[
    str,
    typer.Option(
        help="'ncats' (embedded 3CLpro + CPE table), 'matic:DIR' (multi_{train,val,test}.csv) or a CSV file."
    ),
]
SplitOpt = Annotated[str, typer.Option(help="given (files), random or scaffold (80/10/10, seeded).")]
SmilesColOpt = Annotated[str | None, typer.Option(help="SMILES column (default: the one called smiles).")]
TasksOpt = Annotated[
    str | None, typer.Option(help="Comma-separated label columns (default: all but SMILES).")
]


def _tasks(tasks: str | None) -> list[str] | None:
    return [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None


@app.command()
@trainer_options(precision="auto")
def train(
    data: DataOpt = "ncats",
    out: Annotated[
        Path, typer.Option(help="Output folder (model.safetensors, metrics.json, checkpoints/).")
    ] = Path("runs/matic"),
    val: Annotated[str | None, typer.Option(help="Validation CSV (with --test: the given split).")] = None,
    test: Annotated[str | None, typer.Option(help="Test CSV.")] = None,
    split: SplitOpt = "given",
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and batches.")] = 0,
    smiles_col: SmilesColOpt = None,
    tasks: TasksOpt = None,
    conflict: Annotated[
        str, typer.Option(help="Duplicates with conflicting labels: drop, max, min, first, mean.")
    ] = "drop",
    strict: Annotated[
        bool, typer.Option(help="Fail on any unparsable SMILES instead of skipping it.")
    ] = False,
    arch: Annotated[str, typer.Option(help="ple (MATIC), mmoe or single (one expert per task).")] = "ple",
    gate: Annotated[
        str, typer.Option(help="full (an Attentive FP per gate, as the paper) or light (linear).")
    ] = "full",
    loss: Annotated[str, typer.Option(help="focal (alpha 0.5, gamma 2) or bce.")] = "focal",
    task_weights: Annotated[
        str | None, typer.Option(help="Comma-separated loss weight per task (default equal).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Molecules per batch.")] = 64,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 100,
    patience: Annotated[int, typer.Option(help="Early-stopping patience on validation loss (epochs).")] = 15,
    ensemble: Annotated[
        int,
        typer.Option(
            help="Deep ensemble: train N members (seeds SEED..SEED+N-1) into OUT/member_k/; mean and sd per task."
        ),
    ] = 1,
    calibrate: Annotated[
        str | None,
        typer.Option(help="Fit temperature or isotonic calibration on VALIDATION (OUT/calibration.json)."),
    ] = None,
    prefilter: Annotated[
        bool,
        typer.Option(
            help="Also fit the fingerprint prefilter for 'screen --prefilter' (distilled from the trained PLE)."
        ),
    ] = False,
    flags: TrainerFlags = TrainerFlags(),  # the scale-out options, from @trainer_options
) -> None:
    """Train a multi-task Attentive FP predictor; keep the best checkpoint and report test metrics.

    Example: triptych matic train --data matic:../shared/data/matic --out runs/matic_ple --epochs 60

    Deep ensemble of 5, calibrated on validation:
    triptych matic train --data matic:../shared/data/matic --out runs/matic_ens --ensemble 5 --calibrate temperature

    --precision auto (the default) trains the Attentive FPs in bf16 on a CPU with native bfloat16
    (AMX), fp32 elsewhere; fp32 master weights, optimiser and validation. --precision fp32 for plain fp32.
    """
    from triptych.core.errors import InputError
    from triptych.matic.calibration import METHODS

    if ensemble < 1:
        raise InputError(f"--ensemble {ensemble}: give 1 (one model) or more members")
    if prefilter and ensemble > 1:
        raise InputError(
            "--prefilter distils one PLE: train the ensemble without it, then run `matic prefilter`"
        )
    if calibrate is not None and calibrate not in METHODS:
        raise InputError(f"--calibrate {calibrate!r}: choose one of {', '.join(METHODS)}")
    from triptych.core.runs import final_path, training_run_dir
    from triptych.matic.data import load_splits
    from triptych.matic.evaluation import evaluate_checkpoint
    from triptych.matic.train import TrainConfig, resolve_precision, train_predictor, write_json

    splits = load_splits(
        data,
        split,
        seed,
        val=val,
        test=test,
        smiles_col=smiles_col,
        tasks=_tasks(tasks),
        strict=strict,
        conflict=conflict,
    )
    weights = [float(w) for w in task_weights.split(",")] if task_weights else []
    config = TrainConfig(
        tasks=splits.tasks,
        arch=arch,
        gate=gate,
        loss=loss,
        task_weights=weights,
        lr=lr,
        batch_size=batch_size,
        max_epochs=epochs,
        patience=patience,
        seed=seed,
        precision=flags.precision,  # auto: bf16 on a CPU with native bfloat16 (AMX), else fp32
    )
    config.weights()  # validate before any work
    resolve_precision(config.precision)
    for name, t in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        typer.echo(f"{name}: {t.summary()}")
    with training_run_dir(out, flags.resume) as run:  # trains in OUT.partial/, replaces OUT when done
        if ensemble == 1 and calibrate is None:
            model_path = train_predictor(splits, config, run, flags)
            metrics = evaluate_checkpoint(model_path, splits.test)
        else:
            from triptych.matic.ensemble import train_ensemble

            model_path, metrics = train_ensemble(splits, config, run, ensemble, calibrate, flags)
        write_json(run / "metrics.json", {"data": data, "split": splits.name, "test": metrics})
        if prefilter:
            _fit_prefilter(model_path, splits.train.smiles)
        model_path = final_path(model_path, run, out)
    for task, m in metrics.items():
        typer.echo(
            f"test {task}: ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  MCC {m['mcc']:.3f} (n={m['n']})"
        )
    typer.echo(f"model: {model_path}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A matic.predictor checkpoint (model.safetensors).")],
    data: Annotated[Path, typer.Option(help="CSV with SMILES and the checkpoint's label columns.")],
    smiles_col: SmilesColOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
) -> None:
    """Per-task ROC-AUC, PR-AUC, accuracy, precision, recall and MCC of a checkpoint on a labelled CSV.

    Example: triptych matic evaluate --checkpoint runs/matic_ple/model.safetensors --data test.csv
    """
    from triptych.matic.evaluation import evaluate_checkpoint
    from triptych.matic.predictor import load_predictor
    from triptych.matic.train import write_json

    predictor = load_predictor(checkpoint)
    table = _table_for(data, smiles_col, predictor.tasks, checkpoint)
    metrics = evaluate_checkpoint(predictor, table)
    for task, m in metrics.items():
        typer.echo(
            f"{task}: "
            + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
        )
    if out:
        write_json(out, metrics)


def _table_for(path: Path, smiles_col: str | None, tasks: list[str], checkpoint: Path):
    """Load ``path`` with the checkpoint's task columns, with a clear error when they are absent."""
    from triptych.core.errors import InputError
    from triptych.matic.data import load_table, read_csv_frame

    if path.is_file() and path.stat().st_size:
        cols = [str(c) for c in read_csv_frame(path).columns]
        missing = [t for t in tasks if t not in cols]
        if missing:
            raise InputError(
                f"checkpoint {checkpoint} was trained for tasks {tasks}, but {path} lacks "
                f"{missing} (columns: {', '.join(cols)}); use a checkpoint for these tasks"
            )
    return load_table(path, smiles_col, tasks)


@app.command()
def benchmark(
    data: Annotated[
        str | None,
        typer.Option(
            help="matic:DIR (the paper split) or a CSV with --split; the NCATS scaffold split always runs too."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for results.json and results.md.")] = Path("bench/matic"),
    seeds: Annotated[int, typer.Option(help="Seeds on --data.")] = 5,
    first_seed: Annotated[int, typer.Option(help="First seed (to run seeds in parallel processes).")] = 0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per graph model on --data.")] = 8,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 3,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    gate: Annotated[
        str, typer.Option(help="PLE/MMoE gate: light (CPU budget) or full (the paper's).")
    ] = "light",
    ncats_seeds: Annotated[int, typer.Option(help="Seeds of the NCATS scaffold split (0 skips it).")] = 1,
    ncats_epochs: Annotated[int, typer.Option(help="Maximum epochs on the NCATS split (4.7x larger).")] = 3,
    models: Annotated[
        str, typer.Option(help="Comma-separated subset of ple,mmoe,single,rf,chemprop.")
    ] = "ple,mmoe,single,rf,chemprop",
    merge: Annotated[
        list[Path] | None,
        typer.Option(
            help="Instead of running: merge these earlier --out folders (e.g. one per seed) into --out."
        ),
    ] = None,
) -> None:
    """Benchmark PLE, MMoE, single-task Attentive FP, a Morgan random forest (and chemprop) over seeds.

    Example: triptych matic benchmark --data matic:../shared/data/matic --seeds 5 --out bench/matic
    """
    from triptych.core.errors import InputError
    from triptych.core.io import atomic_output_dir
    from triptych.matic.benchmark import BenchConfig, run_benchmark

    chosen = [m.strip() for m in models.split(",") if m.strip()]
    unknown = set(chosen) - {"ple", "mmoe", "single", "rf", "chemprop"}
    if unknown:
        raise InputError(f"--models {sorted(unknown)} unknown; choose from ple,mmoe,single,rf,chemprop")
    cfg = BenchConfig(seeds, first_seed, epochs, patience, lr, gate, ncats_seeds, ncats_epochs, models=chosen)
    if merge:
        import json

        from triptych.core.results import write_results
        from triptych.matic.benchmark import merge_results, results_markdown

        parts = []
        for folder in merge:
            try:
                parts.append(json.loads((folder / "results.json").read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(
                    f"--merge {folder}: no readable results.json ({exc.__class__.__name__})"
                ) from None
        merged = merge_results(parts)
        with atomic_output_dir(out) as stage:
            write_results(
                stage,
                merged,
                results_markdown(merged, cfg).replace(
                    "Settings:", f"Merged from {', '.join(map(str, merge))}. Settings:"
                ),
            )
    else:
        # results are rewritten after each model (in the hidden staging folder); OUT is replaced at the end
        with atomic_output_dir(out) as stage:
            run_benchmark(data, stage, cfg, log=lambda s: typer.echo(s, err=True))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")


@app.command()
def screen(
    checkpoint: Annotated[Path, typer.Option(help="A matic.predictor checkpoint (model.safetensors).")],
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            help=(
                ".smi (SMILES [name]), .csv (smiles column), .sdf or .parquet, each .gz or not; repeat it or give a "
                "quoted glob ('lib/*.smi.gz') for a sharded library."
            ),
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help=(
                "A .csv: one .smi/.csv screened in this process, ranked (invalid lines to <stem>.invalid.csv). "
                "A folder: the library run on Ray (predictions.parquet, top.csv, summary.json, shards/ to resume)."
            )
        ),
    ] = Path("preds.csv"),
    smiles_col: SmilesColOpt = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated tasks you expect the checkpoint to predict (checked).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Molecules per forward pass (small batches stay in cache).")
    ] = 32,
    chunk: Annotated[
        int, typer.Option(help="Molecules read (and sorted by size) at a time; bounds memory.")
    ] = 2048,
    featurize_workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that each featurise and score batches (default: one per core on 2+ cores; "
            "0 = in this process)."
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads of the model in this process (0: all cores); worker processes use one each."
        ),
    ] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
    precision: Annotated[
        str,
        typer.Option(
            help="Model arithmetic: fp32, bf16, or auto (bf16 on a CPU with native bfloat16, e.g. AMX; "
            "rankings agree with fp32, see the MATIC speed results). The same in both screens."
        ),
    ] = "auto",
    prefilter: Annotated[
        float | None,
        typer.Option(
            help="Cascade: a fingerprint model ranks every molecule and the PLE scores only this fraction "
            "(e.g. 0.05); the others are listed after, unscored."
        ),
    ] = None,
    prefilter_model: Annotated[
        Path | None,
        typer.Option(
            help="The fingerprint model for --prefilter (default: prefilter.safetensors beside --checkpoint)."
        ),
    ] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    shard_size: Annotated[
        int, typer.Option(help="Library run: molecules per shard (the unit of resume).")
    ] = 10_000,
    top: Annotated[int, typer.Option(help="Library run: rows of top.csv (best unique parents).")] = 1000,
    tautomers: Annotated[
        bool,
        typer.Option(
            help="Library run: canonicalise tautomers too (slow; off since training SMILES were not)."
        ),
    ] = False,
    dedup: Annotated[
        str, typer.Option(help="Library run: duplicates are the same parent 'smiles' or 'inchikey'.")
    ] = "smiles",
    domain_ref: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "Library run: training set for the applicability domain (ncats, matic:DIR or files); default: the "
                "--data in metrics.json beside the checkpoint."
            )
        ),
    ] = None,
    domain_threshold: Annotated[
        float, typer.Option(help="Library run: in_domain if max Tanimoto >= this.")
    ] = 0.4,
    alerts: Annotated[bool, typer.Option(help="Library run: PAINS and Brenk alert columns.")] = True,
) -> None:
    """Score a SMILES library: each task's probability and the dual-activity score, ranked.

    Example: triptych matic screen --checkpoint runs/matic/model.safetensors --input library.smi --out preds.csv

    Cascade (a fingerprint model fitted with 'matic train --prefilter' ranks all, the PLE scores the best 5%):
    triptych matic screen --checkpoint runs/matic/model.safetensors --input library.smi --out preds.csv --prefilter 0.05

    Library scale (Ray, sharded, resumable; standardised parents, PAINS/Brenk alerts, domain flag):
    triptych matic screen --checkpoint runs/matic/model.safetensors --input 'lib/*.sdf.gz' --out screen_out --workers 8
    """
    if out.suffix.lower() != ".csv" or workers is not None or ray_address is not None:
        from triptych.matic.library_cli import screen_library_command

        if prefilter is not None:
            from triptych.core.errors import InputError

            raise InputError("--prefilter runs in the single-file screen; give a .csv as --out")

        screen_library_command(
            checkpoint=checkpoint,
            inputs=input,
            out=out,
            smiles_col=smiles_col,
            tasks=_tasks(tasks),
            batch_size=batch_size,
            precision=precision,
            threads=threads,
            device=device,
            workers=workers,
            ray_address=ray_address,
            shard_size=shard_size,
            top=top,
            tautomers=tautomers,
            dedup=dedup,
            domain_ref=domain_ref or [],
            domain_threshold=domain_threshold,
            alerts=alerts,
        )
        return
    from triptych.matic.library_cli import single_input

    input = single_input(input, out)
    import os

    from triptych.matic.cascade import (
        FILENAME,
        PrefilterPass,
        check_fraction,
        default_workers,
        load_prefilter_weights,
    )

    feat_workers = default_workers() if featurize_workers is None else featurize_workers
    cascade = early = None
    # Work that needs only RDKit and numpy starts now, in worker processes, and runs while this
    # process imports torch and loads the PLE (most of the start-up on a CPU): the cascade's
    # first pass, or else the featurisation of the first molecules.
    if prefilter is not None:
        check_fraction(prefilter)
        weights = load_prefilter_weights(prefilter_model or checkpoint.parent / FILENAME)
        cascade = PrefilterPass(weights, input, smiles_col, feat_workers)
    elif feat_workers and device == "cpu":
        from triptych.matic.early import FeaturePass

        early = FeaturePass(input, smiles_col, feat_workers)
    import torch

    from triptych.core.device import choose_device
    from triptych.matic.predictor import load_predictor
    from triptych.matic.screen import resolve_precision
    from triptych.matic.screen import screen as run_screen

    # Worker processes take a core each (one thread); in process, the model gets every core.
    torch.set_num_threads(threads or (1 if feat_workers else (os.cpu_count() or 1)))
    dev = str(choose_device(device))
    # No PyG modules: the stacked pass is all a screen runs, and PyG's import costs seconds per process.
    predictor = load_predictor(
        checkpoint,
        _tasks(tasks),
        dev,
        pyg=False,
        precision=resolve_precision(precision, dev),
    )
    result = run_screen(
        predictor,
        input,
        out,
        chunk=chunk,
        batch_size=batch_size,
        smiles_col=smiles_col,
        workers=feat_workers,
        prefilter=cascade,
        fraction=prefilter if prefilter is not None else 0.05,
        early=early,
    )
    if result.invalid:
        shown = ", ".join(f"line {n}" for n, _ in result.invalid[:10]) + (
            " ..." if len(result.invalid) > 10 else ""
        )
        typer.echo(
            f"warning: {len(result.invalid)} invalid SMILES skipped ({shown}); "
            f"see {out.with_name(out.stem + '.invalid.csv')}",
            err=True,
        )
    typer.echo(
        f"screened {result.n_valid}/{result.n_total} molecules in {result.seconds:.1f} s "
        f"({result.throughput:.0f} mol/s); ranked by dual score -> {out}"
    )


def _fit_prefilter(
    checkpoint: Path, extra_smiles: list[str], corpus: list[str] | None = None, n: int = 25_000
):
    """Fit and save ``prefilter.safetensors`` beside ``checkpoint`` (distilled from that PLE)."""
    from triptych.matic.predictor import load_predictor
    from triptych.matic.prefilter import FILENAME, default_corpus, fit_prefilter
    from triptych.matic.screen import resolve_precision

    smiles = [*extra_smiles, *(corpus if corpus is not None else default_corpus(n))]
    # Distilled from the scores the screen computes: its model path and precision.
    predictor = load_predictor(checkpoint, pyg=False, precision=resolve_precision("auto"))
    prefilter, held = fit_prefilter(predictor, smiles, log=lambda m: typer.echo(m, err=True))
    path = prefilter.save(
        checkpoint.parent / FILENAME, extra={"held_out": held, "distilled_from": checkpoint.name}
    )
    typer.echo(f"prefilter: {path}")
    return path


@app.command("prefilter")
def prefilter_cmd(
    checkpoint: Annotated[Path, typer.Option(help="The PLE checkpoint (model.safetensors) to distil.")],
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Molecules to distil on: a .smi/.csv file (default: 25,000 embedded MOSES SMILES)."
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="At most this many corpus molecules.")] = 25_000,
) -> None:
    """Fit the fingerprint prefilter of 'screen --prefilter' for an existing PLE; writes prefilter.safetensors beside it.

    Example: triptych matic prefilter --checkpoint runs/matic/model.safetensors
    """
    from triptych.matic.screen import read_chunks

    smiles = [s for rows in read_chunks(corpus) for _, s, _ in rows][:n] if corpus else None
    _fit_prefilter(checkpoint, [], smiles, n)


@app.command()
def explain(
    checkpoint: Annotated[Path, typer.Option(help="A matic.predictor checkpoint (model.safetensors).")],
    smiles: Annotated[list[str], typer.Option(help="Molecule(s) to explain; repeat the option for several.")],
    out: Annotated[Path, typer.Option(help="Folder for PNG/SVG maps, CSV tables and report.html.")] = Path(
        "matic_explain"
    ),
    reference: Annotated[
        str, typer.Option(help="Molecules for the property analysis: 'ncats' (embedded) or a CSV/.smi file.")
    ] = "ncats",
    n_reference: Annotated[
        int, typer.Option(help="Use at most this many reference molecules (seeded sample).")
    ] = 1000,
) -> None:
    """Atom attention per task and expert, gate weights, and property correlations, in report.html.

    Example: triptych matic explain --checkpoint runs/matic/model.safetensors --smiles 'O=C1N(c2ccccc2)[Se]c2ccccc12'
    """
    import numpy as np

    from triptych.matic.data import EMBEDDED, load_embedded
    from triptych.matic.explain import explain as run_explain
    from triptych.matic.predictor import load_predictor
    from triptych.matic.screen import read_chunks

    predictor = load_predictor(checkpoint)
    if reference == EMBEDDED:
        ref = load_embedded().smiles
    else:
        ref = [s for rows in read_chunks(reference) for _, s, _ in rows]
    if len(ref) > n_reference:
        ref = [ref[i] for i in sorted(np.random.default_rng(0).choice(len(ref), n_reference, replace=False))]
    run_explain(predictor, smiles, out, ref)
    typer.echo(f"wrote {out / 'report.html'} (attention maps, gate weights, property correlations)")


# ---------------------------------------------------------------- generator (MATIC part 2)
from triptych.matic.generate import cli as _generate_cli  # noqa: E402  (Typer-only module; heavy imports inside)

app.command("generate")(_generate_cli.generate_cmd)
app.command("rationales")(_generate_cli.rationales_cmd)
app.command("benchmark-generate")(_generate_cli.benchmark_generate_cmd)
app.command("pretrain")(_generate_cli.pretrain_cmd)

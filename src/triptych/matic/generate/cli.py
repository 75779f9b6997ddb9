"""Command functions of the generator, registered on ``triptych matic`` by ``triptych/matic/cli.py``.

``generate``, ``rationales``, ``benchmark-generate`` and ``pretrain``; each is a thin layer
over the Python API and imports RDKit / torch inside the function.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from triptych.core.trainer_flags import TrainerFlags, trainer_options

CheckpointOpt = Annotated[
    Path, typer.Option(help="Trained MATIC predictor (model.safetensors from `triptych matic train`).")
]
ActivesOpt = Annotated[
    Path | None,
    typer.Option(
        help="CSV of known molecules with the two label columns (1 = active); default: the embedded NCATS table."
    ),
]
ActiveColsOpt = Annotated[
    str | None,
    typer.Option(
        help="The two label columns of --actives, 'A,B', when they differ from the predictor's task names."
    ),
]
TasksOpt = Annotated[
    str | None, typer.Option(help="The predictor's two tasks 'A,B' (default: its first two).")
]
CompletionOpt = Annotated[
    Path | None,
    typer.Option(
        help="Completion model checkpoint from `triptych matic pretrain` (default: the embedded MOSES one)."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for search, sampling and updates.")]
MaxActivesOpt = Annotated[int, typer.Option(help="Actives per task searched by MCTS (best predicted first).")]
MaxRationalesOpt = Annotated[int, typer.Option(help="Dual rationales used as starting points.")]
RolloutsOpt = Annotated[int, typer.Option(help="MCTS rollouts per molecule.")]
CPuctOpt = Annotated[float, typer.Option(help="MCTS exploration constant.")]
MinAtomsOpt = Annotated[int, typer.Option(help="A rollout stops at fragments of this many atoms or fewer.")]
MaxAtomsOpt = Annotated[int, typer.Option(help="Largest single-task rationale kept (atoms).")]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="Rationale cache (JSON; default OUT/rationale_cache.json, kept when OUT is replaced by a rerun)."
    ),
]
RATIONALE_CACHE = ("rationale_cache.json",)  # the default cache's name inside OUT
RoundsOpt = Annotated[int, typer.Option(help="RL rounds.")]
SamplesOpt = Annotated[int, typer.Option(help="Completions sampled (and scored) per RL round.")]
GuideOpt = Annotated[
    str,
    typer.Option(
        help="States the MCTS scores: candidates (only fragments small enough to be rationales) or all (RationaleRL)."
    ),
]
PoolOpt = Annotated[int, typer.Option(help="Random actives per task scored to pick the --max-actives best.")]
ThreadsOpt = Annotated[
    int, typer.Option(help="Torch CPU threads (1 is fastest for these small models on busy cores).")
]


def _config(
    n: int,
    max_actives: int,
    max_rationales: int,
    rollouts: int,
    c_puct: float,
    min_atoms: int,
    max_atoms: int,
    rounds: int,
    samples_per_round: int,
    method: str,
    alpha: float,
    p_a: float,
    p_b: float,
    qed: float,
    sa: float,
    seed: int,
):
    from triptych.core.errors import InputError
    from triptych.matic.generate.finetune import FinetuneConfig
    from triptych.matic.generate.pipeline import GenerateConfig
    from triptych.matic.generate.rationale import MCTSConfig
    from triptych.matic.generate.scoring import Thresholds

    if method not in ("filtered", "pg"):
        raise InputError(
            f"--method {method!r}: choose filtered (property-filtered MLE) or pg (policy gradient)"
        )
    if n < 1 or rounds < 0 or samples_per_round < 1:
        raise InputError("--n and --samples-per-round must be >= 1 and --rounds >= 0")
    return GenerateConfig(
        n=n,
        max_actives=max_actives,
        max_rationales=max_rationales,
        mcts=MCTSConfig(
            c_puct=c_puct,
            rollouts=rollouts,
            min_atoms=min_atoms,
            max_atoms=max_atoms,
            threshold=min(p_a, p_b),
        ),
        finetune=FinetuneConfig(
            method=method,
            rounds=rounds,
            samples_per_round=samples_per_round,
            alpha=alpha,
            thresholds=Thresholds(p_a, p_b, qed, sa),
        ),
        seed=seed,
    )


def _completion(path: Path | None):
    from triptych.core.errors import InputError
    from triptych.matic.generate.completion import CompletionModel, default_checkpoint

    path = path or default_checkpoint()
    if not Path(path).is_file():
        raise InputError(
            f"completion model {path} not found; make one with `triptych matic pretrain --out {path}`"
        )
    return CompletionModel.load(path)


def _setup(checkpoint: Path, tasks: str | None, actives: Path | None, active_columns: str | None):
    from triptych.matic.generate.pipeline import load_actives
    from triptych.matic.generate.scoring import load_oracle, resolve_tasks

    predictor, oracle_id = load_oracle(checkpoint)
    idx = resolve_tasks(predictor, tasks)
    names = (predictor.tasks[idx[0]], predictor.tasks[idx[1]])
    cols = tuple(c.strip() for c in active_columns.split(",")) if active_columns else None
    if cols is not None and len(cols) != 2:
        from triptych.core.errors import InputError

        raise InputError(f"--active-columns {active_columns!r}: give two column names 'A,B'")
    return predictor, oracle_id, idx, names, load_actives(actives, names, cols)


def generate_cmd(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/matic_generate"),
    n: Annotated[int, typer.Option(help="Molecules to generate.")] = 1000,
    actives: ActivesOpt = None,
    active_columns: ActiveColsOpt = None,
    tasks: TasksOpt = None,
    completion: CompletionOpt = None,
    method: Annotated[
        str, typer.Option(help="RL update: filtered (property-filtered MLE, the paper) or pg.")
    ] = "filtered",
    rounds: RoundsOpt = 4,
    samples_per_round: SamplesOpt = 400,
    max_actives: MaxActivesOpt = 40,
    pool: PoolOpt = 300,
    max_rationales: MaxRationalesOpt = 40,
    rollouts: RolloutsOpt = 20,
    c_puct: CPuctOpt = 10.0,
    min_atoms: MinAtomsOpt = 15,
    max_atoms: MaxAtomsOpt = 20,
    guide: GuideOpt = "candidates",
    alpha: Annotated[float, typer.Option(help="Drop rationales whose success rate stays below this.")] = 0.5,
    p_a: Annotated[float, typer.Option(help="Success needs p(task A) >= this.")] = 0.5,
    p_b: Annotated[float, typer.Option(help="Success needs p(task B) >= this.")] = 0.5,
    qed: Annotated[float, typer.Option(help="Success needs QED >= this.")] = 0.6,
    sa: Annotated[float, typer.Option(help="Success needs SA score <= this.")] = 4.0,
    cache: CacheOpt = None,
    scaffold: Annotated[
        str | None,
        typer.Option(
            help="Grow every molecule from this core (SMILES, no attachment points); skips the rationale search."
        ),
    ] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 1,
) -> None:
    """Generate molecules predicted active on both tasks: MCTS rationales, completion, RL fine-tuning.

    Writes molecules.csv (smiles, p_a, p_b, qed, sa, success, novel, rationale), metrics.json,
    top_molecules.png, completion_finetuned.safetensors and report.html. With --scaffold, every
    molecule contains the given core (metrics.json: contains_scaffold).

    Example: triptych matic generate --checkpoint runs/matic_ple/model.safetensors --actives ../shared/data/matic/multi_train.csv --n 1000 --out runs/matic_gen

    Example (from a core): triptych matic generate --checkpoint runs/matic_ple/model.safetensors --scaffold 'c1ccc2ncccc2c1' --out runs/matic_gen_quinoline
    """
    from dataclasses import asdict, replace

    import torch

    from triptych.core.io import atomic_output_dir, check_replaceable
    from triptych.matic.generate.pipeline import config_dict, generate
    from triptych.matic.generate.report import write_generation
    from triptych.matic.generate.scoring import CountingOracle

    cfg = _config(
        n,
        max_actives,
        max_rationales,
        rollouts,
        c_puct,
        min_atoms,
        max_atoms,
        rounds,
        samples_per_round,
        method,
        alpha,
        p_a,
        p_b,
        qed,
        sa,
        seed,
    )
    cfg = replace(cfg, pool=pool, scaffold=scaffold, mcts=replace(cfg.mcts, guide=_guide(guide)))
    if scaffold is not None:
        from triptych.matic.generate.pipeline import scaffold_seed

        scaffold_seed(scaffold)  # a bad core fails before any model is loaded
    torch.set_num_threads(threads)
    check_replaceable(out, RATIONALE_CACHE)  # before the work: OUT is replaced whole at the end
    predictor, oracle_id, idx, names, known = _setup(checkpoint, tasks, actives, active_columns)
    model = _completion(completion)
    oracle = CountingOracle(predictor)
    result = generate(
        model, oracle, idx, known, cfg, cache=cache or out / RATIONALE_CACHE[0], oracle_id=oracle_id
    )
    metrics = {
        **result.metrics,
        "tasks": list(names),
        "stage_seconds": result.seconds,
        "config": config_dict(cfg),
        "predictor": str(checkpoint),
    }
    with atomic_output_dir(
        out, keep=RATIONALE_CACHE if cache is None else ()
    ) as stage:  # keeps its search cache
        model.save(stage / "completion_finetuned.safetensors", extra={"rounds": cfg.finetune.rounds})
        write_generation(
            stage,
            result.table,
            metrics,
            names,
            [asdict(r) for r in result.rounds],
            result.dual,
            "triptych matic generate " + shlex.join(sys.argv[3:] if len(sys.argv) > 3 else []),
        )
    m = result.metrics
    typer.echo(
        f"{m['n']} molecules: success {m['success']:.3f}  novelty {m['novelty']:.3f}  diversity "
        f"{m['diversity']:.3f}  validity {m['validity']:.3f}  uniqueness {m['uniqueness']:.3f}  "
        f"oracle calls {m['oracle_calls']}  ({m['seconds']:.0f} s)"
    )
    typer.echo(f"report: {out / 'report.html'}")


def rationales_cmd(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/matic_rationales"),
    actives: ActivesOpt = None,
    active_columns: ActiveColsOpt = None,
    tasks: TasksOpt = None,
    max_actives: MaxActivesOpt = 20,
    pool: PoolOpt = 300,
    rollouts: RolloutsOpt = 20,
    c_puct: CPuctOpt = 10.0,
    min_atoms: MinAtomsOpt = 15,
    max_atoms: MaxAtomsOpt = 20,
    threshold: Annotated[float, typer.Option(help="A rationale keeps predicted probability >= this.")] = 0.5,
    guide: GuideOpt = "candidates",
    cache: CacheOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Extract MCTS rationales per task, merge them into dual rationales, draw each inside its source molecule.

    Writes rationales.csv, rationales.json, rationales_*.png and report.html.

    Example: triptych matic rationales --checkpoint runs/matic_ple/model.safetensors --actives ../shared/data/matic/multi_train.csv --out runs/matic_rationales
    """
    from triptych.core.io import atomic_output_dir, check_replaceable
    from triptych.matic.generate.pipeline import GenerateConfig, dual_rationales
    from triptych.matic.generate.rationale import MCTSConfig
    from triptych.matic.generate.report import write_rationales
    from triptych.matic.generate.scoring import CountingOracle

    cfg = GenerateConfig(
        max_actives=max_actives,
        pool=pool,
        seed=seed,
        mcts=MCTSConfig(
            c_puct=c_puct,
            rollouts=rollouts,
            min_atoms=min_atoms,
            max_atoms=max_atoms,
            threshold=threshold,
            guide=_guide(guide),
        ),
    )
    check_replaceable(out, RATIONALE_CACHE)  # before the work: OUT is replaced whole at the end
    predictor, oracle_id, idx, _, known = _setup(checkpoint, tasks, actives, active_columns)
    oracle = CountingOracle(predictor)
    single, dual = dual_rationales(known, oracle, idx, cfg, cache or out / RATIONALE_CACHE[0], oracle_id)
    with atomic_output_dir(
        out, keep=RATIONALE_CACHE if cache is None else ()
    ) as stage:  # keeps its search cache
        write_rationales(stage, single, dual)
    typer.echo(
        f"rationales: {len(single[0])} + {len(single[1])} single-task, {len(dual)} dual "
        f"({oracle.calls} oracle calls); report: {out / 'report.html'}"
    )


def benchmark_generate_cmd(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Trained MATIC predictor used as the oracle (or give --oracle-data).")
    ] = None,
    oracle_data: Annotated[
        Path | None,
        typer.Option(help="Instead of --checkpoint: a CSV on which a Morgan random-forest oracle is fit."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder (results.json, results.md).")] = Path(
        "runs/matic_bench_generate"
    ),
    actives: ActivesOpt = None,
    active_columns: ActiveColsOpt = None,
    tasks: TasksOpt = None,
    completion: CompletionOpt = None,
    n: Annotated[int, typer.Option(help="Molecules per method.")] = 1000,
    rounds: RoundsOpt = 4,
    samples_per_round: SamplesOpt = 400,
    max_actives: MaxActivesOpt = 40,
    pool: PoolOpt = 300,
    max_rationales: MaxRationalesOpt = 40,
    rollouts: RolloutsOpt = 20,
    guide: GuideOpt = "candidates",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; every method runs once per seed.")] = "0",
    judge_data: Annotated[
        str | None,
        typer.Option(
            help="CSV the independent judge (Morgan random forest per task) is fit on, or 'ncats' (embedded); "
            "data the generator never sees."
        ),
    ] = None,
    judge_balanced: Annotated[
        bool, typer.Option(help="Weight the judge's classes (for screening data with few actives).")
    ] = False,
    judge_columns: Annotated[
        str | None, typer.Option(help="The judge table's two label columns 'A,B' (default: the task names).")
    ] = None,
    judge_test: Annotated[
        Path | None,
        typer.Option(help="Held-out CSV (same columns) on which the judge's ROC-AUC is reported."),
    ] = None,
    ablations: Annotated[
        bool, typer.Option(help="Also run MATIC with policy gradient and without RL.")
    ] = True,
    compare_guide: Annotated[
        bool,
        typer.Option(help="Also run the search with the other --guide and report its calls (search only)."),
    ] = False,
    threads: ThreadsOpt = 1,
) -> None:
    """Compare MATIC with a graph GA and best-of-dataset at equal oracle calls, judged by the oracle and by an independent model.

    Example: triptych matic benchmark-generate --checkpoint runs/matic_ple/model.safetensors --judge-data ../shared/data/matic/multi_train.csv --judge-test ../shared/data/matic/multi_test.csv --seeds 0,1,2 --out runs/matic_bench_generate
    """
    from dataclasses import replace

    import torch

    from triptych.core.errors import InputError
    from triptych.matic.generate.benchmark import run_benchmark

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seed_list:
        raise InputError(f"--seeds {seeds!r}: give at least one seed, e.g. 0")
    cfg = _config(
        n,
        max_actives,
        max_rationales,
        rollouts,
        10.0,
        15,
        20,
        rounds,
        samples_per_round,
        "filtered",
        0.5,
        0.5,
        0.5,
        0.6,
        4.0,
        seed_list[0],
    )
    cfg = replace(cfg, pool=pool, mcts=replace(cfg.mcts, guide=_guide(guide)))
    torch.set_num_threads(threads)
    if (checkpoint is None) == (oracle_data is None):
        raise InputError(
            "give the oracle: --checkpoint model.safetensors or --oracle-data train.csv (one of them)"
        )
    if oracle_data is not None:
        predictor, idx, names, known = _forest_setup(oracle_data, tasks, actives, active_columns)
    else:
        predictor, _, idx, names, known = _setup(checkpoint, tasks, actives, active_columns)
    judge, info = (
        _judge(judge_data, judge_columns, judge_test, names, known, judge_balanced)
        if judge_data
        else (None, None)
    )
    results = run_benchmark(
        predictor,
        idx,
        names,
        known,
        completion,
        cfg,
        out,
        seeds=seed_list,
        judge=judge,
        judge_info=info,
        ablations=ablations,
        compare_guide=compare_guide,
        command="triptych matic benchmark-generate " + shlex.join(sys.argv[3:] if len(sys.argv) > 3 else []),
    )
    from triptych.core.results import mean_sd

    for name, m in results["methods"].items():
        for who in ("oracle", "judge"):
            if who in m:
                typer.echo(
                    f"{name:>24} [{who:>6}]: success {mean_sd(m[who]['success'])}  novelty "
                    f"{mean_sd(m[who]['novelty'])}  diversity {mean_sd(m[who]['diversity'])}  "
                    f"calls {mean_sd(m['oracle_calls'], '{:.0f}')}"
                )
    typer.echo(f"results: {out / 'results.json'}")


def _guide(guide: str) -> str:
    from triptych.core.errors import InputError

    if guide not in ("candidates", "all"):
        raise InputError(
            f"--guide {guide!r}: choose candidates (score only fragments that can be rationales) or all"
        )
    return guide


def _forest_setup(path: Path, tasks: str | None, actives: Path | None, active_columns: str | None):
    """A Morgan random-forest oracle fit on ``path`` (columns ``tasks`` or the first two), and the actives."""
    from triptych.core.errors import InputError
    from triptych.matic.data import load_table
    from triptych.matic.generate.judge import ForestJudge
    from triptych.matic.generate.pipeline import load_actives

    cols = [c.strip() for c in tasks.split(",")] if tasks else None
    if cols is not None and len(cols) != 2:
        raise InputError(f"--tasks {tasks!r}: give two label columns of --oracle-data, 'A,B'")
    table = load_table(Path(path), None, cols, quiet=True)
    if len(table.tasks) < 2:
        raise InputError(f"--oracle-data {path}: needs two label columns; it has {table.tasks}")
    oracle = ForestJudge(table)
    names = (table.tasks[0], table.tasks[1])
    ac = tuple(c.strip() for c in active_columns.split(",")) if active_columns else None
    return oracle, (0, 1), names, load_actives(actives, names, ac)


def _judge(path: str, columns: str | None, test: Path | None, names: tuple[str, str], known, balanced: bool):
    """The independent judge fit on ``path``, and a description of it (data, overlap, held-out ROC-AUC)."""
    import numpy as np

    from triptych.core.errors import InputError
    from triptych.matic.data import load_embedded, load_table
    from triptych.matic.generate.judge import ForestJudge, overlap
    from triptych.matic.metrics import task_metrics

    cols = [c.strip() for c in (columns.split(",") if columns else names)]
    if len(cols) != 2:
        raise InputError(f"--judge-columns {columns!r}: give two column names 'A,B'")
    if path == "ncats":
        table = load_embedded()
        missing = [c for c in cols if c not in table.tasks]
        if missing:
            raise InputError(f"--judge-columns: the embedded NCATS table has {table.tasks}, not {missing}")
        train = type(table)(table.smiles, table.labels[:, [table.tasks.index(c) for c in cols]], cols)
        label = "the embedded NCATS 3CLpro + CPE table"
    else:
        train = load_table(Path(path), None, cols, quiet=True)
        label = Path(path).name
    judge = ForestJudge(train, balanced=balanced)
    info = {
        "description": (
            f"Morgan-fingerprint (r=2, 2048 bits) random forest{' (balanced class weights)' if balanced else ''}, "
            f"{judge.n_trees} trees per task, fit on {label} ({train.summary()}); never called by any generator. "
            f"{overlap(train.smiles, known.all):.1%} of its molecules are among the generator's known actives."
        ),
        "train": str(path),
        "balanced": balanced,
        "columns": cols,
        "overlap_with_known_actives": overlap(train.smiles, known.all),
    }
    if test is not None:
        held = load_table(test, None, cols, quiet=True)
        probs = judge.predict_proba(held.smiles)
        auc = {}
        for j, c in enumerate(cols):
            keep = ~np.isnan(held.labels[:, j])
            auc[c] = task_metrics(held.labels[keep, j], probs[keep, j])["roc_auc"]
        info["test"] = str(test)
        info["test_roc_auc"] = auc
        info["description"] += (
            " Held-out ROC-AUC on "
            + test.name
            + ": "
            + ", ".join(f"{c} {v:.3f}" for c, v in auc.items())
            + "."
        )
    return judge, info


@trainer_options(accelerator="cpu", devices="1", max_time="00:00:20:00")
def pretrain_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")] = Path(
        "runs/matic_completion.safetensors"
    ),
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="SMILES file (.csv/.csv.gz with a SMILES column, or .smi); default: the embedded 50k MOSES subset."
        ),
    ] = None,
    n_molecules: Annotated[int, typer.Option(help="Molecules used (train + 5% validation).")] = 40000,
    vocab_size: Annotated[int, typer.Option(help="Fragment vocabulary size.")] = 1000,
    hidden: Annotated[int, typer.Option(help="Hidden width of the policy.")] = 128,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    seed: SeedOpt = 0,
    flags: TrainerFlags = TrainerFlags(),  # the scale-out options, from @trainer_options
) -> None:
    """Pretrain the fragment-attachment completion model on drug-like molecules (MOSES by default).

    Example: triptych matic pretrain --out runs/matic_completion.safetensors --n-molecules 40000 --epochs 8
    """
    from triptych.core.results import json_text
    from triptych.core.runs import training_run_dir
    from triptych.core.seed import seed_everything
    from triptych.matic.generate.completion import embedded_corpus, pretrain, read_corpus

    seed_everything(seed)
    smiles = embedded_corpus() if corpus is None else read_corpus(corpus)
    # Lightning's checkpoints go to <stem>_training.partial/ while it trains (resumable after Ctrl-C), and
    # replace <stem>_training/ when done; OUT itself is written atomically at the end
    with training_run_dir(out.parent / (out.stem + "_training"), flags.resume) as run:
        _, info = pretrain(
            smiles,
            out,
            n_molecules=n_molecules,
            vocab_size=vocab_size,
            hidden=hidden,
            epochs=epochs,
            seed=seed,
            flags=flags,
            root_dir=run,
        )
    typer.echo(json_text(info, indent=None), nl=False)
    typer.echo(f"completion model: {out}")

"""Where a MATIC training step spends its time: the paper's PLE (full gates) on the paper split.

Times, per optimiser step over ``--steps`` steps after warm-up, with ``torch.set_num_threads``
given by ``--threads``:

- collate: the PyG ``DataLoader`` building a batch of 64 graphs (host work);
- stack: :func:`stack_weights` (re-stacking the five networks' parameters);
- forward (rest of the stacked pass, the gates and towers, the loss), backward, optimiser
  (gradient clipping + Adam), each with ``perf_counter`` around it;
- Lightning: one epoch through ``Trainer.fit`` (checkpoints, logging, clipping, validation) minus the
  bare loop's epoch (steps + validation forward).

and a ``torch.profiler`` table of the top operators (self CPU time) over a few steps.

Example:
    python benchmarks/matic_train_profile.py --data ../shared/data/matic --threads 1 \\
        --out benchmarks/results/matic_train_profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/matic"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (the model's train precision)")
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for profile_<tag>_<threads>t_<precision>.json/.txt"
    )
    ap.add_argument("--tag", default="new", help="label of the code profiled (e.g. old, new)")
    ap.add_argument(
        "--summarize", action="store_true", help="only write results.md/json from --out's profile_*.json"
    )
    args = ap.parse_args()
    if args.summarize:
        summarize(args.out)
        return
    torch.set_num_threads(args.threads)

    import lightning as L
    from torch_geometric.loader import DataLoader

    import triptych.matic.train as T
    from triptych.core.training import make_trainer
    from triptych.matic.data import load_splits
    from triptych.matic.stacked import stack_weights
    from triptych.matic.train import MaticModule, TrainConfig, labelled_only

    def loader(table, batch_size: int, shuffle: bool):
        """This tree's padded-array batches, or (old code) PyG's DataLoader of ``Data`` graphs."""
        if hasattr(T, "graph_loader"):
            return T.graph_loader(T.labelled_graphs(labelled_only(table)), batch_size, shuffle, seed=0)
        gen = torch.Generator().manual_seed(0) if shuffle else None
        return DataLoader(
            T.graphs_with_labels(labelled_only(table)), batch_size=batch_size, shuffle=shuffle, generator=gen
        )

    splits = load_splits(f"matic:{args.data}", "given", 0)
    try:
        config = TrainConfig(tasks=splits.tasks, seed=0, precision=args.precision)
    except TypeError:  # the code before --precision (PYTHONPATH=<old src>): fp32 only
        if args.precision != "fp32":
            raise
        config = TrainConfig(tasks=splits.tasks, seed=0)
    L.seed_everything(0, verbose=False)
    module = MaticModule(asdict(config))
    model = module.model
    model.train()
    opt = torch.optim.Adam(module.parameters(), lr=config.lr)
    dl = loader(splits.train, 64, shuffle=True)
    autocast = contextlib.nullcontext()  # (bf16 is the model's own train_dtype, set from the config)

    nets = [e.net for e in model.experts] + [g.net for g in model.gates]
    layers = len(nets[0].atom_convs) + 1

    def step(batch) -> dict[str, float]:
        t = {}
        t0 = time.perf_counter()
        with autocast:
            stack_weights(
                [dict(m.named_parameters()) for m in nets], layers
            )  # timed alone (also inside forward)
        t["stack"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with autocast:
            loss = module._loss(batch)
        t["forward"] = time.perf_counter() - t0 - t["stack"]  # forward includes one stacking
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t["backward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        t["optimiser"] = time.perf_counter() - t0
        return t

    # Bare loop: collate separately from the step.
    rows = []
    it = iter(dl)
    for i in range(args.steps + 3):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dl)
            batch = next(it)
        collate = time.perf_counter() - t0
        r = step(batch)
        r["collate"] = collate
        r["atoms"] = int(batch.x.shape[0])
        if i >= 3:
            rows.append(r)
    keys = ["collate", "stack", "forward", "backward", "optimiser"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    mean["step_total"] = sum(mean.values())

    # One full epoch, bare loop (with validation forward as Lightning does it).
    val = loader(splits.val, 256, shuffle=False)
    t0 = time.perf_counter()
    for batch in dl:
        step(batch)
    module.eval()
    with torch.no_grad(), autocast:
        for batch in val:
            module._loss(batch)
    module.train()
    bare_epoch = time.perf_counter() - t0

    # One epoch through Lightning (as ``train_predictor`` runs it: checkpoints, logging, clipping).
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(
            None,
            max_epochs=1,
            default_root_dir=tmp,
            monitor="val_loss",
            patience=3,
            enable_progress_bar=False,
            deterministic=False,
            log_every_n_steps=10,
            gradient_clip_val=1.0,
            accelerator="cpu",
            precision="32-true",
        )
        epoch_times: list[float] = []

        class EpochTimer(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                self.t0 = time.perf_counter()

            def on_validation_epoch_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    epoch_times.append(time.perf_counter() - self.t0)

        trainer.callbacks.append(EpochTimer())
        lm = MaticModule(asdict(config))
        trainer.fit(lm, dl, val)
    lightning_epoch = epoch_times[-1]

    # Operator table.
    from torch.profiler import ProfilerActivity, profile

    it = iter(dl)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(6):
            step(next(it))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)

    result = {
        "code": args.tag,
        "threads": args.threads,
        "precision": args.precision,
        "steps_per_epoch": len(dl),
        "mean_atoms_per_batch": sum(r["atoms"] for r in rows) / len(rows),
        "per_step_s": mean,
        "share": {k: mean[k] / mean["step_total"] for k in keys},
        "bare_epoch_s": bare_epoch,
        "lightning_epoch_s": lightning_epoch,
        "lightning_overhead_s": lightning_epoch - bare_epoch,
        "load1": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=1))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = f"{args.tag}_{args.threads}t_{args.precision}"
        (args.out / f"profile_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"profile_{tag}_ops.txt").write_text(table + "\n")


def summarize(out: Path) -> None:
    """One table of every ``profile_*.json`` in ``out`` (each written by a run of this script)."""
    from triptych.core.results import markdown_table, write_results

    profiles = [json.loads(f.read_text()) for f in sorted(out.glob("profile_*.json"))]
    rows = []
    for r in profiles:
        ms = {k: 1000 * v for k, v in r["per_step_s"].items()}
        rows.append(
            {
                "code": r["code"],
                "threads": r["threads"],
                "precision": r["precision"],
                "date": r["date"],
                "load1": r["load1"],
                "collate ms": ms["collate"],
                "stack ms": ms["stack"],
                "forward ms": ms["forward"],
                "backward ms": ms["backward"],
                "optimiser ms": ms["optimiser"],
                "step ms": ms["step_total"],
                "bare epoch s": r["bare_epoch_s"],
                "Lightning epoch s": r["lightning_epoch_s"],
                "Lightning overhead s": r["lightning_overhead_s"],
            }
        )
    md = [
        "# Where a MATIC training step spends its time\n",
        "The paper's PLE (full gates, 5 Attentive FPs), batch 64, the paper split (33 steps per epoch). "
        "Per-step wall times (mean over the measured steps, after 3 warm-up steps), each run a whole "
        "process under `/work/wt/timed` (every other job at autogroup nice 19; load1 is mostly those). "
        "`code`: old = before this change (PyG DataLoader, fp32, per-step PyG collate), new = this tree. "
        "Operator tables: `profile_<code>_<threads>t_<precision>_ops.txt`.\n",
        "Command (per row): `OMP_NUM_THREADS=T python benchmarks/matic_train_profile.py --data "
        "../shared/data/matic --threads T --precision P --tag CODE --out benchmarks/results/matic_train_profile` "
        "(old: with `PYTHONPATH=<git archive of the old revision>/src`); this table: `--summarize`.\n",
        markdown_table(rows, floatfmt="{:.1f}"),
    ]
    write_results(out, {"profiles": profiles}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()

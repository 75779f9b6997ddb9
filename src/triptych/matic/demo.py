"""``triptych demo`` step for MATIC: brief training on the embedded NCATS data, a screen, one attention map."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from triptych.core.demo import register_demo
from triptych.core.io import write_text
from triptych.core.report import Report, Section

# A few molecules to screen: known 3CLpro binders and two plain drugs, plus one invalid SMILES.
DEMO_LIBRARY = [
    ("ebselen", "O=c1c2ccccc2[se]n1-c1ccccc1"),
    ("boceprevir", "CC(C)(C)NC(=O)N[C@H](C(=O)N1C[C@H]2[C@@H]([C@H]1C(=O)NC(CC1CCC1)C(=O)C(N)=O)C2(C)C)C(C)(C)C"),
    ("hexachlorophene", "Oc1c(Cl)cc(Cl)c(Cl)c1Cc1c(O)c(Cl)cc(Cl)c1Cl"),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"),
    ("not a molecule", "C1CC(("),
]


@register_demo("matic", "MATIC: dual-activity screening")
def run(out_dir: Path) -> Section:
    """Train a small PLE for a few epochs, screen ``DEMO_LIBRARY``, explain the top hit; write report.html."""
    from triptych.core.training import TrainerFlags
    from triptych.matic.data import Splits, load_embedded
    from triptych.matic.evaluation import evaluate_checkpoint
    from triptych.matic.explain import explain
    from triptych.matic.predictor import load_predictor
    from triptych.matic.screen import screen
    from triptych.matic.train import TrainConfig, train_predictor

    out_dir = Path(out_dir)
    table = load_embedded()
    rng = np.random.default_rng(0)
    both = np.flatnonzero(~np.isnan(table.labels).any(axis=1))
    actives = both[np.nansum(table.labels[both], axis=1) > 0]  # keep every active so the tasks are learnable
    idx = np.concatenate([actives, rng.choice(np.setdiff1d(both, actives), 700, replace=False)])
    idx = rng.permutation(idx)
    n = len(idx)
    splits = Splits(table.subset(idx[: int(0.7 * n)]), table.subset(idx[int(0.7 * n): int(0.85 * n)]),
                    table.subset(idx[int(0.85 * n):]), "demo subset")
    config = TrainConfig(tasks=table.tasks, gate="light", max_epochs=6, patience=3, lr=1e-3)
    model = train_predictor(splits, config, out_dir / "train", TrainerFlags(accelerator="cpu", devices="1"),
                            progress=False)
    metrics = evaluate_checkpoint(model, splits.test)
    library = out_dir / "library.smi"
    write_text(library, "".join(f"{s} {name}\n" for name, s in DEMO_LIBRARY))
    result = screen(load_predictor(model), library, out_dir / "preds.csv")
    with open(result.out, newline="") as handle:
        ranked = list(csv.DictReader(handle))
    predictor = load_predictor(model)
    explain(predictor, [ranked[0]["smiles"]], out_dir / "explain", splits.test.smiles, "MATIC demo: attention")

    section = Section("MATIC: dual-activity screening")
    section.text(f"A PLE (light gates) trained for at most {config.max_epochs} epochs on {len(splits.train)} "
                 "molecules of the embedded NCATS 3CLpro + CPE table (all dual-labelled actives plus 700 "
                 "inactives), then screened on a small library. A demo, not a benchmark.")
    section.table([{"task": t, "test ROC-AUC": m["roc_auc"], "test PR-AUC": m["pr_auc"], "n": m["n"]}
                   for t, m in metrics.items()])
    section.table([{k: r[k] for k in ("rank", "name", "p_label_3cl", "p_label_cell", "dual_score")} for r in ranked],
                  caption=f"Screen: {result.n_valid}/{result.n_total} valid; invalid lines "
                  f"{[n for n, _ in result.invalid]}")
    section.figure(out_dir / "explain" / "mol1_task_label_3cl.png",
                   caption=f"3CL-task attention of the top hit, {ranked[0]['name']}")
    section.link("explain/report.html", "Interpretation report")
    from triptych.matic.generate.demo import generation_round  # MATIC part 2: a small generation round

    section.blocks += generation_round(predictor, out_dir / "generate").blocks
    section.link("generate/report.html", "Generation report")
    report = Report("MATIC demo")
    report.add(section)
    report.write(out_dir / "report.html")
    return section

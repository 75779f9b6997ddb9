"""``triptych demo`` step for MATIC: the shipped predictor on its held-out molecules, a screen, a generation round.

The predictor (``weights/demo_predictor.safetensors``) was trained by
``benchmarks/train_demo_weights.py`` on the embedded NCATS table with :func:`demo_splits`;
nothing is trained here. The demo rebuilds the same split and measures the test ROC-AUC
again on the test molecules, which training never saw (nor used for early stopping).
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

from triptych.core.demo import DemoResult, register_demo
from triptych.core.io import write_text
from triptych.core.report import Report, Section

WEIGHTS = "demo_predictor.safetensors"
SPLIT, SPLIT_SEED = (
    "random",
    0,
)  # the paper's protocol (random split); the weights were trained on its train part

# A few molecules to screen: known 3CLpro binders and two plain drugs, plus one invalid SMILES.
DEMO_LIBRARY = [
    ("ebselen", "O=c1c2ccccc2[se]n1-c1ccccc1"),
    (
        "boceprevir",
        "CC(C)(C)NC(=O)N[C@H](C(=O)N1C[C@H]2[C@@H]([C@H]1C(=O)NC(CC1CCC1)C(=O)C(N)=O)C2(C)C)C(C)(C)C",
    ),
    ("hexachlorophene", "Oc1c(Cl)cc(Cl)c(Cl)c1Cc1c(O)c(Cl)cc(Cl)c1Cl"),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"),
    ("not a molecule", "C1CC(("),
]


def demo_splits():
    """The embedded NCATS table split 80/10/10 the way the shipped predictor was trained."""
    from triptych.matic.data import load_splits

    return load_splits("ncats", SPLIT, SPLIT_SEED)


def heldout_metrics(predictor, test) -> dict[str, dict[str, float]]:
    """Per-task ROC-AUC, PR-AUC ... of ``predictor`` on the held-out ``test`` table."""
    from triptych.matic.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(predictor, test)


def shipped_predictor():
    from triptych.matic.predictor import load_predictor

    with resources.as_file(resources.files("triptych.matic") / "weights" / WEIGHTS) as path:
        return load_predictor(path)


@register_demo("matic", "MATIC: dual-activity screening")
def run(out_dir: Path) -> DemoResult:
    """Held-out metrics of the shipped predictor, a screen of ``DEMO_LIBRARY``, attention of the top hit, generation."""
    from triptych.matic.explain import explain
    from triptych.matic.screen import screen

    out_dir = Path(out_dir)
    predictor = shipped_predictor()
    splits = demo_splits()
    metrics = heldout_metrics(predictor, splits.test)
    library = out_dir / "library.smi"
    write_text(library, "".join(f"{s} {name}\n" for name, s in DEMO_LIBRARY))
    result = screen(predictor, library, out_dir / "preds.csv")
    with open(result.out, newline="") as handle:
        ranked = list(csv.DictReader(handle))
    explain(
        predictor, [ranked[0]["smiles"]], out_dir / "explain", splits.test.smiles, "MATIC demo: attention"
    )

    aucs = {t: m["roc_auc"] for t, m in metrics.items()}
    section = Section("MATIC: dual-activity screening")
    section.text(
        f"The shipped multi-task Attentive FP (PLE, light gates) was trained by "
        f"benchmarks/train_demo_weights.py on the embedded NCATS table (3CLpro enzyme inhibition + "
        f"SARS-CoV-2 cell activity), {SPLIT} split seed {SPLIT_SEED}: {len(splits.train)} training molecules (it was fit "
        f"on every active among them and a seeded sample of 1,500 inactives) and {len(splits.val)} validation molecules. The demo rebuilt that split and scored the "
        f"{len(splits.test)} test molecules just now; training never saw them. ROC-AUC 0.5 is chance."
    )
    section.table(
        [
            {"task": t, "held-out ROC-AUC": m["roc_auc"], "held-out PR-AUC": m["pr_auc"], "labelled": m["n"]}
            for t, m in metrics.items()
        ],
        caption="Held-out test molecules",
    )
    section.table(
        [{k: r[k] for k in ("rank", "name", "p_label_3cl", "p_label_cell", "dual_score")} for r in ranked],
        caption=f"Screen of a small library: {result.n_valid}/{result.n_total} valid; invalid lines "
        f"{[n for n, _ in result.invalid]}",
    )
    section.figure(
        out_dir / "explain" / "mol1_task_label_3cl.png",
        caption=f"3CL-task attention of the top hit, {ranked[0]['name']}",
    )
    section.link("explain/report.html", "Interpretation report")
    from triptych.matic.generate.demo import generation_round  # MATIC part 2: a small generation round

    generation, made = generation_round(predictor, out_dir / "generate")
    section.blocks += generation.blocks
    if (out_dir / "generate" / "report.html").is_file():
        section.link("generate/report.html", "Generation report")
    report = Report("MATIC demo")
    report.add(section)
    report.write(out_dir / "report.html")
    auc = ", ".join(f"{t.removeprefix('label_')} {v:.2f}" for t, v in aucs.items())
    return DemoResult(
        section, f"held-out ROC-AUC {auc} ({SPLIT} split, {len(splits.test)} test molecules); {made}"
    )

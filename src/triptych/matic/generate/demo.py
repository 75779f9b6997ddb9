"""A small generation round for ``triptych demo`` (called from ``triptych/matic/demo.py``), well under a minute."""

from __future__ import annotations

import time
from pathlib import Path

from triptych.core.report import Section


def generation_round(predictor, out_dir: Path, n: int = 100) -> tuple[Section, str]:
    """Rationales of a few embedded actives, one filtered-MLE round, ``n`` molecules; writes report.html.

    Returns the report section and a short phrase for the demo's summary table.
    """
    from triptych.core.errors import InputError
    from triptych.core.io import atomic_output_dir
    from triptych.matic.generate.completion import CompletionModel, default_checkpoint
    from triptych.matic.generate.finetune import FinetuneConfig
    from triptych.matic.generate.pipeline import GenerateConfig, generate, load_actives
    from triptych.matic.generate.rationale import MCTSConfig
    from triptych.matic.generate.report import write_generation
    from triptych.matic.generate.scoring import CountingOracle

    start = time.perf_counter()
    names = (predictor.tasks[0], predictor.tasks[1])
    actives = load_actives(None, names)
    cfg = GenerateConfig(n=n, max_actives=4, pool=40, max_rationales=8, merge_pairs=60, mcts=MCTSConfig(rollouts=8),
                         finetune=FinetuneConfig(rounds=1, samples_per_round=60, min_keep=3))
    oracle = CountingOracle(predictor)
    try:
        result = generate(CompletionModel.load(default_checkpoint()), oracle, (0, 1), actives, cfg)
    except InputError as exc:  # the search may find no rationale; say so plainly rather than fail the demo
        return Section("MATIC: generation round").text(f"No molecules generated: {exc}"), "generation: none (no rationale)"
    with atomic_output_dir(out_dir) as stage:
        section = write_generation(stage, result.table, result.metrics, names, [], result.dual,
                                   "triptych matic generate --checkpoint MODEL --n 100 --rounds 1 --max-actives 4")
    m = result.metrics
    section.title = "MATIC: generation round"
    section.blocks.insert(0, {"type": "text", "text": (
        f"MCTS rationales of {cfg.max_actives} embedded actives per task ({len(result.dual)} dual rationales), the "
        f"shipped MOSES-pretrained completion model, one filtered-MLE round, {n} molecules, scored by the predictor "
        f"above ({time.perf_counter() - start:.0f} s). Success means both predicted probabilities >= 0.5, QED >= 0.6 "
        f"and SA <= 4. A short demo budget: the numbers show the pipeline working, not its best.")})
    phrase = (f"generated {m['n']} molecules ({m['validity']:.0%} valid), {m['success']:.0%} meeting all four "
              f"constraints")
    return section, phrase

"""The whole generator, end to end: actives -> MCTS rationales -> dual rationales -> RL -> n molecules.

Every predictor call of every stage goes through one :class:`CountingOracle`, so the
reported oracle-call count is the budget the baselines get.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from triptych.core.errors import InputError
from triptych.core.seed import seed_everything
from triptych.matic.chem import fingerprints, mol_from_smiles
from triptych.matic.generate.completion import CompletionModel
from triptych.matic.generate.finetune import FinetuneConfig, RoundLog, finetune, sample_scored, spread
from triptych.matic.generate.metrics import generation_metrics, novel_flags
from triptych.matic.generate.rationale import MCTSConfig, Rationale, extract_rationales, merge_rationales
from triptych.matic.generate.scoring import CountingOracle, Scores, Thresholds, qed_sa


@dataclass(frozen=True)
class GenerateConfig:
    """Pipeline parameters.

    ``max_actives``: MCTS runs on this many actives per task, the best predicted among a
    seeded random ``pool`` of each task's actives (scoring every active costs oracle calls).
    ``max_source_atoms``: larger actives (peptides, macrocycles) are not searched: cutting
    a 150-atom molecule down to a 20-atom rationale costs hundreds of expansions.
    ``scaffold``: a user's core (SMILES); when given it is the only starting point, no
    rationale is searched, and every molecule generated contains it.
    """

    n: int = 1000
    max_actives: int = 40
    pool: int = 300
    max_source_atoms: int = 50
    max_rationales: int = 40
    max_dual_atoms: int = 30
    merge_pairs: int = 400
    mcts: MCTSConfig = field(default_factory=MCTSConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    scaffold: str | None = None


@dataclass
class Actives:
    """Known actives per task (for rationale extraction) and all of them (the novelty reference)."""

    per_task: tuple[list[str], list[str]]

    @property
    def all(self) -> list[str]:
        return sorted(set(self.per_task[0]) | set(self.per_task[1]))


@dataclass
class GenerationResult:
    """Generated molecules with their scores, the metrics, the rationales and how the run went."""

    table: pd.DataFrame
    metrics: dict[str, Any]
    single: tuple[list[Rationale], list[Rationale]]
    dual: list[Rationale]
    kept: list[str]
    rounds: list[RoundLog]
    seconds: dict[str, float]


def load_actives(
    path: str | Path | None, task_names: tuple[str, str], columns: tuple[str, str] | None = None
) -> Actives:
    """Actives (label 1) per task from a CSV of SMILES and labels, or from the embedded NCATS table.

    ``columns`` names the two label columns when they differ from the predictor's task names.
    """
    from triptych.matic.data import load_embedded, load_table

    cols = list(columns or task_names)
    table = load_embedded() if path is None else load_table(path, None, cols, quiet=True)
    missing = [c for c in cols if c not in table.tasks]
    if missing:
        raise InputError(
            f"actives table has no column(s) {missing} (it has {table.tasks}); pass --active-columns A,B"
        )
    out = []
    for c in cols:
        j = table.tasks.index(c)
        out.append([s for s, y in zip(table.smiles, table.labels[:, j], strict=True) if y == 1])
    if not out[0] or not out[1]:
        raise InputError(
            f"actives table {path or 'ncats'}: no active (label 1) for {cols[0 if not out[0] else 1]!r}"
        )
    return Actives((out[0], out[1]))


def pick_actives(
    actives: Sequence[str],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    n: int,
    pool: int | None = None,
    seed: int = 0,
    max_atoms: int | None = None,
) -> list[str]:
    """The ``n`` actives with the highest predicted p_A x p_B (those most likely to hold a dual rationale).

    With ``pool``, only a seeded random subset of that many actives is scored; with
    ``max_atoms``, only actives of at most that many heavy atoms are considered.
    """
    if max_atoms is not None:
        mols = [mol_from_smiles(s) for s in actives]
        actives = [
            s for s, m in zip(actives, mols, strict=True) if m is not None and m.GetNumAtoms() <= max_atoms
        ]
    if not actives:
        return []
    if pool is not None and len(actives) > pool:
        rng = np.random.default_rng(seed)
        actives = [actives[i] for i in sorted(rng.choice(len(actives), pool, replace=False))]
    p = oracle.predict_proba(list(actives))
    joint = np.nan_to_num(p[:, tasks[0]] * p[:, tasks[1]], nan=-1.0)
    return [actives[i] for i in np.argsort(-joint, kind="stable")[:n]]


def feasible_first(rationales: Sequence[Rationale], thresholds: Thresholds) -> list[str]:
    """Rationale SMILES ranked for seeding: those already within the SA limit first, then by p_A · p_B · QED.

    Completion only adds atoms, so a rationale's synthetic-accessibility score is roughly a
    floor for its completions: seeding with complex, dual-active but hard-to-make cores
    (polycyclic natural-product fragments) gives the filtered-MLE update no survivors at all.
    """
    smiles = [r.smiles for r in rationales]
    qed, sa = qed_sa(smiles)
    joint = np.array([np.prod(r.proba[:2]) for r in rationales]) * np.nan_to_num(qed)
    order = sorted(range(len(smiles)), key=lambda i: (not sa[i] <= thresholds.sa, -joint[i], smiles[i]))
    return [smiles[i] for i in order]


def diverse_top(ranked: Sequence[str], k: int, max_similarity: float = 0.7) -> list[str]:
    """Greedily the first ``k`` of ``ranked`` whose Tanimoto to every one already taken is <= ``max_similarity``."""
    from rdkit import DataStructs

    taken: list[str] = []
    fps: list = []
    for smiles, fp in zip(ranked, fingerprints(ranked), strict=True):
        if len(taken) >= k:
            break
        if fp is None or (fps and max(DataStructs.BulkTanimotoSimilarity(fp, fps)) > max_similarity):
            continue
        taken.append(smiles)
        fps.append(fp)
    return taken


def scaffold_seed(smiles: str) -> str:
    """The canonical SMILES of a user's core, or an :class:`InputError` naming what is wrong with it."""
    from rdkit import Chem

    mol = mol_from_smiles(smiles)
    if mol is None:
        raise InputError(f"--scaffold {smiles!r}: not a valid SMILES; give the core, e.g. 'c1ccc2[nH]ccc2c1'")
    if any(a.GetAtomicNum() == 0 for a in mol.GetAtoms()):
        raise InputError(
            f"--scaffold {smiles!r}: drop the attachment points (*); growth starts at any free H"
        )
    if "." in Chem.MolToSmiles(mol):
        raise InputError(f"--scaffold {smiles!r}: give one connected core, not several fragments")
    if not any(a.GetTotalNumHs() > 0 for a in mol.GetAtoms()):
        raise InputError(
            f"--scaffold {smiles!r}: the core has no hydrogen to replace, so nothing can be added"
        )
    return Chem.MolToSmiles(mol)


def contains_core(smiles: Sequence[str | None], core: str) -> np.ndarray:
    """Whether each molecule contains ``core`` as a substructure (False for invalid ones)."""
    query = mol_from_smiles(core)
    mols = [mol_from_smiles(s) if s else None for s in smiles]
    return np.array([m is not None and m.HasSubstructMatch(query) for m in mols], dtype=bool)


def scored_table(
    scores: Scores, rationales: Sequence[str], novel: np.ndarray, thresholds: Thresholds
) -> pd.DataFrame:
    """One row per generated molecule, as written to molecules.csv."""
    return pd.DataFrame(
        {
            "smiles": scores.smiles,
            "p_a": scores.p_a,
            "p_b": scores.p_b,
            "qed": scores.qed,
            "sa": scores.sa,
            "success": scores.success(thresholds),
            "novel": novel,
            "rationale": list(rationales),
        }
    )


def dual_rationales(
    actives: Actives,
    oracle: CountingOracle,
    tasks: tuple[int, int],
    cfg: GenerateConfig,
    cache: str | Path | None,
    oracle_id: str,
) -> tuple[tuple[list[Rationale], list[Rationale]], list[Rationale]]:
    """MCTS on the best-predicted actives of each task, then merge into dual rationales."""
    single = []
    for k, task in enumerate(tasks):
        chosen = pick_actives(
            actives.per_task[k], oracle, tasks, cfg.max_actives, cfg.pool, cfg.seed, cfg.max_source_atoms
        )
        single.append(extract_rationales(chosen, oracle, task, cfg.mcts, cache=cache, oracle_id=oracle_id))
    dual = merge_rationales(
        single[0],
        single[1],
        oracle,
        tasks,
        threshold=cfg.mcts.threshold,
        max_atoms=cfg.max_dual_atoms,
        max_pairs=cfg.merge_pairs,
    )
    return (single[0], single[1]), dual


def generate(
    model: CompletionModel,
    oracle: CountingOracle,
    tasks: tuple[int, int],
    actives: Actives,
    cfg: GenerateConfig = GenerateConfig(),
    *,
    cache: str | Path | None = None,
    oracle_id: str = "",
    rationales: tuple[tuple[list[Rationale], list[Rationale]], list[Rationale]] | None = None,
) -> GenerationResult:
    """Run the pipeline; ``rationales`` (from an earlier run with the same oracle) skips the search.

    With ``cfg.scaffold`` the core is the only seed and the search is skipped.
    """
    gen = seed_everything(cfg.seed)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    core = scaffold_seed(cfg.scaffold) if cfg.scaffold else None
    if core is not None:
        rationales = (([], []), [])
    elif rationales is None:
        rationales = dual_rationales(actives, oracle, tasks, cfg, cache, oracle_id)
    single, dual = rationales
    seconds["rationales"] = time.perf_counter() - start
    search_calls = oracle.calls
    seeds = [core] if core else diverse_top(feasible_first(dual, cfg.finetune.thresholds), cfg.max_rationales)
    if not seeds:  # no dual rationale: fall back on the best single-task ones, and say so in the metrics
        best = sorted([*single[0], *single[1]], key=lambda r: -r.proba[0])
        seeds = diverse_top([r.smiles for r in best], cfg.max_rationales)
    if not seeds:
        raise InputError(
            "no rationale found: no active molecule keeps p >= threshold under MCTS; "
            "check the predictor and --actives, or lower --threshold"
        )
    t = time.perf_counter()
    kept, rounds = finetune(model, seeds, oracle, tasks, cfg.finetune, seed=cfg.seed)
    seconds["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    batch = spread(kept, cfg.n)
    scores, _ = sample_scored(model, batch, oracle, tasks, cfg.finetune.temperature, gen)
    novel = novel_flags(scores.smiles, [fp for fp in fingerprints(actives.all) if fp is not None])
    seconds["sample"] = time.perf_counter() - t
    metrics = generation_metrics(scores, cfg.finetune.thresholds, novel)
    metrics.update(
        {
            "oracle_calls": oracle.calls,
            "search_oracle_calls": search_calls,
            "n_dual_rationales": len(dual),
            "n_rationales_used": len(seeds),
            "n_rationales_kept": len(kept),
            "dual_rationales_found": bool(dual),
            "seconds": time.perf_counter() - start,
        }
    )
    if core is not None:
        metrics.update(
            {"scaffold": core, "contains_scaffold": float(contains_core(scores.smiles, core).mean())}
        )
    table = scored_table(scores, batch, novel, cfg.finetune.thresholds)
    return GenerationResult(table, metrics, single, dual, kept, rounds, seconds)


def config_dict(cfg: GenerateConfig) -> dict[str, Any]:
    """The configuration as plain JSON-able data (for metrics.json)."""
    return json.loads(json.dumps(asdict(cfg), default=str))

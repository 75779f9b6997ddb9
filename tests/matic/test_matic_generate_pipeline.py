"""Scoring, metrics, RL rounds, baselines and the whole pipeline with a hand-made oracle."""

import numpy as np
import pytest
from rdkit import Chem

from triptych.matic.chem import fingerprints
from triptych.matic.generate.baselines import best_of_dataset, crossover, graph_ga, mutate
from triptych.matic.generate.completion import CompletionModel, default_checkpoint, embedded_corpus
from triptych.matic.generate.finetune import FinetuneConfig
from triptych.matic.generate.metrics import diversity, generation_metrics, novel_flags
from triptych.matic.generate.pipeline import Actives, GenerateConfig, generate
from triptych.matic.generate.rationale import MCTSConfig
from triptych.matic.generate.scoring import (
    BudgetExhausted,
    CountingOracle,
    Scores,
    SubstructureOracle,
    Thresholds,
    score,
)

PATTERNS = {"quinoline": "c1ccc2ncccc2c1", "amide": "C(=O)N"}
ACTIVES = Actives(
    (
        ["O=C(Nc1ccc2ncccc2c1)C1CCCCC1", "CC(=O)Nc1ccc2ncccc2c1", "Cc1ccc2ncccc2c1"],
        ["O=C(Nc1ccc2ncccc2c1)C1CCCCC1", "CC(C)NC(=O)c1ccccc1", "CN(C)C(=O)C1CCCC1"],
    )
)


def test_counting_oracle_caches_counts_and_enforces_the_budget():
    oracle = CountingOracle(SubstructureOracle(PATTERNS), budget=3)
    p = oracle.predict_proba(["c1ccc2ncccc2c1", "C1=CC=C2N=CC=CC2=C1", "CC(N)=O", "not a smiles"])
    assert oracle.calls == 2  # the Kekulé quinoline is the same molecule; invalid SMILES cost nothing
    np.testing.assert_allclose(p[:3], [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    assert np.isnan(p[3]).all()
    with pytest.raises(BudgetExhausted):
        oracle.predict_proba(["CCO", "CCN"])


def test_success_needs_all_four_constraints():
    s = Scores(
        ["CCO", "CCN", None],
        np.array([0.6, 0.4, np.nan]),
        np.array([0.7, 0.9, np.nan]),
        np.array([0.65, 0.9, np.nan]),
        np.array([3.0, 2.0, np.nan]),
    )
    assert s.success(Thresholds()).tolist() == [True, False, False]
    assert s.success(Thresholds(qed=0.7)).tolist() == [False, False, False]


def test_metrics_on_known_sets():
    assert diversity(["CCO", "CCO"]) != diversity(["CCO", "CCO"])  # NaN: one distinct molecule
    assert diversity(["c1ccccc1", "CCCCCCCCO"]) == pytest.approx(1.0)  # no shared Morgan bits
    ref = [fp for fp in fingerprints(["O=C(Nc1ccc2ncccc2c1)C1CCCCC1"])]
    novel = novel_flags(["O=C(Nc1ccc2ncccc2c1)C1CCCCC1", "CCCCCCCCO", None], ref)
    assert novel.tolist() == [False, True, False]
    s = Scores(
        ["O=C(Nc1ccc2ncccc2c1)C1CCCCC1", "CCCCCCCCO", "CCCCCCCCO", None],
        np.array([0.9, 0.9, 0.9, np.nan]),
        np.array([0.9, 0.9, 0.9, np.nan]),
        np.array([0.9, 0.9, 0.9, np.nan]),
        np.array([2.0, 2.0, 2.0, np.nan]),
    )
    m = generation_metrics(s, Thresholds(), np.array([False, True, True, False]))
    assert m["validity"] == 0.75 and m["uniqueness"] == pytest.approx(2 / 3) and m["success"] == 0.75
    assert m["novelty"] == pytest.approx(2 / 3) and m["n_success_unique"] == 2


def test_ga_operators_give_valid_new_molecules_and_respect_the_budget():
    import random

    rng = random.Random(0)
    corpus = embedded_corpus()[:60]
    kids = [mutate(s, rng) for s in corpus[:20]] + [
        crossover(a, b, rng) for a, b in zip(corpus[:20], corpus[20:40], strict=True)
    ]
    made = [k for k in kids if k is not None]
    assert len(made) >= 30 and all(Chem.MolFromSmiles(k) is not None for k in made)
    oracle = CountingOracle(SubstructureOracle(PATTERNS), budget=150)
    res = graph_ga(corpus, oracle, (0, 1), 150, 50, seed=0)
    assert res.oracle_calls <= 150 and len(res.scores.smiles) == 50
    first = CountingOracle(SubstructureOracle(PATTERNS), budget=40)
    flat = best_of_dataset(corpus, first, (0, 1), 40, 10)
    assert flat.oracle_calls == 40 and len(flat.scores.smiles) == 10
    # the GA's best molecules score at least as well as screening the same corpus with the same budget
    assert res.scores.p_a.mean() + res.scores.p_b.mean() >= flat.scores.p_a.mean() + flat.scores.p_b.mean()


@pytest.mark.parametrize("method", ["filtered", "pg"])
def test_pipeline_keeps_rationales_and_reports_metrics(method):
    model = CompletionModel.load(default_checkpoint())
    oracle = CountingOracle(SubstructureOracle(PATTERNS))
    cfg = GenerateConfig(
        n=60,
        max_actives=3,
        max_rationales=6,
        mcts=MCTSConfig(min_atoms=8, rollouts=5),
        finetune=FinetuneConfig(method=method, rounds=2, samples_per_round=40, min_keep=2),
    )
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    result = generate(model, oracle, (0, 1), ACTIVES, cfg)
    t = result.table
    assert len(t) == 60 and result.metrics["validity"] == 1.0
    for smi, rat in zip(t["smiles"], t["rationale"], strict=True):
        assert Chem.MolFromSmiles(smi).HasSubstructMatch(Chem.MolFromSmiles(rat))
    assert result.metrics["oracle_calls"] == oracle.calls > 0
    assert [r.round for r in result.rounds] == [1, 2]
    # the RL rounds changed the policy
    assert any(not np.allclose(before[k], v) for k, v in model.policy.state_dict().items())
    assert 0 <= result.metrics["success"] <= 1 and result.metrics["dual_rationales_found"]
    scored = score(list(t["smiles"][:5]), oracle)
    np.testing.assert_allclose(scored.p_a, t["p_a"][:5])


def test_seeds_put_rationales_within_the_sa_limit_first():
    from triptych.matic.generate.pipeline import feasible_first
    from triptych.matic.generate.rationale import Rationale
    from triptych.matic.generate.scoring import Thresholds

    def rat(smiles: str, p: float) -> Rationale:
        return Rationale(smiles, smiles, ("a", "b"), (), (p, p))

    hard = [
        rat("CC1OCC=C2C1CCC1C2CCC2CC(=O)C=CC21", 0.95),
        rat("C=CC(=O)OC1C2CC=CC2C(C)CC2OCC(C)C21", 0.9),
    ]  # SA 4.8, 4.9
    easy = [rat("O=C(N)c1ccccc1", 0.7), rat("Cc1ccc(NC(=O)c2ccncc2)cc1", 0.6)]  # SA 1.2, 1.4; QED 0.59, 0.83
    ranked = feasible_first(hard + easy, Thresholds())
    # within the limit first; among those p_A·p_B·QED decides (0.49·0.59 = 0.29 < 0.36·0.83 = 0.30)
    assert ranked == [easy[1].smiles, easy[0].smiles, hard[0].smiles, hard[1].smiles]
    assert feasible_first(hard + easy, Thresholds(sa=10.0))[:2] == [hard[0].smiles, hard[1].smiles]


def test_scaffold_constrained_generation_keeps_the_core_in_every_molecule():
    from triptych.core.errors import InputError

    model = CompletionModel.load(default_checkpoint())
    oracle = CountingOracle(SubstructureOracle(PATTERNS))
    core = "O=C(N)c1ccc2ncccc2c1"  # a user's core: quinoline carboxamide
    cfg = GenerateConfig(
        n=24,
        scaffold=core,
        finetune=FinetuneConfig(rounds=1, samples_per_round=16, min_keep=1),
    )
    result = generate(model, oracle, (0, 1), ACTIVES, cfg)
    query = Chem.MolFromSmiles(core)
    mols = [Chem.MolFromSmiles(s) for s in result.table["smiles"]]
    assert len(mols) == 24 and all(m is not None and m.HasSubstructMatch(query) for m in mols)
    assert result.metrics["contains_scaffold"] == 1.0 and result.metrics["search_oracle_calls"] == 0
    assert any(m.GetNumAtoms() > query.GetNumAtoms() for m in mols)  # it grows the core, not just returns it
    for bad in ("c1ccccc1(", "*c1ccccc1", "CCO.c1ccccc1", "FC(F)(F)F"):  # invalid, dummy, 2 pieces, no H
        with pytest.raises(InputError, match="--scaffold"):
            generate(model, oracle, (0, 1), ACTIVES, GenerateConfig(n=5, scaffold=bad))

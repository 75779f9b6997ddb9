"""The generator's commands end to end, with a hand-made oracle standing in for a trained predictor."""

import json

import pandas as pd
import pytest

from triptych.matic.generate import scoring
from triptych.matic.generate.scoring import SubstructureOracle

PATTERNS = {"quinoline": "c1ccc2ncccc2c1", "amide": "C(=O)N"}
ROWS = [
    ("O=C(Nc1ccc2ncccc2c1)C1CCCCC1", 1, 1),
    ("CC(=O)Nc1ccc2ncccc2c1", 1, 1),
    ("Cc1ccc2ncccc2c1OCCc1ccccc1", 1, 0),
    ("CC(C)NC(=O)c1ccccc1", 0, 1),
    ("CCCCCCO", 0, 0),
]


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setattr(scoring, "load_oracle", lambda path: (SubstructureOracle(PATTERNS), "hand-made"))
    from triptych.matic.cli import app

    return app


@pytest.fixture
def actives(tmp_path):
    path = tmp_path / "known.csv"
    pd.DataFrame(ROWS, columns=["smiles", "quinoline", "amide"]).to_csv(path, index=False)
    return path


def test_generate_writes_every_output(app, actives, tmp_path, invoke):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    out = tmp_path / "gen"
    res = invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--actives",
            str(actives),
            "--n",
            "40",
            "--rounds",
            "1",
            "--samples-per-round",
            "20",
            "--max-actives",
            "2",
            "--rollouts",
            "4",
            "--min-atoms",
            "8",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "molecules.csv")
    assert list(table.columns) == ["smiles", "p_a", "p_b", "qed", "sa", "success", "novel", "rationale"]
    assert len(table) == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["oracle_calls"] > 0 and metrics["tasks"] == ["quinoline", "amide"]
    assert (out / "top_molecules.png").stat().st_size > 1000
    assert "Generated dual-active molecules" in (out / "report.html").read_text()
    assert (out / "completion_finetuned.safetensors").is_file()


def test_rationales_command_draws_them(app, actives, tmp_path, invoke):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    out = tmp_path / "rat"
    res = invoke(
        app,
        [
            "rationales",
            "--checkpoint",
            str(ckpt),
            "--actives",
            str(actives),
            "--min-atoms",
            "8",
            "--rollouts",
            "5",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "rationales.csv")
    assert {"quinoline", "amide", "quinoline+amide"} <= set(rows["tasks"])
    assert (out / "rationales_dual.png").is_file() and (out / "report.html").is_file()


def test_bad_inputs_fail_with_one_line(app, actives, tmp_path, invoke):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    res = invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--actives",
            str(actives),
            "--tasks",
            "quinoline,nope",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code != 0 and "--tasks" in str(res.exception)
    res = invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--actives",
            str(actives),
            "--method",
            "adam",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code != 0 and "--method" in str(res.exception)
    for flag, value in (("--scaffold", "c1ccccc1("), ("--guide", "greedy")):
        res = invoke(app, ["generate", "--checkpoint", str(ckpt), flag, value, "--out", str(tmp_path / "x")])
        assert res.exit_code != 0 and flag in str(res.exception)
    assert not (tmp_path / "x").exists()


def test_generate_from_a_scaffold_keeps_it_in_every_molecule(app, actives, tmp_path, invoke):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    out = tmp_path / "core"
    core = "c1ccc2ncccc2c1"
    res = invoke(
        app,
        ["generate", "--checkpoint", str(ckpt), "--actives", str(actives), "--scaffold", core]
        + ["--n", "16", "--rounds", "1", "--samples-per-round", "8", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["contains_scaffold"] == 1.0 and metrics["search_oracle_calls"] == 0
    from rdkit import Chem

    table = pd.read_csv(out / "molecules.csv")
    assert len(table) == 16
    assert all(Chem.MolFromSmiles(s).HasSubstructMatch(Chem.MolFromSmiles(core)) for s in table["smiles"])


def test_benchmark_generate_writes_the_results_schema(app, actives, tmp_path, invoke):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    judge = tmp_path / "judge.csv"  # other data: the judge's own labelled molecules
    pd.DataFrame(
        [
            ("Cc1ccc2ncccc2c1C(=O)NC", 1, 1),
            ("c1ccc2ncccc2c1", 1, 0),
            ("CC(=O)NC1CCCCC1", 0, 1),
            ("CCOCC", 0, 0),
            ("CCCCN", 0, 0),
        ],
        columns=["smiles", "q", "a"],
    ).to_csv(judge, index=False)
    out = tmp_path / "bench"
    res = invoke(
        app,
        [
            "benchmark-generate",
            "--checkpoint",
            str(ckpt),
            "--actives",
            str(actives),
            "--n",
            "12",
            "--rounds",
            "1",
            "--samples-per-round",
            "10",
            "--max-actives",
            "2",
            "--rollouts",
            "3",
            "--seeds",
            "0,1",
            "--judge-data",
            str(judge),
            "--judge-columns",
            "q,a",
            "--judge-test",
            str(judge),
            "--no-ablations",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"methods", "search", "judge", "seeds", "command"}
    assert set(results["methods"]) == {"matic_filtered_mle", "graph_ga", "best_of_dataset"}
    keys = {"success", "novelty", "diversity", "validity", "uniqueness"}
    for m in results["methods"].values():
        assert set(m) == {"oracle", "judge", "oracle_calls", "seconds"}
        assert set(m["oracle"]) == set(m["judge"]) == keys and all(len(v) == 2 for v in m["judge"].values())
    for seed in range(2):  # equal oracle calls, per seed
        budget = results["methods"]["matic_filtered_mle"]["oracle_calls"][seed]
        assert results["methods"]["graph_ga"]["oracle_calls"][seed] <= budget
        assert results["methods"]["best_of_dataset"]["oracle_calls"][seed] == budget
        assert 0 < results["search"]["share"][seed] < 1
    assert (
        results["judge"]["test_roc_auc"]["q"] == 1.0
    )  # judged on its own training rows: a sanity check only
    table = pd.read_csv(out / "molecules_graph_ga_seed1.csv")
    assert {"judge_p_a", "judge_p_b", "judge_success"} <= set(table.columns)
    assert "| method | judged by |" in (out / "results.md").read_text()


def test_pretrain_makes_a_loadable_completion_model(tmp_path):
    from triptych.matic.generate.completion import CompletionModel, embedded_corpus, pretrain

    model, info = pretrain(
        embedded_corpus()[:60],
        tmp_path / "c.safetensors",
        n_molecules=60,
        vocab_size=40,
        hidden=16,
        epochs=1,
        root_dir=tmp_path / "train",
        check_samples=40,
    )
    again = CompletionModel.load(tmp_path / "c.safetensors")
    assert len(again.vocabulary) == info["vocab_size"] <= 40 and info["n_train_steps"] > 50
    assert info["heldout_completion_check"]["containment"] == 1.0

"""Models, training, the predictor API, screening, explanation and checkpoint errors, on tiny data."""

import csv

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from triptych.core.errors import InputError
from triptych.matic.featurize import featurize
from triptych.matic.model import MultiTaskAttentiveFP
from triptych.matic.predictor import load_predictor
from triptych.matic.screen import screen
from triptych.matic.train import TrainConfig, train_predictor


@pytest.mark.parametrize(
    ("arch", "gate", "n_experts", "gate_width"),
    [("ple", "full", 3, 2), ("ple", "light", 3, 2), ("mmoe", "light", 3, 3), ("single", "full", 2, 1)],
)
def test_architectures_expose_attention_gates_embeddings(arch, gate, n_experts, gate_width, smiles12):
    torch.manual_seed(0)
    model = MultiTaskAttentiveFP(2, arch, gate, hidden=16).eval()
    batch = Batch.from_data_list(featurize(smiles12[:3]))
    out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    model.stacked = False  # PyG's AttentiveFP network by network: the batched pass must agree with it
    ref = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    for a, b in [
        (out.logits, ref.logits),
        (out.attention, ref.attention),
        (out.expert_embeddings, ref.expert_embeddings),
        *zip(out.gates, ref.gates, strict=True),
    ]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert out.logits.shape == (3, 2)
    assert out.expert_embeddings.shape == (3, n_experts, 16) and out.task_embeddings.shape == (3, 2, 16)
    assert out.attention.shape == (batch.num_nodes, n_experts)
    # readout attention is a softmax over each molecule's atoms
    per_mol = torch.zeros(3, n_experts).index_add_(0, batch.batch, out.attention)
    torch.testing.assert_close(per_mol, torch.ones(3, n_experts))
    for g in out.gates:
        assert g.shape == (3, gate_width)
        torch.testing.assert_close(g.sum(dim=1), torch.ones(3))
    # the task embedding is the gate-weighted mix of that task's experts (CGC)
    t0 = out.gate_experts[0]
    mix = (out.gates[0].unsqueeze(-1) * out.expert_embeddings[:, t0]).sum(1)
    torch.testing.assert_close(out.task_embeddings[:, 0], mix)


def test_ple_structure_and_paper_size():
    model = MultiTaskAttentiveFP(2, "ple", "full")
    assert model.gate_experts == [[1, 0], [2, 0]]
    assert model.expert_names(["a", "b"]) == ["shared", "a-private", "b-private"]
    n = sum(p.numel() for p in model.parameters())
    assert 3.0e6 < n < 3.6e6  # the paper reports about 3.25 M


@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits12):
    out = tmp_path_factory.mktemp("run")
    splits = splits12
    config = TrainConfig(
        tasks=["a", "b"], arch="ple", gate="light", hidden=16, max_epochs=2, patience=2, batch_size=4
    )
    return train_predictor(splits, config, out, progress=False)


def test_train_predict_and_reload(trained):
    p = load_predictor(trained)
    assert p.tasks == ["a", "b"]
    probs = p.predict_proba(["CCO", "xx", "c1ccccc1O"], batch_size=2)
    assert probs.shape == (3, 2) and np.isnan(probs[1]).all() and np.isfinite(probs[[0, 2]]).all()
    assert ((probs[[0, 2]] > 0) & (probs[[0, 2]] < 1)).all()
    np.testing.assert_allclose(p.predict_proba(["CCO"]), probs[:1], rtol=1e-5)  # batching does not matter
    assert (trained.parent / "checkpoints" / "best.safetensors").is_file()


def test_checkpoint_for_other_tasks_fails_clearly(trained, tmp_path):
    with pytest.raises(InputError, match=r"trained for tasks \['a', 'b'\], not \['x'\]"):
        load_predictor(trained, tasks=["x"])
    from triptych.core.checkpoint import save_checkpoint

    other = save_checkpoint(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, kind="pdcr.segmentation")
    with pytest.raises(InputError, match="'pdcr.segmentation' checkpoint, not 'matic.predictor'"):
        load_predictor(other)


def test_screen_ranks_reports_invalid_and_keeps_old_output(trained, tmp_path, smiles12):
    lib = tmp_path / "lib.csv"
    lib.write_text("id,smiles\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(smiles12)) + "bad,C1CC((\n")
    out = tmp_path / "preds.csv"
    res = screen(load_predictor(trained), lib, out, chunk=5, batch_size=3)
    assert (res.n_total, res.n_valid) == (13, 12) and res.invalid == [(14, "C1CC((")]
    rows = list(csv.DictReader(out.open()))
    dual = [float(r["dual_score"]) for r in rows]
    assert dual == sorted(dual, reverse=True) and [int(r["rank"]) for r in rows] == list(range(1, 13))
    r = rows[0]
    assert float(r["dual_score"]) == pytest.approx(float(r["p_a"]) * float(r["p_b"]), abs=2e-4)
    assert (tmp_path / "preds.invalid.csv").read_text().splitlines()[1] == "14,C1CC(("
    before = out.read_text()
    for content, match in [
        ("", "empty"),
        ("smiles\nxx\nyy\n", "none of the 2 SMILES"),
        ("mol\nCCO\n", "no SMILES"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(content)
        with pytest.raises(InputError, match=match):
            screen(load_predictor(trained), bad, out)
    assert out.read_text() == before  # a failed screen leaves the earlier output intact


def test_explain_writes_maps_gates_and_correlations(trained, tmp_path, smiles12):
    from triptych.matic.explain import explain

    explain(load_predictor(trained), ["c1ccccc1O"], tmp_path / "x", smiles12)
    names = {p.name for p in (tmp_path / "x").iterdir()}
    for stem in ("mol1_expert_shared", "mol1_expert_a-private", "mol1_task_a", "mol1_task_b"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names
    assert {
        "report.html",
        "gate_weights.csv",
        "property_correlations.csv",
        "property_correlations.png",
    } <= names
    rows = list(csv.DictReader((tmp_path / "x" / "gate_weights.csv").open()))
    assert len(rows) == 2 and float(rows[0]["a-private"]) + float(rows[0]["shared"]) == pytest.approx(
        1, abs=1e-6
    )
    corr = list(csv.DictReader((tmp_path / "x" / "property_correlations.csv").open()))
    assert corr[0]["quantity"] == "gate a: shared weight" and -1 <= float(corr[0]["logP"]) <= 1


def _invoke(args):
    from typer.testing import CliRunner

    from triptych.cli import app

    return CliRunner().invoke(app, args)


def test_cli_bad_inputs_give_clear_errors_and_write_nothing(trained, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("smiles,label_x\nCCO,1\n")
    res = _invoke(["matic", "evaluate", "--checkpoint", str(trained), "--data", str(other)])
    assert isinstance(res.exception, InputError) and "trained for tasks ['a', 'b']" in str(res.exception)
    res = _invoke(
        [
            "matic",
            "screen",
            "--checkpoint",
            str(trained),
            "--input",
            str(other),
            "--tasks",
            "x",
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert isinstance(res.exception, InputError) and not (tmp_path / "p.csv").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("smiles,a\nCCO,yes\n")
    res = _invoke(["matic", "train", "--data", str(bad), "--out", str(tmp_path / "run")])
    assert isinstance(res.exception, InputError) and "non-numeric label 'yes'" in str(res.exception)
    assert not (tmp_path / "run").exists()


def test_cli_evaluate_reports_metrics(trained, tmp_path, smiles12):
    data = tmp_path / "t.csv"
    data.write_text("smiles,a,b\n" + "".join(f"{s},{i % 2},{(i // 2) % 2}\n" for i, s in enumerate(smiles12)))
    res = _invoke(
        [
            "matic",
            "evaluate",
            "--checkpoint",
            str(trained),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert res.exit_code == 0, res.output
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m) == {"a", "b"} and m["a"]["n"] == 12 and 0 <= m["a"]["roc_auc"] <= 1


def test_screen_smiles_in_order_and_worker_processes_change_nothing(trained, tmp_path, smiles12):
    from triptych.matic.screen import screen_smiles

    p = load_predictor(trained)
    smiles = [*smiles12, "C1CC((", "CCO"]
    df = screen_smiles(p, smiles, batch_size=4)
    assert list(df["smiles"]) == smiles and list(df["valid"]) == [True] * 12 + [False, True]
    np.testing.assert_allclose(
        df[["p_a", "p_b"]].to_numpy()[df["valid"]], p.predict_proba(smiles)[df["valid"]], rtol=1e-5
    )
    assert np.isnan(df.loc[12, "dual_score"]) and df.loc[13, "dual_score"] == pytest.approx(
        df.loc[0, "dual_score"]
    )
    # featurising in 2 worker processes (batches shared out between them) gives the same table
    pd_two = screen_smiles(p, smiles, batch_size=3, workers=2)
    np.testing.assert_allclose(pd_two["dual_score"].to_numpy(), df["dual_score"].to_numpy(), rtol=1e-5)
    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    screen(p, lib, a, chunk=5, batch_size=2, workers=0)
    screen(p, lib, b, chunk=5, batch_size=2, workers=2)
    assert a.read_text() == b.read_text()


def test_stacked_pass_trains_like_pyg(smiles12):
    """Gradients of the batched pass equal PyG's (dropout off, so both are deterministic)."""
    torch.manual_seed(0)
    model = MultiTaskAttentiveFP(2, "ple", "full", hidden=16, dropout=0.0).train()
    b = Batch.from_data_list(featurize(smiles12[:5]))
    grads = []
    for stacked in (True, False):
        model.stacked = stacked
        model.zero_grad()
        model(b.x, b.edge_index, b.edge_attr, b.batch).logits.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_pyg_free_predictor_and_bf16_agree_with_pyg(trained, smiles12):
    """The screen's model (no PyG modules, cached stacked weights) equals PyG's; bf16 keeps the ranking."""
    ref = load_predictor(trained)
    ref.model.stacked = False
    base = ref.predict_proba(smiles12)
    fast = load_predictor(trained, pyg=False)
    np.testing.assert_allclose(fast.predict_proba(smiles12), base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.predict_proba(smiles12), base, rtol=1e-5, atol=1e-6)  # cached weights
    half = load_predictor(trained, pyg=False, precision="bf16").predict_proba(smiles12)
    np.testing.assert_allclose(half, base, atol=2e-2)
    with pytest.raises(InputError, match="--precision"):
        load_predictor(trained, precision="fp8")


def test_screening_imports_no_pyg(trained):
    import subprocess
    import sys

    code = (
        "import sys; from triptych.matic.predictor import load_predictor; "
        f"p = load_predictor({str(trained)!r}, pyg=False); p.predict_proba(['CCO']); "
        "import triptych.matic.screen; print('torch_geometric' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_padded_batches_score_like_unpadded(trained, smiles12):
    """Padding a batch to a bucket of atoms (one extra, dropped molecule) leaves every real molecule's score."""
    from triptych.matic.featurize import DEFAULT, collate

    p = load_predictor(trained, pyg=False)
    graphs = [g for g in (DEFAULT.arrays(s) for s in smiles12) if g is not None]
    x, ei, ea, b = collate(graphs, bucket=16)
    assert x.shape[0] % 16 == 0 and ei.shape[1] % 32 == 0 and int(b.max()) == len(graphs)
    with torch.inference_mode():
        plain = torch.sigmoid(p.model(*collate(graphs)).logits).numpy()
    np.testing.assert_allclose(p.probabilities(graphs), plain, rtol=1e-5, atol=1e-6)


def test_early_feature_pass_gives_the_same_screen(trained, tmp_path, smiles12):
    """Rows featurised before torch's import (early.FeaturePass) score exactly as rows the workers featurise."""
    import time

    from triptych.matic.early import FeaturePass
    from triptych.matic.featurize import DEFAULT

    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} m{i}\n" for i, s in enumerate([*smiles12, "C1CC(("])))
    early = FeaturePass(lib, workers=2, chunk=4)
    time.sleep(1.0)  # let the workers finish some chunks
    made = early.take()
    assert made and set(made) <= set(range(1, 14))
    for n, arrays in made.items():
        want = DEFAULT.arrays(lib.read_text().splitlines()[n - 1].split()[0])
        assert (arrays is None) == (want is None)
        if want is not None:
            assert all(np.array_equal(a, b) for a, b in zip(arrays, want, strict=True))
    predictor = load_predictor(trained, pyg=False)
    plain = screen(predictor, lib, tmp_path / "plain.csv", batch_size=3, workers=2).out.read_text()
    again = FeaturePass(lib, workers=2, chunk=4)
    time.sleep(0.5)
    with_early = screen(predictor, lib, tmp_path / "early.csv", batch_size=3, workers=2, early=again)
    assert with_early.out.read_text() == plain and with_early.invalid == [(13, "C1CC((")]


def test_bf16_training_pass_matches_fp32(smiles12):
    """Training in bf16 (fp32 master weights) gives the fp32 loss and gradients within bf16's precision."""
    torch.manual_seed(0)
    model = MultiTaskAttentiveFP(2, "ple", "full", hidden=16, dropout=0.0).train()
    b = Batch.from_data_list(featurize(smiles12[:8]))
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        model.train_dtype = dtype
        model.zero_grad()
        logits = model(b.x, b.edge_index, b.edge_attr, b.batch).logits
        assert logits.dtype == torch.float32
        logits.sum().backward()
        results.append((logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    (l32, g32), (l16, g16) = results
    torch.testing.assert_close(l16, l32, rtol=0, atol=3e-2)  # bf16 keeps 8 bits of mantissa
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.999, cos  # the same descent direction
    assert (g16.norm() / g32.norm() - 1).abs() < 0.02

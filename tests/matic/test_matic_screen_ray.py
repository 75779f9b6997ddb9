"""Library screening on the Ray layer: 2 local workers give the single-process result; outputs, resume, CLI."""

import gzip
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from triptych.core.errors import InputError
from triptych.matic.library_screen import LibraryScreenConfig, screen_library
from triptych.matic.train import TrainConfig, train_predictor

# Ray is not imported here: init_ray sets Ray's environment (loopback only, auth) before Ray's first import.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the [ray] extra")

# A library with a salt of a training molecule, a duplicate parent, a PAINS and an invalid line.
EXTRA = [
    "[Na+].[O-]C(=O)c1ccccc1",
    "O=C1NC(=S)SC1=Cc1ccccc1",
    "C1CC((",
    "OCC",
    "CCCCCCCCCCCCN",
    "Cc1ccc(S(N)(=O)=O)cc1",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory, splits12):
    out = tmp_path_factory.mktemp("run")
    splits = splits12
    config = TrainConfig(
        tasks=["a", "b"], arch="ple", gate="light", hidden=16, max_epochs=1, patience=1, batch_size=4
    )
    return train_predictor(splits, config, out, progress=False)


@pytest.fixture(scope="module")
def library_smiles(smiles12):
    """The training molecules followed by :data:`EXTRA`."""
    return [*smiles12, *EXTRA]


@pytest.fixture(scope="module")
def library(tmp_path_factory, library_smiles, smiles12):
    """The library as a sharded input: two gzipped .smi parts."""
    folder = tmp_path_factory.mktemp("lib")
    half = len(library_smiles) // 2
    for k, part in enumerate((library_smiles[:half], library_smiles[half:])):
        with gzip.open(folder / f"part-{k}.smi.gz", "wt") as handle:
            handle.write("".join(f"{s} m{k}_{i}\n" for i, s in enumerate(part)))
    (folder / "train.smi").write_text("\n".join(smiles12) + "\n")
    return folder


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray session of 2 workers for the module (run_sharded reuses a running session)."""
    from triptych.core.batch import init_ray

    init_ray(workers=2)
    import ray  # after init_ray, which sets Ray's environment (loopback only, auth) before the import

    yield ray
    ray.shutdown()


def _config(model, library, **kw):
    return LibraryScreenConfig(
        checkpoint=str(model), batch_size=4, domain_reference=(str(library / "train.smi"),), **kw
    )


def test_in_process_screen_columns_dedup_and_top(model, library, tmp_path, library_smiles):
    import torch

    torch.set_num_threads(1)
    res = screen_library(
        str(library / "part-*.smi.gz"),
        _config(model, library),
        tmp_path / "one",
        shard_size=4,
        top_n=5,
        workers=0,
    )
    df = pd.read_parquet(res.predictions)
    assert (res.n_total, res.shards) == (len(library_smiles), 6)
    assert (
        list(df["smiles"]) == library_smiles
        and df["file"].str.endswith(("part-0.smi.gz", "part-1.smi.gz")).all()
    )
    salt = library_smiles.index("[Na+].[O-]C(=O)c1ccccc1")
    assert (
        df.loc[salt, "parent_smiles"] == "O=C(O)c1ccccc1" and df.loc[salt, "duplicate"]
    )  # same parent as row 6
    assert df.loc[library_smiles.index("OCC"), "duplicate"] and not df.loc[0, "duplicate"]
    bad = library_smiles.index("C1CC((")
    assert (
        not df.loc[bad, "valid"]
        and np.isnan(df.loc[bad, "dual_score"])
        and res.n_valid == len(library_smiles) - 1
    )
    assert res.n_duplicates == 2
    # a duplicate parent has the scores of its first occurrence
    np.testing.assert_allclose(
        df.loc[salt, ["p_a", "p_b"]].astype(float), df.loc[6, ["p_a", "p_b"]].astype(float)
    )
    np.testing.assert_allclose(df["dual_score"], df["p_a"] * df["p_b"], rtol=1e-6)
    assert df.loc[library_smiles.index("O=C1NC(=S)SC1=Cc1ccccc1"), "pains"] and df["pains"].sum() == 1
    np.testing.assert_allclose(df.loc[:11, "max_sim_train"], 1.0, rtol=1e-6)  # the training molecules
    assert df.loc[:11, "in_domain"].all()
    assert df.loc[library_smiles.index("CCCCCCCCCCCCN"), "max_sim_train"] < 1.0
    top = pd.read_csv(res.top)
    assert list(top["rank"]) == [1, 2, 3, 4, 5] and top["dual_score"].is_monotonic_decreasing
    unique = df[df["valid"] & ~df["duplicate"]].sort_values("dual_score", ascending=False, kind="stable")
    assert list(top["smiles"]) == list(unique["smiles"][:5])
    summary = json.loads(res.summary.read_text())
    assert summary["n_total"] == len(library_smiles) and summary["shards_reused"] == 0


def test_two_ray_workers_equal_single_process_and_resume(model, library, tmp_path, ray_local):
    import torch

    torch.set_num_threads(1)
    inputs = str(library / "part-*.smi.gz")
    one = screen_library(inputs, _config(model, library), tmp_path / "one", shard_size=4, workers=0)
    two = screen_library(inputs, _config(model, library), tmp_path / "two", shard_size=4, workers=2)
    assert ray_local.is_initialized()
    a, b = pd.read_parquet(one.predictions), pd.read_parquet(two.predictions)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "one" / "top.csv").read_text() == (tmp_path / "two" / "top.csv").read_text()
    # a rerun reuses every shard; other settings into the same folder are refused
    again = screen_library(inputs, _config(model, library), tmp_path / "two", shard_size=4, workers=2)
    assert again.shards_reused == again.shards == 6
    pd.testing.assert_frame_equal(pd.read_parquet(again.predictions), b)
    with pytest.raises(InputError, match="different shard"):
        screen_library(
            inputs, _config(model, library, tautomers=True), tmp_path / "two", shard_size=4, workers=2
        )


def test_cli_library_run_and_errors(model, library, tmp_path):
    from typer.testing import CliRunner

    from triptych.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "matic",
        "screen",
        "--checkpoint",
        str(model),
        "--input",
        str(library / "part-*.smi.gz"),
        "--out",
        str(out),
        "--workers",
        "0",
        "--shard-size",
        "5",
        "--top",
        "3",
        "--domain-ref",
        str(library / "train.smi"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "screened 17/18 molecules (2 duplicate parents)" in result.output
    assert len(pd.read_csv(out / "top.csv")) == 3 and len(pd.read_parquet(out / "predictions.parquet")) == 18
    base = ["matic", "screen", "--checkpoint", str(model)]
    lib = ["--input", str(library / "part-*.smi.gz")]
    for argv, match in [
        (lib + ["--out", str(tmp_path / "x.csv")], "screens one .smi/.csv"),
        (lib + ["--out", str(tmp_path / "y.csv"), "--workers", "2"], "writes a folder"),
        (lib + ["--out", str(out), "--workers", "0", "--dedup", "mass"], "--dedup 'mass' unknown"),
        (["--input", str(tmp_path / "none-*.sdf"), "--out", str(out), "--workers", "0"], "matches no file"),
    ]:
        result = runner.invoke(app, base + argv)
        assert isinstance(result.exception, InputError) and match in str(result.exception), result.output


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_library_and_single_file_screens_give_equal_scores(model, tmp_path, smiles12, precision):
    """The library path scores through the single-file screen's model path, precision and batches."""
    import json

    import torch

    from triptych.matic.predictor import load_predictor
    from triptych.matic.screen import resolve_precision, screen, screen_smiles
    from triptych.matic.standardize import Standardizer

    torch.set_num_threads(1)
    parents = list(dict.fromkeys(Standardizer().smiles(smiles12)))  # already standardised: same molecules
    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(parents)))
    config = LibraryScreenConfig(checkpoint=str(model), batch_size=4, precision=precision, alerts=False)
    res = screen_library(str(lib), config, tmp_path / "lib_out", workers=0)
    table = pd.read_parquet(res.predictions)
    resolved = resolve_precision(precision)
    assert json.loads(res.summary.read_text())["config"]["precision"] == resolved
    predictor = load_predictor(model, pyg=False, precision=resolved)
    single = screen_smiles(predictor, parents, batch_size=4)
    for col in ("p_a", "p_b", "dual_score"):
        np.testing.assert_array_equal(table[col].to_numpy(np.float32), single[col].to_numpy(np.float32))
    # the CLI's single-file screen writes the same scores (to its 4 decimals)
    ranked = pd.read_csv(screen(predictor, lib, tmp_path / "single.csv", batch_size=4, workers=0).out)
    by_line = ranked.set_index("line").sort_index()
    np.testing.assert_allclose(by_line["dual_score"], table["dual_score"], atol=5e-5)


def test_library_screen_refuses_an_unknown_precision(model, tmp_path, library):
    with pytest.raises(InputError, match="--precision 'fp8' unknown"):
        screen_library(
            str(library / "part-*.smi.gz"),
            _config(model, library, precision="fp8"),
            tmp_path / "x",
            workers=0,
        )

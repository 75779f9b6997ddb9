"""The fingerprint cascade: distilled from the PLE, saved and loaded, and the screen it drives."""

import numpy as np
import pandas as pd
import pytest
import torch

from triptych.core.errors import InputError
from triptych.matic.predictor import load_predictor
from triptych.matic.prefilter import (
    FILENAME,
    PrefilterConfig,
    default_corpus,
    fit_prefilter,
    load_prefilter,
    top_recall,
)
from triptych.matic.screen import screen
from triptych.matic.train import TrainConfig, train_predictor


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, splits12):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        tasks=["a", "b"], arch="ple", gate="light", hidden=16, max_epochs=1, patience=1, batch_size=4
    )
    model = train_predictor(splits12, config, out, progress=False)
    predictor = load_predictor(model)
    small = PrefilterConfig(n_bits=512, hidden=32)  # the default size fits the same way, only slower
    prefilter, held = fit_prefilter(
        predictor, default_corpus(200), config=small, epochs=20, workers=0, log=lambda m: None
    )
    prefilter.save(model.parent / FILENAME, extra={"held_out": held})
    return model, predictor, held


def test_top_recall_counts_the_reference_top_inside_the_proxy_top():
    ref = np.arange(100.0)
    assert top_recall(ref, ref, 0.01, 0.05) == 1.0
    assert top_recall(ref, -ref, 0.01, 0.05) == 0.0
    proxy = ref.copy()
    proxy[99] = -1  # the best molecule falls out of the proxy's top 5
    assert top_recall(ref, proxy, 0.02, 0.05) == 0.5


def test_prefilter_learns_the_ple_ranking_and_round_trips(fitted, tmp_path):
    model, _, held = fitted
    assert held["n_held_out"] >= 50 and held["spearman_held_out"] > 0.3  # held-out molecules, not fit ones
    pre = load_prefilter(model.parent / FILENAME)
    s = pre.scores(["CCO", "not a smiles", "c1ccccc1O"])
    assert np.isnan(s[1]) and np.isfinite(s[[0, 2]]).all()
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="prefilter"):
        load_prefilter(tmp_path / "bad.safetensors")


def test_cascade_scores_the_top_fraction_and_lists_the_rest(fitted, tmp_path, smiles12):
    model, predictor, _ = fitted
    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} m{i}\n" for i, s in enumerate([*smiles12, "C1CC(("])))
    pre = load_prefilter(model.parent / FILENAME)
    full = pd.read_csv(screen(predictor, lib, tmp_path / "full.csv", workers=0).out)
    res = screen(predictor, lib, tmp_path / "cas.csv", workers=0, prefilter=pre, fraction=0.25)
    cas = pd.read_csv(res.out)
    assert res.n_total == 13 and res.n_valid == 12 and [n for n, _ in res.invalid] == [13]
    scored = cas[cas["dual_score"].notna()]
    assert len(scored) == 3 and list(scored["rank"]) == [1, 2, 3]  # ceil(0.25 * 12), ranked first
    # the scored ones are the prefilter's best three, with the PLE's own scores
    assert set(scored["line"]) == set(cas.nlargest(3, "prefilter_score")["line"])
    ref = full.set_index("line").loc[scored["line"], "dual_score"].to_numpy()
    np.testing.assert_allclose(scored["dual_score"], ref, atol=1e-4)
    rest = cas[cas["dual_score"].isna()]
    assert (np.diff(rest["prefilter_score"].to_numpy()) <= 0).all()  # then by prefilter score
    everything = pd.read_csv(
        screen(predictor, lib, tmp_path / "all.csv", workers=0, prefilter=pre, fraction=1.0).out
    )
    pd.testing.assert_frame_equal(everything.drop(columns="prefilter_score"), full)
    with pytest.raises(InputError, match="fraction"):
        screen(predictor, lib, tmp_path / "x.csv", workers=0, prefilter=pre, fraction=0.0)


def test_first_pass_scores_without_torch_and_equal_in_workers(fitted, tmp_path, smiles12):
    """The cascade's first pass reads the checkpoint and scores in numpy (no torch import), in 2 processes or 1."""
    import subprocess
    import sys

    from triptych.matic.cascade import PrefilterPass, fingerprint_features, load_prefilter_weights

    model, _, _ = fitted
    path = model.parent / FILENAME
    lib = tmp_path / "lib.smi"
    lib.write_text("".join(f"{s} m{i}\n" for i, s in enumerate([*smiles12, "C1CC(("])))
    code = (
        "import sys; from triptych.matic.cascade import PrefilterPass, load_prefilter_weights; "
        f"w = load_prefilter_weights({str(path)!r}); rows, s = PrefilterPass(w, {str(lib)!r}, workers=0).result(); "
        "assert len(rows) == 13 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    weights = load_prefilter_weights(path)
    rows0, s0 = PrefilterPass(weights, lib, workers=0).result()
    rows2, s2 = PrefilterPass(weights, lib, workers=2, chunk=4).result()
    assert rows0 == rows2 and [r[0] for r in rows0] == list(range(1, 14))
    np.testing.assert_array_equal(s0, s2)
    assert np.isnan(s0[-1]) and np.isfinite(s0[:-1]).all()
    # the numpy MLP is the fitted torch MLP
    pre = load_prefilter(path)
    phi, _ = fingerprint_features(smiles12, pre.model.config)
    with torch.inference_mode():
        ref = pre.model(torch.from_numpy(phi)).numpy() * pre.std + pre.mean
    np.testing.assert_allclose(s0[:-1], ref, rtol=1e-5, atol=1e-5)


def test_pool_workers_die_on_sigterm_even_under_the_cli_handler():
    """The CLI turns SIGTERM into SystemExit; the early pools' workers must not inherit that (terminate() would hang)."""
    import signal

    from triptych.cli import _terminate
    from triptych.matic.early import fork_pool

    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        pool = fork_pool(1)
        try:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
        finally:
            pool.terminate()
            pool.join()
    finally:
        signal.signal(signal.SIGTERM, before)

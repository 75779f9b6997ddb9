import json

import pytest
from m3jepa_synth import caption_set

from triptych.m3jepa.benchmark import run_benchmark
from triptych.m3jepa.config import DEFAULTS


def test_benchmark_writes_the_results_schema(tmp_path):
    from m3jepa_synth import recall_by_hand, write_cache
    from typer.testing import CliRunner

    from triptych.m3jepa.cli import app
    from triptych.m3jepa.features import load_cache

    write_cache(tmp_path / "cache", caption_set(n_images=100))
    cache = load_cache(tmp_path / "cache")
    cfg = DEFAULTS.with_(
        hidden=16,
        contrastive_dim=16,
        experts=4,
        top_k=2,
        max_epochs=2,
        batch_size=30,
        temperature=0.1,
        grid_pool=0,
    )
    run_benchmark(
        cache,
        tmp_path / "out",
        seeds=[0, 1],
        methods=["m3jepa", "clip_linear"],
        config=cfg,
        work_dir=tmp_path / "work",
        enable_progress_bar=False,
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["methods"]) == {"m3jepa", "clip_linear"}
    for r in results["methods"].values():
        for way in ("i2t", "t2i"):
            assert set(r[way]) == {"r1", "r5", "r10"}
            assert len(r[way]["r1"]) == 2
        assert r["train_seconds"] > 0 and r["params"] > 0
    assert results["protocol"]["test_images"] == 20 and results["protocol"]["test_captions"] == 40
    assert results["encoders"]["image"]["encoder"] == "synthetic"
    assert len(results["diagnostics"]["m3jepa"]["expert_usage_last_epoch"][0]) == 4
    md = (tmp_path / "out" / "results.md").read_text()
    assert "CLIP-style linear heads" in md and "±" in md
    assert set(results["run"]) == {"command", "date", "load_average_1_5_15"} and "load average" in md
    # every row is the checkpoint's recall (recomputed by hand), and `evaluate` on that checkpoint reproduces it
    for method in ("m3jepa", "clip_linear"):
        for seed in (0, 1):
            run = json.loads((tmp_path / "work" / method / f"seed{seed}" / "result.json").read_text())
            want = recall_by_hand(run["checkpoint"], cache, "test")
            res = CliRunner().invoke(
                app,
                [
                    "evaluate",
                    "--checkpoint",
                    run["checkpoint"],
                    "--cache",
                    str(tmp_path / "cache"),
                    "--out",
                    str(tmp_path / "eval"),
                ],
            )
            assert res.exit_code == 0, res.output
            got = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
            for way, task in (("i2t", "image->text"), ("t2i", "text->image")):
                for k in ("r1", "r5", "r10"):
                    assert results["methods"][method][way][k][seed] == pytest.approx(want[task][k])
                    assert got[task][k] == pytest.approx(want[task][k]), (method, seed, task, k)
    # finished runs are kept: a rerun with the same work folder resumes without training again
    again = run_benchmark(
        cache,
        tmp_path / "out2",
        seeds=[0, 1],
        methods=["m3jepa", "clip_linear"],
        config=cfg,
        work_dir=tmp_path / "work",
        enable_progress_bar=False,
    )
    assert again["methods"] == results["methods"]


def test_benchmark_command_in_parallel_workers(tmp_path, invoke):
    from m3jepa_synth import write_cache

    from triptych.m3jepa.cli import app

    write_cache(tmp_path / "cache", caption_set(n_images=60))
    captions = tmp_path / "caps.csv"  # --data names the same dataset as the cache
    captions.write_text("image,caption\n" + "".join(f"img{i:04d}.png,caption {i}\n" for i in range(60)))
    for i in range(60):
        (tmp_path / f"img{i:04d}.png").write_bytes(b"")
    res = invoke(
        app,
        [
            "benchmark",
            "--data",
            f"captions:{captions}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
            "--seeds",
            "2",
            "--methods",
            "mlp,clip_linear",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--grid-pool",
            "0",
            "--jobs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["methods"]) == {"mlp", "clip_linear"} and results["protocol"]["parallel_jobs"] == 2
    assert len(results["methods"]["mlp"]["t2i"]["r5"]) == 2


def test_a_run_recorded_before_a_setting_existed_is_reused_only_at_its_old_value(tmp_path):
    from triptych.m3jepa.benchmark import _finished

    record = DEFAULTS.with_(ema_decay=0.0, fused_contrastive=0.0).as_dict()
    for name in ("ema_decay", "fused_contrastive", "fused_reverse_grad"):
        del record["train"][name]  # as written before these settings existed
    folder = tmp_path / "m3jepa" / "seed0"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"benchmark_config": record, "metrics": {}}))
    assert _finished(tmp_path, "m3jepa", 0, DEFAULTS.with_(ema_decay=0.0, fused_contrastive=0.0)) is not None
    assert _finished(tmp_path, "m3jepa", 0, DEFAULTS.with_(ema_decay=0.99, fused_contrastive=0.0)) is None
    assert _finished(tmp_path, "m3jepa", 0, DEFAULTS.with_(ema_decay=0.0, fused_contrastive=0.5)) is None
    assert (
        _finished(tmp_path, "m3jepa", 0, DEFAULTS.with_(ema_decay=0.0, fused_contrastive=0.0, hidden=64))
        is None
    )

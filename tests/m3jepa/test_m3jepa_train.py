import numpy as np
import pytest
import torch
from m3jepa_synth import DIMS, caption_set

from triptych.core.checkpoint import CheckpointError, save_checkpoint
from triptych.core.errors import InputError
from triptych.m3jepa.aligner import load_aligner
from triptych.m3jepa.benchmark import split_tasks
from triptych.m3jepa.retrieval import evaluate_task, evaluate_tasks
from triptych.m3jepa.train import (
    AlignmentModule,
    TrainConfig,
    cosine_ramp,
    train_aligner,
    warmup_cosine,
)

PREDICTOR = {
    "type": "predictor",
    "dims": DIMS,
    "hidden": 32,
    "contrastive_dim": 16,
    "experts": 4,
    "top_k": 2,
    "dropout": 0.0,
}


@pytest.fixture(scope="module")
def tasks():
    cache = caption_set(n_images=150)
    return {s: split_tasks(cache, s) for s in ("train", "dev", "test")}


def _train(tasks, tmp_path, **kw):
    cfg = TrainConfig(**{"max_epochs": 6, "batch_size": 30, "patience": 10, "temperature": 0.1, **kw})
    return train_aligner(
        tasks["train"], tasks["dev"], PREDICTOR, cfg, out_dir=tmp_path, enable_progress_bar=False
    )


def test_agd_training_learns_the_alignment_and_reloads(tasks, tmp_path):
    torch.manual_seed(0)
    untrained = AlignmentModule(PREDICTOR, {}, ["image->text", "text->image"]).model
    before = evaluate_task(untrained, tasks["test"][0])
    result = _train(tasks, tmp_path)
    after = [evaluate_task(result.model, t) for t in tasks["test"]]
    # 30 test images / 60 captions: chance R@5 is ~17 %
    assert after[0]["r5"] > before["r5"] + 20 and after[0]["r5"] > 50, (before, after)
    assert after[1]["r5"] > 50
    # cyclic AGD: one optimiser step per task per batch (90 images / batch 30 = 3 batches, 2 tasks)
    assert result.module.trainer.global_step == 6 * 3 * 2
    assert len(result.val_history) == 6 and result.checkpoint.is_file()
    usage = result.module.expert_usage
    assert usage is not None and len(usage) == 4 and abs(sum(usage) - 1) < 1e-5
    # the best checkpoint, reloaded for search, embeds exactly like the selected model
    aligner = load_aligner(result.checkpoint)
    batch = tasks["test"][0].src_features.batch(np.arange(4))
    torch.testing.assert_close(
        aligner.embed_query("image", "text", batch),
        torch.nn.functional.normalize(result.model.embed_query("image", "text", batch), dim=-1),
    )
    best = max(h["val_recall"] for h in result.val_history)
    # selection ranks by the fused score (the default), so the dev recall is recomputed the same way
    dev = evaluate_tasks(aligner.model, tasks["dev"], fuse=True).values()
    assert abs(np.mean([np.mean(list(r.values())) for r in dev]) - best) < 1e-3


def test_fused_contrastive_changes_the_loss_and_trains(tasks, tmp_path):
    torch.manual_seed(0)
    plain = AlignmentModule(PREDICTOR, {}, ["image->text", "text->image"])
    torch.manual_seed(0)
    fused = AlignmentModule(PREDICTOR, {"fused_contrastive": 1.0}, ["image->text", "text->image"])
    task, rows = tasks["train"][0], torch.from_numpy(tasks["train"][0].pairs[:30])
    fused.eval(), plain.eval()  # no dropout: the same weights, only the loss differs
    (a, logs_a), (b, logs_b) = plain.task_loss(task, rows), fused.task_loss(task, rows)
    assert "fused" in logs_b and "fused" not in logs_a and not torch.isclose(a, b)
    # the reverse direction (text->image) is held fixed in the image->text step unless fused_reverse_grad
    reverse_target = fused.model.target_projection["image"].weight
    b.backward()
    assert reverse_target.grad is None
    both = AlignmentModule(
        PREDICTOR, {"fused_contrastive": 1.0, "fused_reverse_grad": True}, ["image->text", "text->image"]
    )
    both.task_loss(task, rows)[0].backward()
    assert both.model.target_projection["image"].weight.grad.abs().sum() > 0
    result = _train(tasks, tmp_path, fused_contrastive=1.0, max_epochs=4)
    trained, _ = result.module.task_loss(task, rows)
    assert trained < b - 0.5, (b, trained)  # the fused loss falls on the training pairs
    assert max(h["val_recall"] for h in result.val_history) > 40


def test_summed_and_sampled_schedules(tasks, tmp_path):
    summed = _train(tasks, tmp_path / "summed", schedule="summed", max_epochs=2)
    assert summed.module.trainer.global_step == 2 * 3  # one step per batch on the summed loss
    # the benchmark's moe_summed: as many optimiser steps as AGD (each epoch visits the items once per task)
    matched = _train(tasks, tmp_path / "matched", schedule="summed", match_agd_steps=True, max_epochs=2)
    assert matched.module.trainer.global_step == 2 * 3 * 2
    sampled = _train(tasks, tmp_path / "sampled", schedule="sampled", max_epochs=2)
    assert sampled.module.trainer.global_step == 2 * 3 * 2
    probs = sampled.module.task_probs
    assert torch.isclose(probs.sum(), torch.tensor(1.0)) and not torch.allclose(
        probs, torch.full_like(probs, 0.5)
    )


def test_ema_selects_and_saves_the_averaged_weights(tasks, tmp_path):
    result = _train(tasks, tmp_path, ema_decay=0.9, max_epochs=3, patience=10)
    module = result.module
    # training resumed each epoch from its own weights: they differ from the average kept beside them
    module.on_train_epoch_start()
    fast = [p.detach().clone() for p in module.model.parameters()]
    averaged = [p.detach() for p in module.ema.module.parameters()]
    assert any(not torch.allclose(f, a) for f, a in zip(fast, averaged, strict=True))
    # the last checkpoint holds the average after the last step, and it is what the aligner loads
    last = load_aligner(result.checkpoint.parent / "last.safetensors").model
    for a, p in zip(averaged, last.parameters(), strict=True):
        torch.testing.assert_close(p, a)
    # selection used the averaged weights: the selected epoch's dev recall is recomputed from its checkpoint
    best = max(h["val_recall"] for h in result.val_history)
    dev = evaluate_tasks(load_aligner(result.checkpoint).model, tasks["dev"], fuse=True).values()
    assert abs(np.mean([np.mean(list(r.values())) for r in dev]) - best) < 1e-3


def test_sampling_probabilities_favour_the_worse_task():
    module = AlignmentModule(PREDICTOR, {"schedule": "sampled", "sample_floor": 0.0}, ["a", "b"])
    module.adapt_probabilities({"a": 90.0, "b": 60.0})
    torch.testing.assert_close(module.task_probs, torch.tensor([0.2, 0.8]))


def test_schedules():
    assert warmup_cosine(0, 100, 1e-3, 1.5e-3, 5e-6, 0.1) == pytest.approx(1e-3)
    assert warmup_cosine(10, 100, 1e-3, 1.5e-3, 5e-6, 0.1) == pytest.approx(1.5e-3)
    assert warmup_cosine(100, 100, 1e-3, 1.5e-3, 5e-6, 0.1) == pytest.approx(5e-6)
    assert cosine_ramp(0, 10, 0.005, 0.2) == pytest.approx(0.005)
    assert cosine_ramp(5, 10, 0.005, 0.2) == pytest.approx(0.1025)
    assert cosine_ramp(10, 10, 0.005, 0.2) == pytest.approx(0.2)


def test_dimension_mismatch_and_wrong_checkpoint_are_clear_errors(tasks, tmp_path):
    wrong = {**PREDICTOR, "dims": {"image": 33, "text": 24}}
    with pytest.raises(InputError, match="are 32-d but the predictor expects 33-d"):
        train_aligner(tasks["train"], tasks["dev"], wrong, TrainConfig(max_epochs=1), out_dir=tmp_path)
    other = save_checkpoint(tmp_path / "other.safetensors", {"state_dict": {}}, kind="pdcr.segmentation")
    with pytest.raises(CheckpointError, match="not 'm3jepa.aligner'"):
        load_aligner(other)


def test_train_and_evaluate_commands(tmp_path):
    from m3jepa_synth import cli_train_evaluate, write_cache

    write_cache(tmp_path / "cache", caption_set(n_images=60))
    summary, _, results = cli_train_evaluate(
        tmp_path,
        "--hidden",
        "16",
        "--experts",
        "4",
        "--top-k",
        "2",
        "--epochs",
        "2",
        "--grid-pool",
        "0",
        "--batch-size",
        "16",
    )
    assert len(summary["val_history"]) == 2 and len(summary["expert_usage_last_epoch"]) == 4
    # the command's numbers are the checkpoint's own recall, recomputed by hand (fused, as it was trained)
    from m3jepa_synth import recall_by_hand

    from triptych.m3jepa.features import load_cache

    want = recall_by_hand(summary["checkpoint"], load_cache(tmp_path / "cache"), "test")
    assert set(results) == set(want)
    for task, r in want.items():
        assert results[task] == pytest.approx(r), task


def test_evaluate_reports_the_label_probe_on_a_label_cache(tmp_path):
    from m3jepa_synth import cli_train_evaluate, label_set, write_cache

    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.retrieval import label_probe_task

    write_cache(tmp_path / "cache", label_set(per_class=10, noise=0.3))
    summary, output, results = cli_train_evaluate(
        tmp_path,
        "--hidden",
        "8",
        "--experts",
        "2",
        "--top-k",
        "1",
        "--epochs",
        "1",
        "--grid-pool",
        "0",
        "--batch-size",
        "6",
    )
    checkpoint = summary["checkpoint"]
    assert "label_probe" in output and "top1" in output
    assert set(results) == {"image->text", "text->image", "label_probe"}
    # 3 classes: only top-1 is reported (top-5 would be trivially 100)
    want = label_probe_task(load_aligner(checkpoint).model, load_cache(tmp_path / "cache"), "test")
    assert set(results["label_probe"]) == {"top1"} and results["label_probe"]["top1"] == pytest.approx(
        want["top1"]
    )
    top1 = results["label_probe"]["top1"]
    assert any(top1 == pytest.approx(100 * n / 6) for n in range(7)), top1  # a share of the 6 test images

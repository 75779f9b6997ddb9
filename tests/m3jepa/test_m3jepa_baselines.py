import torch
from m3jepa_synth import DIMS, caption_set

from triptych.m3jepa.baselines import ClipHeads, method_configs
from triptych.m3jepa.benchmark import split_tasks
from triptych.m3jepa.retrieval import evaluate_task
from triptych.m3jepa.train import TrainConfig, train_aligner

PRED = {"dims": DIMS, "hidden": 32, "contrastive_dim": 16, "experts": 4, "top_k": 2}


def test_each_ablation_changes_one_thing():
    cfg = method_configs(PRED)
    full_model, full_train = cfg["m3jepa"]
    assert cfg["moe_summed"][0] == full_model and cfg["moe_summed"][1]["schedule"] == "summed"
    mlp_model, mlp_train = cfg["mlp"]
    assert {k for k in mlp_model if mlp_model[k] != full_model[k]} == {"mixer"} and mlp_train == full_train
    clip_model, clip_train = cfg["clip_linear"]
    assert clip_model["type"] == "clip" and clip_train["learnable_temperature"]


def test_clip_heads_train_with_learnable_temperature(tmp_path):
    cache = caption_set(n_images=150)
    train, dev, test = (split_tasks(cache, s) for s in ("train", "dev", "test"))
    model_cfg, overrides = method_configs(PRED, clip_dim=16)["clip_linear"]
    result = train_aligner(
        train,
        dev,
        model_cfg,
        TrainConfig(max_epochs=8, batch_size=30, **overrides),
        out_dir=tmp_path,
        enable_progress_bar=False,
    )
    assert isinstance(result.model, ClipHeads)
    assert evaluate_task(result.model, test[0])["r5"] > 35  # chance: ~17
    tau = float(result.module.loss.temperature())
    assert abs(tau - 0.07) > 1e-4  # learnt
    x = torch.randn(3, 5, 32)
    assert result.model.heads["image"](x.mean(1)).shape == (3, 16)

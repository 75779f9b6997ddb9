"""The predictor on a GPU: sparse and dense dispatch agree there, and Lightning training learns on it."""

from __future__ import annotations

import pytest
import torch
from m3jepa_synth import DIMS, caption_set

from triptych.core.training import TrainerFlags
from triptych.m3jepa.benchmark import split_tasks
from triptych.m3jepa.predictor import M3Predictor, PredictorConfig
from triptych.m3jepa.retrieval import evaluate_task
from triptych.m3jepa.train import TrainConfig, train_aligner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_sparse_and_dense_agree_on_cuda():
    torch.manual_seed(0)
    sparse = M3Predictor(PredictorConfig(DIMS, hidden=64, contrastive_dim=32, experts=12, top_k=4, dropout=0.0,
                                         dispatch="sparse"))
    dense = M3Predictor(PredictorConfig(DIMS, hidden=64, contrastive_dim=32, experts=12, top_k=4, dropout=0.0,
                                        dispatch="dense"))
    dense.load_state_dict(sparse.state_dict())
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(16, 9, DIMS["image"], generator=g).cuda(), torch.ones(16, 9, dtype=torch.bool).cuda()
    outs = []
    for model in (sparse.cuda(), dense.cuda()):
        out = model("image", "text", x, mask)
        (out.contrastive.square().sum() + out.regression.square().sum()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].contrastive, outs[1].contrastive, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0].regression, outs[1].regression, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_agd_training_on_the_gpu_learns(tmp_path):
    torch.manual_seed(0)
    cache = caption_set(n_images=150)
    tasks = {s: split_tasks(cache, s) for s in ("train", "dev", "test")}
    predictor = {"type": "predictor", "dims": DIMS, "hidden": 32, "contrastive_dim": 16, "experts": 4, "top_k": 2,
                 "dropout": 0.0}
    cfg = TrainConfig(max_epochs=6, batch_size=30, patience=10, temperature=0.1)
    result = train_aligner(tasks["train"], tasks["dev"], predictor, cfg, out_dir=tmp_path, enable_progress_bar=False,
                           flags=TrainerFlags(accelerator="gpu", devices="1"))
    assert type(result.module.trainer.accelerator).__name__ == "CUDAAccelerator"
    assert evaluate_task(result.model, tasks["test"][0])["r5"] > 50  # chance is ~17 %


def test_auto_dispatch_is_dense_on_cuda():
    torch.manual_seed(0)
    model = M3Predictor(PredictorConfig(DIMS, hidden=16, contrastive_dim=8, experts=6, top_k=3)).cuda()
    calls = []
    for expert in model.mixer.experts:
        expert.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    x = torch.randn(4, 5, DIMS["image"], device="cuda")
    model("image", "text", x, torch.ones(4, 5, dtype=torch.bool, device="cuda"))
    assert calls == [2 * 4 * 5] * 6  # every expert once, on every token of both branches

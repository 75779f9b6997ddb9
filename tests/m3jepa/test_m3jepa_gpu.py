"""The predictor on a GPU: sparse and dense dispatch agree there, and Lightning training learns on it."""

from __future__ import annotations

import pytest
import torch
from m3jepa_synth import DIMS, caption_set
from tiny_hf import tiny_bert, tiny_dinov2

from triptych.core.training import TrainerFlags
from triptych.m3jepa.benchmark import split_tasks
from triptych.m3jepa.predictor import M3Predictor, PredictorConfig
from triptych.m3jepa.retrieval import evaluate_task
from triptych.m3jepa.train import TrainConfig, train_aligner

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


def test_sparse_and_dense_agree_on_cuda():
    torch.manual_seed(0)
    sparse = M3Predictor(
        PredictorConfig(
            DIMS, hidden=64, contrastive_dim=32, experts=12, top_k=4, dropout=0.0, dispatch="sparse"
        )
    )
    dense = M3Predictor(
        PredictorConfig(
            DIMS, hidden=64, contrastive_dim=32, experts=12, top_k=4, dropout=0.0, dispatch="dense"
        )
    )
    dense.load_state_dict(sparse.state_dict())
    g = torch.Generator().manual_seed(1)
    x, mask = (
        torch.randn(16, 9, DIMS["image"], generator=g).cuda(),
        torch.ones(16, 9, dtype=torch.bool).cuda(),
    )
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
    predictor = {
        "type": "predictor",
        "dims": DIMS,
        "hidden": 32,
        "contrastive_dim": 16,
        "experts": 4,
        "top_k": 2,
        "dropout": 0.0,
    }
    cfg = TrainConfig(max_epochs=6, batch_size=30, patience=10, temperature=0.1)
    result = train_aligner(
        tasks["train"],
        tasks["dev"],
        predictor,
        cfg,
        out_dir=tmp_path,
        enable_progress_bar=False,
        flags=TrainerFlags(accelerator="gpu", devices="1"),
    )
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


def test_lora_finetuning_runs_on_cuda(tmp_path):
    """`finetune-lora` is meant for GPU users: adapters and predictor train on the device, bases stay frozen."""
    lora_on(tmp_path, "cuda")


def lora_on(tmp_path, device: str) -> None:
    import numpy as np
    from test_m3jepa_lora import PREDICTOR, dataset
    from transformers import BertTokenizerFast

    from triptych.m3jepa.data import read_caption_table
    from triptych.m3jepa.encoders import HFEncoder
    from triptych.m3jepa.lora import finetune_lora

    words = ["a", "plain", "square", "red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))  # no hub download
    torch.manual_seed(0)
    bert = tiny_bert(len(words) + 5)
    dino, processor = tiny_dinov2()
    base = [p.detach().clone() for m in (bert, dino) for p in m.parameters()]
    encoders = {
        "image": HFEncoder("tiny-dinov2", dino, processor),
        "text": HFEncoder("tiny-bert", bert, tokenizer, length=12),
    }
    data = read_caption_table(dataset(tmp_path / "data"))
    result = finetune_lora(
        data,
        encoders,
        PREDICTOR,
        lora_layers=1,
        steps=12,
        batch_size=6,
        lr=3e-3,
        split="train",
        device=device,
    )
    assert next(result.predictor.parameters()).device.type == device
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 0.05, result.losses
    frozen = [p for m in (bert, dino) for n, p in m.named_parameters() if "lora_" not in n]
    assert all(p.device.type == device for p in frozen)
    assert all(torch.equal(p.cpu(), b) for p, b in zip(frozen, base, strict=True))

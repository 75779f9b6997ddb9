"""LoRA fine-tuning on live encoders (tiny random HF models, CPU): only adapters and predictor learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_hf import tiny_bert, tiny_dinov2

from triptych.core.errors import InputError
from triptych.m3jepa.data import read_caption_table
from triptych.m3jepa.encoders import HFEncoder, MiniLMText
from triptych.m3jepa.lora import finetune_lora, lora_loss, prepare_encoders, trainable_parameters

PREDICTOR = {"hidden": 16, "contrastive_dim": 16, "experts": 2, "top_k": 1, "dropout": 0.0}
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


def tiny_models(tokenizer):
    torch.manual_seed(0)
    bert = tiny_bert(tokenizer.vocab_size)
    dino, processor = tiny_dinov2()
    return bert, dino, processor


def dataset(root):
    """8 plain-colour images with captions naming the colour; 6 train, 2 test."""
    (root / "images").mkdir(parents=True)
    rgb = {
        "red": (220, 30, 30),
        "green": (30, 200, 30),
        "blue": (30, 30, 220),
        "yellow": (230, 220, 30),
        "purple": (140, 40, 180),
        "orange": (250, 140, 20),
        "black": (10, 10, 10),
        "white": (250, 250, 250),
    }
    rows = ["image,caption,split"]
    for k, colour in enumerate(COLOURS):
        Image.new("RGB", (32, 32), rgb[colour]).save(root / "images" / f"{colour}.png")
        rows.append(f"{colour}.png,a plain {colour} square,{'train' if k < 6 else 'test'}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root / "captions.csv"


def test_only_adapters_and_predictor_learn(tokenizer, tmp_path):
    bert, dino, processor = tiny_models(tokenizer)
    base = [(p, p.detach().clone()) for m in (bert, dino) for p in m.parameters()]
    encoders = {
        "image": HFEncoder("tiny-dinov2", dino, processor),
        "text": HFEncoder("tiny-bert", bert, tokenizer, length=12),
    }
    data = read_caption_table(dataset(tmp_path))
    result = finetune_lora(
        data, encoders, PREDICTOR, lora_layers=1, steps=12, batch_size=6, lr=3e-3, split="train"
    )
    losses = result.losses
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    # every base-encoder weight is exactly as before; the adapters sit only in the last layer (1 of 0..1)
    assert all(torch.equal(p, before) for p, before in base)
    for modality, enc in result.encoders.items():
        names = [n for n, p in enc.model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names), (modality, names)
        assert {n.split("layer.")[1].split(".")[0] for n in names} == {"1"}
        # lora_B starts at zero (the identity); training moved every one of them
        assert all(float(p.abs().sum()) > 0 for n, p in enc.model.named_parameters() if "lora_B" in n)
    # one more backward pass: gradients reach only the adapters and the predictor
    trainable = {id(p) for p in trainable_parameters(result.predictor, result.encoders)}
    images = [data.load_image(i) for i in range(4)]
    batch = {"image": encoders["image"].encode(images), "text": encoders["text"].encode(data.captions[:4])}
    ids = torch.arange(4)
    lora_loss(result.predictor.train(), batch, {"image": ids, "text": ids}, 0.5, 0.07).backward()
    every = [p for m in (result.predictor, *(e.model for e in encoders.values())) for p in m.parameters()]
    with_grad = [p for p in every if p.grad is not None]
    assert with_grad and all(id(p) in trainable for p in with_grad)
    assert any(
        p.grad is not None for e in encoders.values() for n, p in e.model.named_parameters() if "lora_" in n
    )
    assert all(p.grad is None for p, _ in base)


def test_lora_needs_layers_and_an_hf_encoder(tokenizer):
    bert, _, _ = tiny_models(tokenizer)
    with pytest.raises(InputError, match="--lora-layers 0"):
        prepare_encoders({"text": HFEncoder("tiny-bert", bert, tokenizer, length=12)}, 0)
    with pytest.raises(InputError, match="at least one Hugging Face encoder"):
        prepare_encoders({"text": MiniLMText(length=12)}, 2)


def test_finetune_lora_command_then_encode_and_evaluate(tokenizer, tmp_path, invoke):
    import json

    from triptych.m3jepa.cli import app

    bert, dino, processor = tiny_models(tokenizer)
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    dino.save_pretrained(tmp_path / "dino")
    processor.save_pretrained(tmp_path / "dino")
    captions = dataset(tmp_path / "data")
    run = tmp_path / "run"
    res = invoke(
        app,
        [
            "finetune-lora",
            "--data",
            f"captions:{captions}",
            "--image-encoder",
            str(tmp_path / "dino"),
            "--text-encoder",
            str(tmp_path / "bert"),
            "--out",
            str(run),
            "--lora-layers",
            "1",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--hidden",
            "8",
            "--experts",
            "2",
            "--top-k",
            "1",
            "--text-length",
            "12",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (run / "encoders" / "image" / "config.json").is_file() and (run / "encoders" / "text").is_dir()
    assert len(json.loads((run / "lora_summary.json").read_text())["losses"]) == 3
    # the merged encoders are plain HF folders: encode with them, then evaluate the saved aligner on that cache
    res = invoke(
        app,
        [
            "encode",
            "--data",
            f"captions:{captions}",
            "--out",
            str(tmp_path / "cache"),
            "--image-encoder",
            str(run / "encoders" / "image"),
            "--text-encoder",
            str(run / "encoders" / "text"),
            "--text-length",
            "12",
        ],
    )
    assert res.exit_code == 0, res.output
    res = invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(run / "checkpoints" / "lora.safetensors"),
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert set(results) == {"image->text", "text->image"}
    # merging changed the text encoder (the adapters learned something), not its shape
    from triptych.m3jepa.encoders import make_encoder

    with torch.inference_mode():
        merged = make_encoder(str(run / "encoders" / "text"), modality="text", length=12).encode(
            ["a red square"]
        )
        plain = HFEncoder("tiny-bert", bert, tokenizer, length=12).encode(["a red square"])
    assert merged.tokens.shape == plain.tokens.shape and not torch.allclose(merged.tokens, plain.tokens)

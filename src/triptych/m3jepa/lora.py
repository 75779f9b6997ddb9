"""Optional LoRA fine-tuning: the predictor trained together with LoRA adapters on live encoders.

The normal pipeline (``encode`` → ``train``) reads a frozen feature cache, so adapters on
the encoders could never learn there. Here both encoders run on every batch: the adapters
on the last K attention layers (q/v, see :func:`~triptych.m3jepa.encoders.add_lora`) and
the predictor are trained, every base-encoder weight stays frozen. Both directions'
losses are summed per step (no AGD: one optimiser over encoders and predictor). Meant for
a GPU; on a CPU it is slow for any real encoder.

Afterwards the adapters are merged into each encoder and saved as a plain Hugging Face
model folder, so ``triptych m3jepa encode --image-encoder OUT/encoders/image`` builds a
cache of the fine-tuned features, and the predictor is saved as an aligner checkpoint
that ``evaluate`` / ``index`` accept with such a cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from triptych.core.errors import InputError
from triptych.core.results import json_text
from triptych.m3jepa.encoders import Encoder, HFEncoder, add_lora, make_encoder
from triptych.m3jepa.losses import alpha_mix, info_nce, latent_regression, positives_from_ids
from triptych.m3jepa.predictor import M3Predictor, PredictorConfig

DIRECTIONS = (("image", "text"), ("text", "image"))


@dataclass
class LoraResult:
    """The trained predictor, the adapted encoders (by modality) and the loss of every step."""

    predictor: M3Predictor
    encoders: dict[str, Encoder]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def trainable_parameters(predictor: nn.Module, encoders: dict[str, Encoder]) -> list[nn.Parameter]:
    """The predictor's parameters and the encoders' LoRA adapters (nothing else requires grad)."""
    params = [p for p in predictor.parameters() if p.requires_grad]
    for enc in encoders.values():
        params += [p for p in enc.model.parameters() if p.requires_grad]
    return params


def prepare_encoders(
    encoders: dict[str, Encoder], lora_layers: int, rank: int = 4, alpha: int = 16
) -> dict[str, Encoder]:
    """Freeze every encoder weight; put LoRA adapters (trainable) on the last ``lora_layers`` layers of HF encoders."""
    if lora_layers < 1:
        raise InputError(
            f"--lora-layers {lora_layers}: give the number of last encoder layers to adapt (>= 1)"
        )
    adapted = 0
    for enc in encoders.values():
        enc.model.requires_grad_(False)  # base weights never change; get_peft_model also freezes them
        if isinstance(enc, HFEncoder):
            add_lora(enc, last_k=lora_layers, r=rank, alpha=alpha)
            adapted += 1
    if not adapted:
        raise InputError(
            "LoRA needs at least one Hugging Face encoder (a model name or local folder); the bundled "
            "efficientnet-lite0 / MiniLM wrappers take no adapters"
        )
    return encoders


def lora_loss(
    predictor: M3Predictor,
    batch: dict[str, Any],
    item_ids: dict[str, torch.Tensor],
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Σ over both directions of α·InfoNCE + (1−α)·smooth-L1, on one batch of live encoder outputs."""
    total = torch.zeros((), device=batch["image"].tokens.device)
    for src, tgt in DIRECTIONS:
        s, t = batch[src], batch[tgt]
        out = predictor(src, tgt, s.tokens, s.mask)
        target = predictor.project_target(tgt, t.tokens, t.mask)
        positives = positives_from_ids(item_ids[src], item_ids[tgt]).to(total.device)
        lc = info_nce(out.contrastive, target, temperature, positives)
        # stop-gradient on the regression target, as in JEPA: the target encoder is not pulled towards
        # the prediction (which would let both collapse); it still learns through the contrastive term
        lr = latent_regression(out.regression, t.pooled.detach())
        total = total + alpha_mix(lc, lr, alpha)
    return total


def finetune_lora(
    data: Any,
    encoders: dict[str, Encoder],
    predictor_config: dict[str, Any],
    *,
    lora_layers: int,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    alpha: float = 0.5,
    temperature: float = 0.07,
    split: str | None = "train",
    rank: int = 4,
    lora_alpha: int = 16,
    seed: int = 0,
    device: str = "cpu",
    log_every: int = 0,
) -> LoraResult:
    """Train LoRA adapters on ``encoders`` ({"image", "text"}) and a predictor on ``data``'s image–caption pairs."""
    if set(encoders) != {"image", "text"}:
        raise InputError(f"LoRA fine-tuning needs an image and a text encoder, got {sorted(encoders)}")
    if steps < 1 or batch_size < 2:
        raise InputError(
            f"need steps >= 1 and batch size >= 2 (InfoNCE needs negatives), got {steps}, {batch_size}"
        )
    if split is not None:
        data = data.subset(split)
    torch.manual_seed(seed)
    prepare_encoders(encoders, lora_layers, rank, lora_alpha)
    for enc in encoders.values():
        enc.model.eval()  # no dropout inside the encoders: the adapters see the features a cache would hold
        enc.model.to(device)
        enc.device = device
    config = PredictorConfig(
        dims={m: enc.dim for m, enc in encoders.items()},
        directions=[list(d) for d in DIRECTIONS],
        **predictor_config,
    )
    predictor = M3Predictor(config).to(device)
    opt = torch.optim.AdamW(trainable_parameters(predictor, encoders), lr=lr, weight_decay=0.0)
    g = np.random.default_rng(seed)
    # one caption per image per batch, so the in-batch negatives are other images
    by_image = [np.flatnonzero(data.caption_image == i) for i in range(len(data.images))]
    losses, start = [], time.perf_counter()
    for step in range(steps):
        images = g.choice(len(data.images), size=min(batch_size, len(data.images)), replace=False)
        captions = np.array([g.choice(by_image[i]) for i in images])
        batch = {
            "image": encoders["image"].encode([data.load_image(int(i)) for i in images]),
            "text": encoders["text"].encode([data.captions[int(j)] for j in captions]),
        }
        ids = torch.as_tensor(images)
        loss = lora_loss(predictor, batch, {"image": ids, "text": ids}, alpha, temperature)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable_parameters(predictor, encoders), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    return LoraResult(predictor.eval(), encoders, losses, time.perf_counter() - start)


def save_lora_run(out: str | Path, result: LoraResult) -> Path:
    """Merge the adapters into the encoders (``OUT/encoders/<modality>/``), save the predictor as an aligner checkpoint."""
    from triptych.core.checkpoint import save_checkpoint
    from triptych.core.io import write_text
    from triptych.m3jepa.aligner import KIND

    out = Path(out)
    records = {}
    for modality, enc in result.encoders.items():
        if getattr(enc, "lora", None):
            folder = out / "encoders" / modality
            merged = enc.model.merge_and_unload()  # W + (α/r)·BA: a plain model, no peft needed to use it
            merged.save_pretrained(folder)
            enc.processor.save_pretrained(folder)
            enc.model = merged
            # the record must match what `encode --*-encoder FOLDER` will write into a cache manifest
            enc = make_encoder(str(folder), modality=modality, length=enc.length)
        records[modality] = {
            "encoder": enc.name,
            "fingerprint": enc.fingerprint(),
            "precision": enc.precision,
            "dim": int(enc.dim),
            "length": int(enc.length),
        }
    model_config = {"type": "predictor", **result.predictor.config.to_dict()}
    hparams = {"model_config": model_config, "encoders": records, "kind": KIND}
    state = {f"model.{k}": v.detach().cpu() for k, v in result.predictor.state_dict().items()}
    checkpoint = save_checkpoint(
        out / "checkpoints" / "lora.safetensors",
        {"state_dict": state, "hyper_parameters": hparams},
        kind=KIND,
        config=hparams,
    )
    write_text(
        out / "lora_summary.json",
        json_text(
            {
                "checkpoint": str(checkpoint),
                "encoders": records,
                "losses": result.losses,
                "seconds": result.seconds,
            },
            indent=1,
        ),
    )
    return checkpoint

"""Two-process DDP training of the M3-JEPA predictor (sampled AGD), run as a script by
test_m3jepa_train_ddp.py: Lightning's ``ddp`` strategy re-executes this file per rank.
Each rank writes a checksum of its final parameters, so the test can check they agree."""

import json
import sys
from pathlib import Path

import torch
from m3jepa_synth import DIMS, caption_set

from triptych.core.training import TrainerFlags
from triptych.m3jepa.benchmark import split_tasks
from triptych.m3jepa.train import TrainConfig, train_aligner

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    cache = caption_set(n_images=80)
    model = {
        "type": "predictor",
        "dims": DIMS,
        "hidden": 16,
        "contrastive_dim": 8,
        "experts": 4,
        "top_k": 2,
        "dropout": 0.0,
    }
    flags = TrainerFlags(accelerator="cpu", devices="2", strategy="ddp")
    result = train_aligner(
        split_tasks(cache, "train"),
        split_tasks(cache, "dev"),
        model,
        TrainConfig(schedule="sampled", max_epochs=2, batch_size=8, patience=5),
        out_dir=out,
        flags=flags,
        enable_progress_bar=False,
    )
    trainer = result.module.trainer
    params = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    (out / f"rank{trainer.global_rank}.json").write_text(
        json.dumps(
            {
                "sum": float(params.sum()),
                "abs": float(params.abs().sum()),
                "steps": int(trainer.global_step),
                "world": int(trainer.world_size),
            }
        )
    )

"""Training throughput (pairs/s) of the M3-JEPA predictor: sparse against dense expert dispatch.

One run measures both at the paper's ratio (E = 12 experts, top k = 4) on tensors shaped
like the offline encoders' features (image: 49 tokens × 1280, text: 48 tokens × 384 with
~14 real tokens). A training step is one AGD step per direction (image→text and
text→image): forward, α-mixed loss, backward, gradient clipping, AdamW. The two modes
alternate in rounds so that load from other processes affects both alike.

Example: python benchmarks/m3jepa_speed.py --out bench_out/m3jepa_speed
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from triptych.core.results import markdown_table, write_results
from triptych.m3jepa.losses import alpha_mix, info_nce, latent_regression
from triptych.m3jepa.predictor import M3Predictor, PredictorConfig

DIMS = {"image": 1280, "text": 384}
LENGTHS = {"image": 49, "text": 48}


def fake_batch(
    modality: str, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens B×L×D, mask B×L (text: 10-20 real tokens, as Flickr8k captions), pooled B×D."""
    tokens = torch.randn(batch, LENGTHS[modality], DIMS[modality], generator=gen)
    if modality == "text":
        lengths = torch.randint(10, 21, (batch, 1), generator=gen)
        mask = torch.arange(LENGTHS["text"]).unsqueeze(0) < lengths
    else:
        mask = torch.ones(batch, LENGTHS[modality], dtype=torch.bool)
    return tokens, mask, tokens.mean(1)


def agd_step(model: M3Predictor, opt: torch.optim.Optimizer, data: dict) -> None:
    """One optimiser step per direction."""
    for src, tgt in model.config.directions:
        s_tok, s_mask, _ = data[src]
        t_tok, t_mask, t_pool = data[tgt]
        out = model(src, tgt, s_tok, s_mask)
        loss = alpha_mix(
            info_nce(out.contrastive, model.project_target(tgt, t_tok, t_mask), 0.03),
            latent_regression(out.regression, t_pool),
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def measure(
    hidden: int,
    experts: int,
    top_k: int,
    batch: int,
    steps: int,
    rounds: int,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, dict]:
    gen = torch.Generator().manual_seed(seed)
    data = {m: tuple(t.to(device) for t in fake_batch(m, batch, gen)) for m in DIMS}

    def sync() -> None:  # GPU work is asynchronous: wait for it before reading the clock
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    models, opts = {}, {}
    for mode in ("sparse", "dense"):
        torch.manual_seed(seed)
        models[mode] = M3Predictor(
            PredictorConfig(
                DIMS, hidden=hidden, contrastive_dim=hidden, experts=experts, top_k=top_k, dispatch=mode
            )
        ).to(device)
        opts[mode] = torch.optim.AdamW(models[mode].parameters(), lr=1e-4)
        agd_step(models[mode], opts[mode], data)  # warm-up
    times: dict[str, list[float]] = {"sparse": [], "dense": []}
    for _ in range(rounds):
        for mode in ("sparse", "dense"):
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                agd_step(models[mode], opts[mode], data)
            sync()
            times[mode].append(time.perf_counter() - start)
    pairs = steps * batch * len(models["sparse"].config.directions)  # pairs seen per round
    out = {}
    for mode, ts in times.items():
        rates = [pairs / t for t in ts]
        out[mode] = {
            "pairs_per_s": float(np.median(rates)),
            "pairs_per_s_rounds": rates,
            "params": sum(p.numel() for p in models[mode].parameters()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/m3jepa_speed"))
    parser.add_argument("--hidden", type=int, default=512, help="H (the reference uses 2048)")
    parser.add_argument("--experts", type=int, default=12)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="AGD steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(
        args.hidden, args.experts, args.top_k, args.batch, args.steps, args.rounds, device=args.device
    )
    where = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s)"
    )
    ratio = result["sparse"]["pairs_per_s"] / result["dense"]["pairs_per_s"]
    results = {
        "config": {
            "hidden": args.hidden,
            "experts": args.experts,
            "top_k": args.top_k,
            "batch": args.batch,
            "steps": args.steps,
            "rounds": args.rounds,
            "threads": args.threads,
            "device": args.device,
            "machine": where,
            "torch": torch.__version__,
        },
        "sparse": result["sparse"],
        "dense": result["dense"],
        "speedup_sparse_over_dense": ratio,
        "expert_share_computed": args.top_k / args.experts,
    }
    rows = [
        {
            "dispatch": mode,
            "pairs/s (median of rounds)": result[mode]["pairs_per_s"],
            "params": result[mode]["params"],
        }
        for mode in ("sparse", "dense")
    ]
    md = (
        f"# M3-JEPA predictor training throughput: sparse vs dense dispatch\n\n"
        f"E = {args.experts}, k = {args.top_k}, H = {args.hidden}, batch {args.batch}, {where}; "
        f"one step = one AGD update per direction.\n\n"
        + markdown_table(rows, floatfmt="{:.1f}")
        + f"\nSparse / dense throughput: **{ratio:.2f}×** (experts computed per token: {args.top_k}/{args.experts}).\n"
    )
    write_results(args.out, results, md)
    print(md)


if __name__ == "__main__":
    main()

"""Encoding throughput: the old single-process fp32 path against the new default path, side by side.

The same Flickr8k images (and their five captions each) are encoded into fresh feature caches
by each path, in alternating rounds (A, B, C, A, B, C, ...), on the bundled encoders
(EfficientNet-Lite0 at 224 x 224, MiniLM):

- ``old``: ``write_features`` and the encoders of git ``--ref`` (the code before this change:
  fp32, BatchNorm unfolded, 32 images and 32 captions per call, captions in file order,
  decoding in-process);
- ``old8``: the same old code with this change's batch sizes alone (8 images, 128 captions);
- ``fp32``: the current code with ``--precision fp32`` (BatchNorm folded, channels-last,
  8 images per call, captions batched by length, 128 per call), images decoded in-process;
- ``new0`` / ``new1``: the current defaults (bf16 autocast on this CPU) with 0 / 1 DataLoader
  workers decoding and resizing images while the network runs;
- ``ray``: the current defaults on ``--ray-workers`` Ray workers of one thread each (images only;
  the session is started before the rounds and its start-up reported apart).

Before the rounds, one pass profiles the old path's stages (decode, resize + crop, network)
on a batch. Every cache is compared with the old path's: cosine of the pooled vectors.
Encoders are built once, before the rounds (their loading is not timed).

Example (under the shared timing lock):
    /work/wt/timed .venv/bin/python benchmarks/m3jepa_encode_speed.py --images 384 --rounds 3 \\
        --out benchmarks/results/m3jepa_encode_speed
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

OLD_REF = "d35c925b"  # main before bf16 / folded BatchNorm / length-sorted captions


def old_module(ref: str, name: str) -> Any:
    """``triptych.m3jepa.<name>`` as it was at git ``ref``, loaded under the name ``old_<name>``."""
    source = subprocess.run(
        ["git", "show", f"{ref}:src/triptych/m3jepa/{name}.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"old_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"old_{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; two all-zero rows (a ReLU6 grid cell that is off in both) count as equal (1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def profile_old(data: Any, old_enc: Any, old_txt: Any, n: int) -> dict[str, float]:
    """Milliseconds per item of the old path's stages, on ``n`` images and their captions."""
    import torch

    from triptych.m3jepa.data import read_image
    from triptych.m3jepa.encoders import image_tensor

    t = time.perf_counter()
    images = [read_image(data.image_path(i)) for i in range(n)]  # open + decode + RGB
    decode = time.perf_counter() - t
    t = time.perf_counter()
    x = image_tensor(images, old_enc.size, old_enc.normalise)
    resize = time.perf_counter() - t
    captions = [c for c, i in zip(data.captions, data.caption_image, strict=True) if i < n]
    with torch.inference_mode():
        old_enc.encode_tensors(x[:8])  # warm-up
        t = time.perf_counter()
        for b in range(0, n, 32):
            old_enc.encode_tensors(x[b : b + 32])
        network = time.perf_counter() - t
        t = time.perf_counter()
        for b in range(0, len(captions), 32):
            old_txt.encode(captions[b : b + 32])
        text = time.perf_counter() - t
    return {
        "images": n,
        "decode_ms_per_image": 1e3 * decode / n,
        "resize_crop_ms_per_image": 1e3 * resize / n,
        "network_ms_per_image": 1e3 * network / n,
        "captions": len(captions),
        "text_ms_per_caption": 1e3 * text / len(captions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="/work/shared/data/flickr8k")
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--ref", default=OLD_REF, help="git ref of the old path")
    parser.add_argument("--paths", default="old,old8,fp32,new0,new1")
    parser.add_argument("--profile-images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench_out/m3jepa_encode_speed"))
    args = parser.parse_args()

    import torch

    from triptych.core import batch
    from triptych.core.results import markdown_table, write_results
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import EfficientNetLite0, MiniLMText, make_encoder
    from triptych.m3jepa.features import RayPlan, load_features, write_features

    torch.set_num_threads(args.threads)
    old_enc_mod, old_feat = old_module(args.ref, "encoders"), old_module(args.ref, "features")
    full = load_dataset(f"flickr8k:{args.data}")
    data = full.select(full.images[: args.images])  # the first N images and their captions
    ids, caption_ids = data.images, data.caption_ids
    old_img, old_txt = old_enc_mod.EfficientNetLite0(), old_enc_mod.MiniLMText()
    fp32_img, fp32_txt = EfficientNetLite0(precision="fp32"), MiniLMText(precision="fp32")
    new_img, new_txt = EfficientNetLite0(), MiniLMText()  # the defaults: "auto"
    paths = args.paths.split(",")
    profile = profile_old(data, old_img, old_txt, min(args.profile_images, len(ids)))
    print("old path stages:", profile, flush=True)
    ray_start = None
    if "ray" in paths:
        t = time.perf_counter()
        batch.init_ray(workers=args.ray_workers)
        import ray

        ray_start = time.perf_counter() - t
    plan = RayPlan(partial(make_encoder, "efficientnet-lite0", modality="image"), args.ray_workers)
    shard = args.shard_size

    def current(img: Any, txt: Any, workers: int, ray_plan: Any = None) -> dict[str, Any]:
        return {
            "image": lambda out: write_features(
                out,
                ids,
                data.load_item,
                img,
                shard_size=shard,
                batch_size=8,
                loader_workers=workers,
                ray=ray_plan,
            ),
            "text": lambda out: write_features(
                out, caption_ids, data.captions.__getitem__, txt, shard_size=shard, batch_size=128
            ),
        }

    runs: dict[str, dict[str, Any]] = {
        "old": {
            "image": lambda out: old_feat.write_features(
                out, ids, data.load_item, old_img, shard_size=shard, batch_size=32
            ),
            "text": lambda out: old_feat.write_features(
                out, caption_ids, data.captions.__getitem__, old_txt, shard_size=shard, batch_size=32
            ),
        },
        "old8": {  # the old code with the new batch sizes alone
            "image": lambda out: old_feat.write_features(
                out, ids, data.load_item, old_img, shard_size=shard, batch_size=8
            ),
            "text": lambda out: old_feat.write_features(
                out, caption_ids, data.captions.__getitem__, old_txt, shard_size=shard, batch_size=128
            ),
        },
        "fp32": current(fp32_img, fp32_txt, 0),
        "new0": current(new_img, new_txt, 0),
        "new1": current(new_img, new_txt, 1),
        "ray": {"image": current(new_img, new_txt, 0, plan)["image"]},
    }
    work = Path(tempfile.mkdtemp(prefix="encode_speed_"))
    seconds: dict[str, dict[str, list[float]]] = {p: {"image": [], "text": []} for p in paths}
    loads = []
    for r in range(args.rounds):
        for p in paths:
            for modality, run in runs[p].items():
                out = work / f"{p}{r}" / modality
                t = time.perf_counter()
                run(out)
                seconds[p][modality].append(time.perf_counter() - t)
                if r > 0:
                    shutil.rmtree(out)  # keep round 0's caches for the comparison
            loads.append(os.getloadavg()[0])
            print(p, r, {m: f"{s[-1]:.1f} s" for m, s in seconds[p].items() if s}, flush=True)
    reference = {m: np.asarray(load_features(work / "old0" / m).pooled) for m in ("image", "text")}
    closeness = {
        p: {
            m: float(cosines(np.asarray(load_features(work / f"{p}0" / m).pooled), reference[m]).min())
            for m in runs[p]
        }
        for p in paths
    }
    precision = {p: (new_img.precision if p.startswith(("new", "ray")) else "fp32") for p in paths}
    if ray_start is not None:
        ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    def med(p: str, m: str) -> float:
        return float(np.median(seconds[p][m])) if seconds[p][m] else float("nan")

    rows = []
    for p in paths:
        both = med(p, "image") + med(p, "text")
        rows.append(
            {
                "path": p,
                "precision": precision[p],
                "images/s": len(ids) / med(p, "image"),
                "image speed-up": med("old", "image") / med(p, "image"),
                "captions/s": len(caption_ids) / med(p, "text"),
                "text speed-up": med("old", "text") / med(p, "text"),
                "images+captions speed-up": (med("old", "image") + med("old", "text")) / both,
                "image runs (s)": ", ".join(f"{s:.1f}" for s in seconds[p]["image"]),
                "text runs (s)": ", ".join(f"{s:.1f}" for s in seconds[p]["text"]),
                "min cos image": closeness[p].get("image", float("nan")),
                "min cos text": closeness[p].get("text", float("nan")),
            }
        )
    record = {
        "images": len(ids),
        "captions": len(caption_ids),
        "rounds": args.rounds,
        "threads": args.threads,
        "old_ref": args.ref,
        "ray_workers": args.ray_workers,
        "ray_start_seconds": ray_start,
        "old_path_stages": profile,
        "seconds": seconds,
        "rows": rows,
        "load_average_1min": loads,
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
    }
    stage_total = (
        profile["decode_ms_per_image"] + profile["resize_crop_ms_per_image"] + profile["network_ms_per_image"]
    )
    md = (
        f"# Encoding throughput, {len(ids)} Flickr8k images + {len(caption_ids)} captions\n\n"
        f"Command: `{record['command']}` on {record['date']}; {args.threads} torch threads on 2 cores, "
        f"{args.rounds} alternating rounds, medians; 1-min load average during the rounds "
        f"{min(loads):.1f}–{max(loads):.1f}.\n"
        f"old = `write_features` + encoders of git `{args.ref}` (fp32, 32 images / 32 captions per call, "
        "captions in file order); old8 = the same old code with 8 images / 128 captions per call; "
        "fp32 = this code with `--precision fp32` (BatchNorm folded, channels-last, 8 images per call, "
        "captions by length, 128 per call); new0/new1 = this code's defaults (bf16 autocast on this AMX CPU) with 0/1 "
        "DataLoader workers decoding images. Encoder loading is not timed. min cos = smallest cosine, "
        "over all items, between a path's pooled vectors and the old path's.\n\n"
        + markdown_table(rows, floatfmt="{:.3f}")
        + f"\n\nOld path's stages ({profile['images']} images, ms per image): decode "
        f"{profile['decode_ms_per_image']:.1f}, resize + crop {profile['resize_crop_ms_per_image']:.1f}, "
        f"network {profile['network_ms_per_image']:.1f} "
        f"({100 * profile['network_ms_per_image'] / stage_total:.0f} % of the three); text "
        f"{profile['text_ms_per_caption']:.2f} ms per caption ({profile['captions']} captions).\n"
    )
    write_results(args.out, record, md)
    print(md)


if __name__ == "__main__":
    main()

"""Is bf16 encoding close enough to fp32? Features and retrieval of trained checkpoints, both ways.

A split of Flickr8k (images and their captions) is encoded three times:

- ``old``: the encoders and ``write_features`` of git ``--ref`` (fp32, BatchNorm unfolded);
- ``fp32``: this code with ``precision="fp32"`` (BatchNorm folded, captions batched by length);
- ``bf16``: this code's default on CPUs with native bf16 (bf16 autocast).

Reported: cosine between each item's pooled vector (and each real token) and the old path's,
and Recall@1/5/10 both ways of the given checkpoints (trained on fp32 features), ranked as the
benchmark ranks (:func:`~triptych.m3jepa.retrieval.direction_metrics`), on each encoding.
Nothing is trained here. The checkpoints' encoder records are not checked against the caches
(that check would, rightly, refuse the bf16 cache for an fp32-trained model).

Example:
    python benchmarks/m3jepa_encode_precision.py --checkpoint runs/m3jepa/checkpoints/best.safetensors \\
        --split test --out benchmarks/results/m3jepa_encode_precision
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from m3jepa_encode_speed import OLD_REF, cosines, old_module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="/work/shared/data/flickr8k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--ref", default=OLD_REF, help="git ref of the old (fp32) path")
    parser.add_argument("--out", type=Path, default=Path("bench_out/m3jepa_encode_precision"))
    args = parser.parse_args()

    import torch

    from triptych.core.results import markdown_table, write_results
    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import EfficientNetLite0, MiniLMText
    from triptych.m3jepa.features import encode_dataset, load_cache
    from triptych.m3jepa.retrieval import direction_metrics
    from triptych.m3jepa.tasks import split_tasks

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    data = load_dataset(f"flickr8k:{args.data}").subset(args.split)
    old_enc, old_feat = old_module(args.ref, "encoders"), old_module(args.ref, "features")
    work = Path(tempfile.mkdtemp(prefix="encode_precision_"))
    encodings = {
        "old": lambda out: old_feat.encode_dataset(
            data, out, [old_enc.EfficientNetLite0(), old_enc.MiniLMText()]
        ),
        "fp32": lambda out: encode_dataset(
            data, out, [EfficientNetLite0(precision="fp32"), MiniLMText(precision="fp32")]
        ),
        "bf16": lambda out: encode_dataset(
            data, out, [EfficientNetLite0(precision="bf16"), MiniLMText(precision="bf16")]
        ),
    }
    caches = {}
    for name, encode in encodings.items():
        encode(work / name)
        caches[name] = load_cache(work / name)
        print("encoded", name, flush=True)

    feature_rows = []
    for name in ("fp32", "bf16"):
        for modality in ("image", "text"):
            a, b = getattr(caches["old"], modality), getattr(caches[name], modality)
            pooled = cosines(np.asarray(b.pooled), np.asarray(a.pooled))
            mask = np.asarray(a.mask)
            tokens = cosines(np.asarray(b.tokens)[mask], np.asarray(a.tokens)[mask])  # real tokens only
            feature_rows.append(
                {
                    "encoding": name,
                    "modality": modality,
                    "pooled cos min": float(pooled.min()),
                    "pooled cos mean": float(pooled.mean()),
                    "token cos min": float(tokens.min()),
                    "token cos mean": float(tokens.mean()),
                    "tokens max abs diff": float(
                        np.abs(np.asarray(b.tokens, np.float32) - np.asarray(a.tokens, np.float32)).max()
                    ),
                }
            )

    retrieval_rows = []
    for checkpoint in args.checkpoint:
        aligner = load_aligner(checkpoint)
        fuse = bool(aligner.train_config.get("fuse_directions", False))
        for name, cache in caches.items():
            metrics = direction_metrics(aligner.model, split_tasks(cache, args.split), fuse)
            retrieval_rows.append(
                {
                    "checkpoint": checkpoint.name,
                    "encoding": name,
                    **{f"{d} R@{k}": metrics[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)},
                }
            )
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "split": args.split,
        "images": len(data.images),
        "captions": len(data.captions),
        "old_ref": args.ref,
        "checkpoints": [str(c) for c in args.checkpoint],
        "features": feature_rows,
        "retrieval": retrieval_rows,
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    md = (
        f"# bf16 against fp32 encoding, Flickr8k {args.split} ({len(data.images)} images, "
        f"{len(data.captions)} captions)\n\n"
        f"Command: `{record['command']}` on {record['date']}.\n"
        f"old = encoders + `write_features` of git `{args.ref}` (fp32); fp32 = this code with "
        "`--precision fp32`; bf16 = this code's default on CPUs with native bf16. Cosines against old.\n\n"
        + markdown_table(feature_rows, floatfmt="{:.5f}")
        + "\n\nRecall@K (%) of checkpoints trained on fp32 features, the benchmark's ranking:\n\n"
        + markdown_table(retrieval_rows, floatfmt="{:.2f}")
        + "\n"
    )
    write_results(args.out, record, md)
    print(md)


if __name__ == "__main__":
    main()

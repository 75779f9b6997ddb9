"""Ranking-only screens of trained M3-JEPA checkpoints on the DEV split (no retraining, never test).

For each checkpoint, the dev Recall@K both ways under other ways of combining the predictor's
scores than the benchmark's fused sum s = q_{i→t}·k_t + q_{t→i}·k_i:

- ``reverse w``: s = q_{i→t}·k_t + w · q_{t→i}·k_i (and the same with the roles swapped for
  text queries): is the equal-weight sum the best fusion?
- ``regression w``: the fused sum plus w · cos(regression head's prediction, the real pooled
  target embedding), both directions, scaled to the contrastive scores' spread;
- ``query-query w`` / ``key-key w``: the fused sum plus w · the similarity of the two
  directions' query vectors (or of the two target projections).

None of these uses other queries or the gallery's statistics (nothing transductive), so a
winner could be used by ``evaluate`` and search alike.

    python benchmarks/m3jepa_rank_screen.py --cache cache/f8k runs/bench_final/m3jepa/seed*/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--cache", default="cache/f8k")
    parser.add_argument("--out", default="bench_out/m3jepa_rank_screens")
    args = parser.parse_args()

    import numpy as np
    import torch

    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.retrieval import embed_rows, recall_at_k, relevance_matrix, task_scores
    from triptych.m3jepa.tasks import split_tasks

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cache = load_cache(args.cache)
    dev = split_tasks(cache, "dev")
    media = cache.modality
    it = next(t for t in dev if t.src == media)
    ti = next(t for t in dev if t.src == "text")
    images, texts = np.unique(it.pairs[:, 0]), np.unique(it.pairs[:, 1])

    def task_scores_relevance(
        task: object,
    ) -> torch.Tensor:  # relevance of the task's queries × keys, as task_scores builds it
        q_rows, q_pos = np.unique(task.pairs[:, 0], return_inverse=True)
        k_rows, k_pos = np.unique(task.pairs[:, 1], return_inverse=True)
        return relevance_matrix(np.stack([q_pos, k_pos], 1), len(q_rows), len(k_rows))

    @torch.no_grad()
    def scores_of(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        """Both directions' scores, the regression heads' cosines, and the four embedding sets."""
        s_it = task_scores(model, it)[0]  # image queries × text keys
        s_ti = task_scores(model, ti)[0]  # text queries × image keys
        pooled_t = embed_rows(lambda b: b.pooled, it.tgt_features, texts)
        pooled_i = embed_rows(lambda b: b.pooled, ti.tgt_features, images)
        reg_it = embed_rows(
            lambda b: model(media, "text", b.tokens, b.mask).regression, it.src_features, images
        )
        reg_ti = embed_rows(
            lambda b: model("text", media, b.tokens, b.mask).regression, ti.src_features, texts
        )
        q_i = embed_rows(lambda b: model.embed_query(media, "text", b), it.src_features, images)
        q_t = embed_rows(lambda b: model.embed_query("text", media, b), ti.src_features, texts)
        k_i = embed_rows(lambda b: model.embed_key(media, b), it.src_features, images)
        k_t = embed_rows(lambda b: model.embed_key("text", b), ti.src_features, texts)
        return s_it, s_ti, reg_it @ pooled_t.T, reg_ti @ pooled_i.T, q_i, q_t, k_i, k_t

    r_it, r_ti = task_scores_relevance(it), task_scores_relevance(ti)

    def row(scores_it: torch.Tensor, scores_ti: torch.Tensor) -> dict[str, float]:
        a, b = recall_at_k(scores_it, r_it), recall_at_k(scores_ti, r_ti)
        out = {f"i2t_{k}": round(v, 2) for k, v in a.items()} | {
            f"t2i_{k}": round(v, 2) for k, v in b.items()
        }
        out["mean"] = round(float(np.mean(list(a.values()) + list(b.values()))), 3)
        return out

    rows = []
    for ck in args.checkpoints:
        s_it, s_ti, reg_it, reg_ti, q_i, q_t, k_i, k_t = scores_of(load_aligner(ck).model)
        fused = s_it + s_ti.T
        scale = float(s_it.std() / reg_it.std())
        for w in (0.0, 0.5, 0.75, 1.0, 1.33, 2.0):
            rows.append(
                {"checkpoint": ck, "variant": f"reverse {w:g}", **row(s_it + w * s_ti.T, s_ti + w * s_it.T)}
            )
        for w in (0.25, 0.5, 1.0):
            reg = scale * (reg_it + reg_ti.T)
            rows.append(
                {
                    "checkpoint": ck,
                    "variant": f"regression {w:g}",
                    **row(fused + w * reg, (fused + w * reg).T),
                }
            )
            for name, extra in (("query-query", q_i @ q_t.T), ("key-key", k_i @ k_t.T)):
                s = fused + w * extra
                rows.append({"checkpoint": ck, "variant": f"{name} {w:g}", **row(s, s.T)})
        for r in rows[-15:]:
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_screens.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

import numpy as np
import pytest
import torch

from triptych.m3jepa.retrieval import (
    mean_over_seeds,
    over_seeds,
    recall_at_k,
    relevance_matrix,
    zero_shot_accuracy,
)


def test_recall_with_several_captions_per_image():
    # 2 images, 4 captions; image 0 owns captions 0,1; image 1 owns 2,3
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.0],   # image 0: best caption is its own caption 1 → rank 0
                           [0.9, 0.8, 0.1, 0.7]])  # image 1: its captions 2,3 rank 4th and 3rd → rank 2
    rel = relevance_matrix(np.array([[0, 0], [0, 1], [1, 2], [1, 3]]), 2, 4)
    r = recall_at_k(scores, rel, ks=(1, 2, 3))
    assert r == {"r1": 50.0, "r2": 50.0, "r3": 100.0}
    # caption → image direction: each caption has exactly one image
    r = recall_at_k(scores.T, rel.T, ks=(1,))
    assert r["r1"] == 50.0  # captions 1 and 3 rank their image first (0.9>0.8; 0.7>0.0); 0 and 2 do not


def test_recall_needs_a_relevant_key():
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_zero_shot_accuracy():
    labels_vec = torch.eye(3)
    images = torch.tensor([[1.0, 0.1, 0], [0, 1, 0.2], [0.9, 0, 0.5], [0, 0, 1]])
    acc = zero_shot_accuracy(images, labels_vec, [0, 1, 2, 2], ks=(1, 2))
    assert acc == {"top1": 75.0, "top2": 100.0}


def test_over_seeds_and_mean():
    per_seed = [{"i2t": {"r1": 10.0}}, {"i2t": {"r1": 20.0}}]
    assert over_seeds(per_seed) == {"i2t": {"r1": [10.0, 20.0]}}
    assert mean_over_seeds(per_seed)["i2t"]["r1"] == "15.0 ± 7.1"


def test_fused_directions():
    from m3jepa_synth import caption_set

    from triptych.m3jepa.baselines import ClipHeads
    from triptych.m3jepa.benchmark import split_tasks
    from triptych.m3jepa.predictor import M3Predictor, PredictorConfig
    from triptych.m3jepa.retrieval import evaluate_tasks, task_scores

    tasks = split_tasks(caption_set(n_images=50), "test")
    torch.manual_seed(0)
    clip = ClipHeads({"image": 32, "text": 24}, dim=8)
    assert evaluate_tasks(clip, tasks, fuse=True) == evaluate_tasks(clip, tasks, fuse=False)
    pred = M3Predictor(PredictorConfig({"image": 32, "text": 24}, hidden=8, contrastive_dim=8, experts=2, top_k=1))
    s_it, rel = task_scores(pred, tasks[0])
    s_ti, _ = task_scores(pred, tasks[1])
    want = recall_at_k(s_it + s_ti.T, rel)
    assert evaluate_tasks(pred, tasks, fuse=True)["image->text"] == want

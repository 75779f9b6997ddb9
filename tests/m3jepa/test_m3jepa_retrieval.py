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
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.0],  # image 0: best caption is its own caption 1 → rank 0
            [0.9, 0.8, 0.1, 0.7],
        ]
    )  # image 1: its captions 2,3 rank 4th and 3rd → rank 2
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


def test_zero_shot_accuracy_on_known_answers():
    g = torch.Generator().manual_seed(0)
    label_vectors = torch.randn(10, 16, generator=g)
    labels = torch.arange(200) % 10
    near = label_vectors[labels] + 0.01 * torch.randn(200, 16, generator=g)
    assert zero_shot_accuracy(near, label_vectors, labels) == {"top1": 100.0, "top5": 100.0}
    # the same images scored against a shuffled label list: correct only under the matching permutation
    perm = torch.randperm(10, generator=g)
    inverse = torch.argsort(perm)
    assert zero_shot_accuracy(near, label_vectors[perm], inverse[labels])["top1"] == 100.0
    wrong = zero_shot_accuracy(near, label_vectors[perm], labels)["top1"]
    assert wrong == 100.0 * float((perm[labels] == labels).float().mean())  # only the fixed points of perm
    # three images that all look like class 0: exactly one of three is right at top 1; ties count as hits
    acc = zero_shot_accuracy(torch.tensor([[2.0, 0, 0]] * 3), torch.eye(3), [0, 1, 2], ks=(1, 2, 3, 5))
    assert (
        acc["top1"] == pytest.approx(100 / 3)
        and acc["top2"] == 100.0
        and set(acc) == {"top1", "top2", "top3"}
    )
    # scale does not matter (cosine), direction does
    assert (
        zero_shot_accuracy(torch.tensor([[0.1, 5.0]]), torch.tensor([[1.0, 0], [0, 100.0]]), [1])["top1"]
        == 100.0
    )
    with pytest.raises(ValueError, match="one label in 0..2 per image"):
        zero_shot_accuracy(torch.eye(3), torch.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="per image"):
        zero_shot_accuracy(torch.eye(3), torch.eye(3), [0, 1])


class _Pooled(torch.nn.Module):
    """An 'aligner' whose query and key vectors are the cached pooled features themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # label_probe_task reads the device from a parameter

    def embed_query(self, src, tgt, batch):
        return batch.pooled

    def embed_key(self, tgt, batch):
        return batch.pooled


def test_label_probe_task_on_a_label_cache():
    from m3jepa_synth import LABELS, label_set

    from triptych.m3jepa.retrieval import label_probe_task

    model = _Pooled()
    # 5 images per class → one test image per class (rows 4, 9, 14), one dev image (rows 3, 8, 13)
    assert label_probe_task(model, label_set(), "test") == {"top1": 100.0}
    assert label_probe_task(model, label_set(wrong={4: 1}), "test")["top1"] == pytest.approx(200 / 3)
    assert label_probe_task(model, label_set(wrong={4: 1}), "dev")["top1"] == 100.0  # row 4 is not in dev
    assert label_probe_task(model, label_set(wrong={4: 1, 9: 2, 14: 0}), "test")["top1"] == 0.0
    # 10 per class: test rows 8-9, 18-19, 28-29; two of six wrong → 4/6; train has 18 images
    cache = label_set(per_class=10, wrong={9: 2, 28: 1, 3: 1})
    assert label_probe_task(model, cache, "test")["top1"] == pytest.approx(400 / 6)
    assert label_probe_task(model, cache, "train")["top1"] == pytest.approx(
        100 * 17 / 18
    )  # row 3 (a cat) looks like a dog
    # a label that captions no image cannot be a key, and does not change the answer
    cache.data.labels = [*LABELS, "a photo of a bird."]
    assert label_probe_task(model, cache, "test")["top1"] == pytest.approx(400 / 6)


def test_label_probe_task_needs_labels():
    from m3jepa_synth import caption_set, label_set

    from triptych.core.errors import InputError
    from triptych.m3jepa.retrieval import label_probe_task

    with pytest.raises(InputError, match="no labels"):
        label_probe_task(_Pooled(), caption_set(n_images=20), "test")
    cache = label_set()
    cache.data.captions[14] = "a hot dog on a plate"  # test image 14's caption is no longer a label text
    with pytest.raises(InputError, match="'hot_dog/4.png' has no caption that is a label text"):
        label_probe_task(_Pooled(), cache, "test")


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
    pred = M3Predictor(
        PredictorConfig({"image": 32, "text": 24}, hidden=8, contrastive_dim=8, experts=2, top_k=1)
    )
    s_it, rel = task_scores(pred, tasks[0])
    s_ti, _ = task_scores(pred, tasks[1])
    want = recall_at_k(s_it + s_ti.T, rel)
    assert evaluate_tasks(pred, tasks, fuse=True)["image->text"] == want

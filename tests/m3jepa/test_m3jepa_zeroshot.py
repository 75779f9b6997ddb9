"""Zero-shot classification: prompts through the text encoder and the predictor, template ensembles, no labels used."""

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from m3jepa_synth import label_set

from triptych.core.errors import InputError
from triptych.m3jepa.features import EncodedBatch
from triptych.m3jepa.zeroshot import (
    class_names,
    class_vectors,
    image_vectors,
    read_templates,
    zero_shot_classify,
    zero_shot_scores,
)

NAMES = ("hot dog", "cat", "dog")  # "hot dog" first: it contains "dog"
ROW = {"cat": 0, "dog": 1, "hot dog": 2}  # label_set's class rows


class PromptEncoder:
    """A stand-in text encoder: one token, one-hot of the class named in the prompt plus a per-template shift."""

    def __init__(self, shift: float = 0.2):
        self.shift, self.seen = shift, []

    def encode(self, prompts):
        self.seen += list(prompts)
        rows = []
        for p in prompts:
            name = next(n for n in NAMES if n in p)
            g = np.random.default_rng(zlib.crc32(p.replace(name, "{}").encode()))  # the template's own shift
            rows.append(np.eye(3)[ROW[name]] + self.shift * g.normal(size=3))
        tokens = torch.tensor(np.array(rows), dtype=torch.float32)[:, None, :]
        return EncodedBatch(tokens, torch.ones(len(prompts), 1, dtype=torch.bool), tokens[:, 0])


class FourMaps:
    """An aligner with a different linear map for each of its four roles."""

    def __init__(self, seed=0, dim=4):
        g = torch.Generator().manual_seed(seed)
        self.maps = {k: torch.randn(3, dim, generator=g) for k in ("q_img", "k_txt", "q_txt", "k_img")}

    def embed_query(self, src, tgt, batch):
        return batch.pooled @ self.maps["q_img" if src == "image" else "q_txt"]

    def embed_key(self, tgt, batch):
        return batch.pooled @ self.maps["k_txt" if tgt == "text" else "k_img"]


class Identity:
    def embed_query(self, src, tgt, batch):
        return batch.pooled

    def embed_key(self, tgt, batch):
        return batch.pooled


def test_scores_are_the_fused_score_of_template_averaged_prompts_by_hand():
    cache = label_set()
    aligner, templates = FourMaps(), ["a photo of a {}.", "a {} outside.", "my {}!"]
    rows = np.arange(len(cache.data.images))
    scores = zero_shot_scores(
        image_vectors(aligner, cache.image, rows), class_vectors(aligner, PromptEncoder(), NAMES, templates)
    )
    # by hand: s(x, c) = q(x)·K(c) + k(x)·Q(c), K and Q the renormalised means over templates
    enc, n = PromptEncoder(), F.normalize
    x = torch.as_tensor(np.asarray(cache.image.pooled[rows]), dtype=torch.float32)
    want = torch.zeros(len(rows), len(NAMES))
    for c, name in enumerate(NAMES):
        p = enc.encode([t.format(name) for t in templates]).pooled
        key = n(n(p @ aligner.maps["k_txt"], dim=-1).mean(0), dim=0)
        query = n(n(p @ aligner.maps["q_txt"], dim=-1).mean(0), dim=0)
        want[:, c] = n(x @ aligner.maps["q_img"], dim=-1) @ key + n(x @ aligner.maps["k_img"], dim=-1) @ query
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
    # without fusion only the image->text term is left
    plain = zero_shot_scores(
        image_vectors(aligner, cache.image, rows, fused=False),
        class_vectors(aligner, PromptEncoder(), NAMES, templates, fused=False),
    )
    assert not torch.allclose(plain, want)


def test_zero_shot_classifies_by_class_names_and_never_reads_the_label_captions():
    encoder = PromptEncoder()
    # 5 images per class → one test image per class (rows 4, 9, 14)
    result = zero_shot_classify(Identity(), label_set(), encoder, "test", ["a photo of a {}.", "a {}."])
    assert result["top1"] == 100.0 and result["classes"] == 3 and result["images"] == 3
    assert sorted(encoder.seen) == sorted(t.format(c) for c in NAMES for t in ("a photo of a {}.", "a {}."))
    cache = label_set(wrong={4: 1})  # the cat test image looks like a dog
    assert zero_shot_classify(Identity(), cache, PromptEncoder(), "test")["top1"] == pytest.approx(200 / 3)
    # the cached label texts' features play no part: scrambling them changes nothing
    cache.text.tokens.shards[0][:] = np.random.default_rng(0).normal(size=cache.text.tokens.shards[0].shape)
    cache.text.pooled.shards[0][:] = 0
    assert zero_shot_classify(Identity(), cache, PromptEncoder(), "test")["top1"] == pytest.approx(200 / 3)
    assert class_names(cache.data) == ["cat", "dog", "hot dog"]


def test_templates_file_and_errors(tmp_path):
    file = tmp_path / "t.txt"
    file.write_text("a photo of a {label}.\n\nart of the {}\n")
    assert read_templates(file) == ["a photo of a {}.", "art of the {}"]
    file.write_text("no slot here\n")
    with pytest.raises(InputError, match="exactly one"):
        read_templates(file)
    from m3jepa_synth import caption_set

    with pytest.raises(InputError, match="no labels"):
        zero_shot_classify(Identity(), caption_set(n_images=10), PromptEncoder(), "test")


def test_zero_shot_command(tmp_path, monkeypatch):
    """The command on a checkpoint: the same numbers as the API, with the checkpoint's fused ranking."""
    from m3jepa_synth import write_cache
    from typer.testing import CliRunner

    from triptych.m3jepa import zeroshot
    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.cli import app
    from triptych.m3jepa.features import load_cache

    write_cache(tmp_path / "cache", label_set(per_class=10))
    runner = CliRunner()
    args = ["--hidden", "8", "--experts", "2", "--top-k", "1", "--epochs", "1", "--grid-pool", "0"]
    res = runner.invoke(
        app, ["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), *args]
    )
    assert res.exit_code == 0, res.output
    checkpoint = json.loads((tmp_path / "run" / "train_summary.json").read_text())["checkpoint"]
    monkeypatch.setattr(zeroshot, "encoder_for", lambda aligner, modality, device: PromptEncoder())
    res = runner.invoke(
        app,
        [
            "zero-shot",
            "--checkpoint",
            checkpoint,
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "zs"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "zs" / "results.json").read_text())["result"]
    want = zero_shot_classify(
        load_aligner(checkpoint), load_cache(tmp_path / "cache"), PromptEncoder(), "test"
    )
    assert got == pytest.approx(want) and got["fused"] is True and got["templates"] == 8

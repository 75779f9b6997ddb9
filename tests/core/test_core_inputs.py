"""Issue 12 item 3: user text files, checkpoints and JSON outputs never end in a traceback.

Unit tests pin the policy of :mod:`triptych.core.inputs` (BOM, Latin-1 fallback, gzip by
magic, folders, binary files), the checkpoint header checks and strict JSON; property
tests throw random bytes and mutated valid files at the loaders, where only
``InputError`` / ``CheckpointError`` may escape.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triptych.core.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from triptych.core.errors import InputError, TriptychError
from triptych.core.inputs import at_least, open_text, read_json, read_text
from triptych.core.results import json_text, write_json

PROPERTY = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


# ------------------------------------------------------------------ the reading policy


def test_utf8_bom_is_skipped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfSMILES,label\r\nCCO,1\r\n")
    assert read_text(path).splitlines()[0] == "SMILES,label"


def test_latin1_is_read_with_one_warning_line(tmp_path, capsys):
    path = tmp_path / "vendor.smi"
    path.write_bytes("CCO caf\u00e9\nCCN na\u00efve\n".encode("latin-1"))
    assert read_text(path) == "CCO caf\u00e9\nCCN na\u00efve\n"
    with open_text(path) as handle:  # a second open of the same file does not warn again
        handle.read()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "Latin-1" in err[0] and str(path) in err[0]
    assert "offset 7" in err[0] and "0xE9" in err[0]


def test_bom_then_latin1(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"\xef\xbb\xbfsmiles,name\nCCO,caf\xe9\n")
    assert read_text(path) == "smiles,name\nCCO,caf\u00e9\n"


def test_utf16_with_bom_is_read(tmp_path):
    path = tmp_path / "unicode.csv"
    path.write_bytes("smiles,label\nCCO,1\n".encode("utf-16"))
    assert read_text(path) == "smiles,label\nCCO,1\n"


def test_gzip_is_recognised_by_its_magic_not_its_name(tmp_path):
    real = tmp_path / "lib.smi.gz"
    real.write_bytes(gzip.compress(b"CCO\nCCN\n"))
    assert read_text(real) == "CCO\nCCN\n"
    unnamed = tmp_path / "lib.smi"
    unnamed.write_bytes(gzip.compress(b"CCO\n"))
    assert read_text(unnamed) == "CCO\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("plain.smi.gz", b"CCO\nCCN\n", "is named .gz but is not gzip-compressed"),
        ("cut.csv.gz", gzip.compress(b"smiles\n" + b"CCO\n" * 1000)[:40], "corrupt or truncated gzip"),
        ("image.smi", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file (a NUL byte at offset 8)"),
        ("book.csv", b"PK\x03\x04\x14\x00\x06\x00", "zip archive"),
        ("bad16.csv", b"\xff\xfeA\x00\x00\xd8", "not valid UTF-16"),
    ],
)
def test_unreadable_text_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_text(path, "--input", "give a .smi file")
    text = one_line(err.value)
    assert message in text and f"--input {path}" in text


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file; give a CSV"):
        read_text(tmp_path, "--data", "give a CSV")
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.csv")


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('[{"image": "a.png",\n  "caption": "x",}]')
    with pytest.raises(InputError) as err:
        read_json(path, "caption file")
    assert "line 2 column" in one_line(err.value) and "not valid JSON" in str(err.value)
    path.write_text("[" * 100_000)
    with pytest.raises(InputError):
        read_json(path)


def test_at_least():
    assert at_least(3, 1, "k") == 3
    with pytest.raises(InputError, match=r"k=0 is too small: give k >= 1"):
        at_least(0, 1, "k")


# ------------------------------------------------------------------ strict JSON


def test_strict_json_writes_null_not_nan(tmp_path):
    metrics = {
        "roc_auc": float("nan"),
        "pr": np.float32("nan"),
        "inf": float("inf"),
        "ok": np.float64(0.5),
        "n": np.int64(3),
        "arr": np.array([1.0, np.nan]),
        "nested": [{"x": -math.inf}],
        "t": (1, 2),
    }
    text = json_text(metrics)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {
        "roc_auc": None,
        "pr": None,
        "inf": None,
        "ok": 0.5,
        "n": 3,
        "arr": [1.0, None],
        "nested": [{"x": None}],
        "t": [1, 2],
    }
    path = write_json(tmp_path / "metrics.json", metrics)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    with pytest.raises(TypeError):
        json_text({"x": object()})
    assert json.loads(json_text({"x": object()}, default=lambda o: "obj")) == {"x": "obj"}


# ------------------------------------------------------------------ checkpoint headers


def _crafted(path, metadata) -> None:
    """A safetensors file with one tensor and the given ``__metadata__`` (or a whole other header)."""
    header = (
        metadata
        if not isinstance(metadata, dict)
        else {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    )
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\x00" * 4)


GOOD = {
    "format": "triptych-checkpoint/1",
    "kind": "test",
    "config": "{}",
    "extra": "{}",
    "tree": '{"__dict__": [["w", {"__tensor__": "w"}]]}',
}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([1, 2, 3], "not a triptych checkpoint"),  # the header is a JSON list
        ({k: v for k, v in GOOD.items() if k != "kind"}, "no 'kind'"),
        ({**GOOD, "config": "{not json"}, "header field 'config' is not valid"),
        ({**GOOD, "config": "[1, 2]"}, "config is a list, not a mapping"),
        ({**GOOD, "extra": '{"__dict__": 5}'}, "header field 'extra' is not valid"),
        ({**GOOD, "tree": '{"__dict__": [[1]]}'}, "state tree is malformed"),
        ({**GOOD, "tree": "[1]"}, "state is a list"),
        ({**GOOD, "tree": '{"__tensor__": "missing"}'}, "tensor 'missing' is missing"),
        ({**GOOD, "kind": 3}, "no 'kind'"),
    ],
)
def test_crafted_checkpoint_headers_are_one_line(tmp_path, metadata, message):
    path = tmp_path / "crafted.safetensors"
    _crafted(path, metadata)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = one_line(err.value)
    assert message in text and str(path) in text


def test_crafted_good_header_loads_and_folder_is_refused(tmp_path):
    path = tmp_path / "ok.safetensors"
    _crafted(path, GOOD)
    state, meta = load_checkpoint(path, kind="test")
    assert list(state) == ["w"] and meta["config"] == {}
    with pytest.raises(CheckpointError, match="is a folder"):
        read_header(tmp_path)


# ------------------------------------------------------------------ properties: random and mutated bytes


def _only_user_errors(call, *args):
    """Run a loader; a TriptychError (one line) is fine, any other exception fails the test."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the Latin-1 fallback's warnings
            call(*args)
    except TriptychError as exc:
        one_line(exc)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)
CUTS = st.none() | st.integers(0, 1 << 12)


@PROPERTY
@given(data=st.binary(max_size=2048), name=st.sampled_from(["f.smi", "f.csv", "f.csv.gz", "f.json", "f.txt"]))
def test_any_bytes_read_as_text_or_refused(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    _only_user_errors(read_text, path)
    _only_user_errors(read_json, path)


@PROPERTY
@given(data=st.binary(max_size=1024), edits=EDITS, cut=CUTS)
def test_mutated_gzip_read_or_refused(tmp_path, data, edits, cut):
    path = tmp_path / "lib.smi.gz"
    path.write_bytes(_mutate(gzip.compress(data), edits, cut))
    _only_user_errors(read_text, path)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "valid.safetensors"
    state = {"state_dict": {"model.w": torch.ones(2, 3), "model.b": torch.zeros(3)}, "step": 3, "t": (1, 2.5)}
    save_checkpoint(path, state, kind="test", config={"hidden": 4, "tasks": ["a", "b"]}, extra={"n": 1})
    return path.read_bytes()


@PROPERTY
@given(edits=EDITS, cut=CUTS)
def test_mutated_checkpoints_load_or_raise_checkpoint_error(tmp_path, checkpoint_bytes, edits, cut):
    path = tmp_path / "m.safetensors"
    size = len(checkpoint_bytes)
    # aim half the edits into the JSON header, where structure lives
    edits = [(8 + p % 600 if i % 2 else p, v) for i, (p, v) in enumerate(edits)]
    path.write_bytes(_mutate(checkpoint_bytes, edits, None if cut is None else cut % (size + 1)))
    _only_user_errors(functools.partial(load_checkpoint, kind="test"), path)


@PROPERTY
@given(data=st.binary(max_size=512))
def test_random_bytes_are_not_checkpoints(tmp_path, data):
    path = tmp_path / "r.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4,
)


TRICKY = st.sampled_from(
    [
        '{"__dict__": 5}',
        '{"__dict__": [[1, 2, 3]]}',
        '{"__dict__": [[["k"], 1]]}',
        '{"__tuple__": 3}',
        '{"__tensor__": "w"}',
        '{"__tensor__": ["w"]}',
        "[[[[]]]]",
        "{",
        '{"__dict__": [["w", {"__tensor__": "nope"}]]}',
        '{"state_dict": {"__tensor__": 1}}',
    ]
)


@PROPERTY
@given(
    fields=st.dictionaries(
        st.sampled_from(["format", "kind", "config", "extra", "tree", "x"]),
        JSON_VALUES | JSON_VALUES.map(json.dumps) | TRICKY,
        max_size=6,
    ),
    keep_format=st.booleans(),
)
def test_crafted_metadata_fields(tmp_path, fields, keep_format):
    if keep_format:
        fields["format"] = "triptych-checkpoint/1"
    path = tmp_path / "c.safetensors"
    _crafted(path, fields)
    _only_user_errors(load_checkpoint, path)

"""Issue 12 item 3 for MATIC: bad SMILES files, checkpoints and metrics give one line and exit 2, never a traceback.

CLI regressions run ``triptych.cli.main`` in this process (exit code and stderr as a user
sees them); property tests call the loaders directly.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
from dataclasses import asdict

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from triptych.core.checkpoint import save_checkpoint
from triptych.core.errors import TriptychError
from triptych.matic.data import load_table
from triptych.matic.generate.completion import read_corpus
from triptych.matic.screen import read_chunks
from triptych.matic.train import KIND, TrainConfig

torch.set_num_threads(1)
PROPERTY = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SMILES = [
    "CCO",
    "c1ccccc1O",
    "CC(=O)Nc1ccc(O)cc1",
    "CCN(CC)CC",
    "O=C(O)c1ccccc1",
    "CCCCCCCC",
    "c1ccncc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "OCC(O)CO",
    "CC#N",
    "C1CCCCC1",
    "Clc1ccccc1",
]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``triptych ARGS`` as a user runs it: (exit code, stdout, stderr)."""
    from triptych import cli

    monkeypatch.setattr(sys, "argv", ["triptych", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def assert_one_line_error(result: tuple[int, str, str], *needles: str) -> str:
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained two-task predictor saved as ``export_model`` does (weights do not matter here)."""
    torch.manual_seed(0)
    config = TrainConfig(tasks=["a", "b"], gate="light", hidden=16, layers=1)
    model = config.build_model()
    hparams = {"config": asdict(config), "kind": KIND}
    state = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": hparams,
    }
    path = tmp_path_factory.mktemp("matic_inputs") / "model.safetensors"
    return save_checkpoint(path, state, kind=KIND, config=hparams)


# ------------------------------------------------------------------ CLI regressions, one per class


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("binary.smi", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
        ("plain.smi.gz", b"CCO\nCCN\n", "is named .gz but is not gzip-compressed"),
        ("book.csv", b"PK\x03\x04\x14\x00\x06\x00\x08\x00", "zip archive"),
    ],
)
def test_screen_refuses_unreadable_files(checkpoint, tmp_path, monkeypatch, capsys, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "preds.csv"
    result = run_cli(
        ["matic", "screen", "--checkpoint", checkpoint, "--input", path, "--out", out], monkeypatch, capsys
    )
    assert_one_line_error(result, str(path), needle)
    assert not out.exists()


def test_screen_refuses_a_folder(checkpoint, tmp_path, monkeypatch, capsys):
    result = run_cli(
        ["matic", "screen", "--checkpoint", checkpoint, "--input", tmp_path], monkeypatch, capsys
    )
    assert_one_line_error(result, str(tmp_path), "is a folder, not a file")


def test_train_refuses_a_folder_and_a_fake_gz(tmp_path, monkeypatch, capsys):
    result = run_cli(["matic", "train", "--data", tmp_path, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert_one_line_error(result, str(tmp_path), "is a folder")
    fake = tmp_path / "table.csv.gz"
    fake.write_text("smiles,a\nCCO,1\n")
    result = run_cli(["matic", "train", "--data", fake, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert_one_line_error(result, str(fake), "not gzip-compressed")
    assert not (tmp_path / "run").exists()


def test_screen_reads_latin1_with_one_warning(checkpoint, tmp_path, monkeypatch, capsys):
    path = tmp_path / "vendor.smi"
    path.write_bytes("CCO caf\u00e9\nc1ccccc1O na\u00efve\n".encode("latin-1"))
    out = tmp_path / "preds.csv"
    code, _, err = run_cli(
        ["matic", "screen", "--checkpoint", checkpoint, "--input", path, "--out", out], monkeypatch, capsys
    )
    assert code == 0, err
    assert [ln for ln in err.splitlines() if ln.startswith("warning:") and "Latin-1" in ln] != []
    names = {line.split(",")[3] for line in out.read_text(encoding="utf-8").splitlines()[1:]}
    assert names == {"caf\u00e9", "na\u00efve"}


def test_excel_bom_csv_finds_the_smiles_column(checkpoint, tmp_path, monkeypatch, capsys):
    path = tmp_path / "excel.csv"
    rows = "".join(f"{s},{i % 2},{(i // 2) % 2}\r\n" for i, s in enumerate(SMILES))
    path.write_bytes(b"\xef\xbb\xbf" + f"SMILES,a,b\r\n{rows}".encode())
    code, out, err = run_cli(
        ["matic", "evaluate", "--checkpoint", checkpoint, "--data", path], monkeypatch, capsys
    )
    assert code == 0, err
    assert out.startswith("a: ") and "roc_auc" in out
    preds = tmp_path / "preds.csv"
    code, _, err = run_cli(
        ["matic", "screen", "--checkpoint", checkpoint, "--input", path, "--out", preds], monkeypatch, capsys
    )
    assert code == 0, err
    assert len(preds.read_text().splitlines()) == len(SMILES) + 1


def _crafted_checkpoint(path, metadata) -> None:
    raw = json.dumps(
        metadata
        if not isinstance(metadata, dict)
        else {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    ).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\x00" * 4)


GOOD = {"format": "triptych-checkpoint/1", "kind": KIND, "config": "{}", "extra": "{}", "tree": "{}"}


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        (["a", "list"], "not a triptych checkpoint"),
        ({k: v for k, v in GOOD.items() if k != "kind"}, "no 'kind'"),
        ({**GOOD, "config": "{oops"}, "'config' is not valid"),
        (
            {
                **GOOD,
                "tree": '{"state_dict": {}, "hyper_parameters": {"config": {"tasks": ["a"], "hidden": "big"}}}',
            },
            "cannot build a model",
        ),
        ({**GOOD, "tree": '{"state_dict": 3}'}, "lacks a state_dict"),
    ],
)
def test_crafted_checkpoints_are_one_line(tmp_path, monkeypatch, capsys, metadata, needle):
    ckpt = tmp_path / "crafted.safetensors"
    _crafted_checkpoint(ckpt, metadata)
    smi = tmp_path / "x.smi"
    smi.write_text("CCO\n")
    result = run_cli(
        ["matic", "screen", "--checkpoint", ckpt, "--input", smi, "--out", tmp_path / "p.csv"],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(result, str(ckpt), needle)


def test_single_class_metrics_are_strict_json(checkpoint, tmp_path, monkeypatch, capsys):
    data = tmp_path / "one_class.csv"
    data.write_text("smiles,a,b\n" + "".join(f"{s},1,0\n" for s in SMILES))
    out = tmp_path / "metrics.json"
    code, _, err = run_cli(
        ["matic", "evaluate", "--checkpoint", checkpoint, "--data", data, "--out", out], monkeypatch, capsys
    )
    assert code == 0, err
    text = out.read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{out} holds {c}, not strict JSON"))
    assert metrics["a"]["roc_auc"] is None and metrics["b"]["pr_auc"] is None
    assert metrics["a"]["n"] == len(SMILES)


def test_explain_names_the_bad_smiles_instead_of_dropping_it(checkpoint, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref.smi"
    ref.write_text("\n".join(SMILES) + "\n")
    out = tmp_path / "explain"
    result = run_cli(
        [
            "matic",
            "explain",
            "--checkpoint",
            checkpoint,
            "--smiles",
            "CCO",
            "--smiles",
            "C1CC(",
            "--smiles",
            "c1ccccc1O",
            "--reference",
            ref,
            "--out",
            out,
        ],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(result, "1 of the 3 SMILES", "#2 'C1CC('")
    assert not out.exists()


# ------------------------------------------------------------------ properties of the SMILES loaders

VALID_CSV = (
    "smiles,a,b\n" + "".join(f"{s},{i % 2},{'' if i % 3 else 1}\n" for i, s in enumerate(SMILES))
).encode()
VALID_SMI = ("".join(f"{s} mol{i}\n" for i, s in enumerate(SMILES))).encode()
EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)


def _mutate(data: bytes, edits, cut) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def _only_user_errors(call, *args, **kwargs) -> None:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            call(*args, **kwargs)
    except TriptychError as exc:
        assert "\n" not in str(exc), str(exc)


def _drain(path, **kwargs) -> None:
    for _ in read_chunks(path, chunk=4, **kwargs):
        pass


@PROPERTY
@given(
    data=st.binary(max_size=1024)
    | st.builds(_mutate, st.sampled_from([VALID_CSV, VALID_SMI]), EDITS, st.none() | st.integers(0, 400)),
    name=st.sampled_from(["lib.smi", "lib.csv", "lib.csv.gz", "lib.smi.gz"]),
    gz=st.booleans(),
)
@example(data=b'"\nCCO\n', name="lib.csv", gz=False)  # a quoted header: a column name holding a newline
def test_smiles_files_load_or_raise_input_error(tmp_path, data, name, gz):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    _only_user_errors(_drain, path)
    _only_user_errors(load_table, path, quiet=True)
    _only_user_errors(read_corpus, path)


@PROPERTY
@given(edits=EDITS, cut=st.none() | st.integers(0, 400), strict=st.booleans())
def test_mutated_molecule_tables_load_or_raise_input_error(tmp_path, edits, cut, strict):
    path = tmp_path / "table.csv"
    path.write_bytes(_mutate(VALID_CSV, edits, cut))
    _only_user_errors(load_table, path, strict=strict, quiet=True)


@PROPERTY
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_predictor_checkpoints_load_or_raise_input_error(checkpoint, tmp_path, edits):
    from triptych.matic.predictor import load_predictor

    data = checkpoint.read_bytes()
    header = int.from_bytes(data[:8], "little") + 8
    path = tmp_path / "m.safetensors"
    path.write_bytes(_mutate(data, [(8 + p % (header - 8), v) for p, v in edits], None))  # edit the header
    _only_user_errors(load_predictor, path)


def test_screen_refuses_an_unknown_precision(checkpoint, tmp_path, monkeypatch, capsys):
    smi = tmp_path / "x.smi"
    smi.write_text("CCO\n")
    result = run_cli(
        ["matic", "screen", "--checkpoint", checkpoint, "--input", smi, "--precision", "fp8"],
        monkeypatch,
        capsys,
    )
    assert_one_line_error(result, "--precision 'fp8'", "choose auto, fp32 or bf16")

"""Checkpoints: round trip, corruption, incompatible config, and pickles refused unexecuted."""

import pickle
import subprocess
import sys

import pytest
import torch

from triptych.core.checkpoint import CheckpointError, load_checkpoint, load_state_dict_into, save_checkpoint


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "state_dict": {"w": torch.randn(3, 2, generator=g), "b": torch.zeros(2)},
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
        ],
        "epoch": 2,
        "shape": (3, 2),
        "name": "tiny",
    }


def test_round_trip_keeps_structure_types_and_values(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", _state(), kind="test.tiny", config={"hidden": 2})
    state, meta = load_checkpoint(path, kind="test.tiny", config={"hidden": 2})
    torch.testing.assert_close(state["state_dict"]["w"], _state()["state_dict"]["w"])
    assert state["optimizer_states"][0]["state"][0]["step"].item() == 3.0  # int keys survive
    assert state["shape"] == (3, 2) and isinstance(state["shape"], tuple)
    assert state["epoch"] == 2 and state["name"] == "tiny"
    assert meta["config"] == {"hidden": 2} and meta["kind"] == "test.tiny"
    assert meta["triptych_version"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_corrupted_checkpoint_fails_with_one_clear_line(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", _state(), kind="test.tiny")
    data = bytearray(path.read_bytes())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[: len(data) - 10]))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(truncated)
    assert "truncated.safetensors" in _one_line(exc)

    garbled = tmp_path / "garbled.safetensors"
    data[20:40] = b"\xff" * 20  # inside the JSON header
    garbled.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(garbled)
    assert "garbled.safetensors" in _one_line(exc)

    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "missing.safetensors")
    assert "does not exist" in _one_line(exc)


def test_incompatible_checkpoint_fails_with_one_clear_line(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", _state(), kind="test.tiny", config={"hidden": 2})
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, kind="test.other")
    assert "'test.tiny'" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, config={"hidden": 4})
    assert "hidden=2" in _one_line(exc)

    model = torch.nn.Linear(5, 5)
    state, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_into(model, state["state_dict"], path)
    assert "does not fit this model" in _one_line(exc)


class _Payload:
    """Unpickling this would create a marker file: the test checks it never exists."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_is_refused_and_never_executed(tmp_path, writer):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(evil)
    assert "pickle" in _one_line(exc)
    assert not marker.exists(), "the pickle's code ran"


def test_cli_prints_one_error_line_for_bad_input(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "triptych.cli", "demo", "--only", "nonsense", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --only"), proc.stderr

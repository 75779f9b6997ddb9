"""Output semantics: a finished run's --out holds exactly that run; an interrupted one damages nothing.

Also: Ctrl-C prints one line with the resume command, SIGTERM leaves no staging folder, and
``last.safetensors`` is rewritten every epoch.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from triptych.core.checkpoint import load_checkpoint
from triptych.core.errors import InputError
from triptych.core.io import MARKER, atomic_output_dir, output_dir_in_place, replace_dir
from triptych.core.runs import Interrupted, partial_dir, resume_command, training_run_dir
from triptych.core.seed import seed_everything
from triptych.core.training import fit, make_trainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ddp_train import IndexedData, Tiny  # noqa: E402


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- atomic_output_dir: the rule for every --out


def test_a_rerun_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as stage:
        (stage / "components.json").write_text("old")
        (stage / "maps").mkdir()
        (stage / "maps" / "a.png").write_text("old")
    with atomic_output_dir(out) as stage:
        (stage / "summary.json").write_text("new")
    assert _names(out) == [MARKER, "summary.json"]  # the earlier run's files are gone
    assert "command" in json.loads((out / MARKER).read_text())
    assert _names(tmp_path) == ["out"]  # no staging or old folder left


def test_a_failed_or_interrupted_rerun_leaves_the_earlier_run_intact(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as stage:
        (stage / "result.txt").write_text("first run")
    for exc in (ValueError("bad input"), KeyboardInterrupt(), SystemExit(143)):
        with pytest.raises(type(exc)), atomic_output_dir(out) as stage:
            (stage / "result.txt").write_text("second run")
            raise exc
        assert (out / "result.txt").read_text() == "first run"
        assert _names(tmp_path) == ["out"]


def test_only_an_empty_or_triptych_folder_is_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="did not write.*thesis.tex"), atomic_output_dir(mine):
        pass
    assert _names(mine) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"), atomic_output_dir(tmp_path / "file"):
        pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(empty) as stage:
        (stage / "a").write_text("a")
    assert _names(empty) == [MARKER, "a"]


def test_keep_moves_a_resumable_cache_into_the_new_folder(tmp_path):
    out = tmp_path / "idx"
    (out / "features").mkdir(parents=True)  # written in place by the command before it finishes
    (out / "features" / "shard.npy").write_text("encoded")
    with atomic_output_dir(out, keep=("features",)) as stage:
        (stage / "index.json").write_text("{}")
    assert _names(out) == [MARKER, "features", "index.json"]
    assert (out / "features" / "shard.npy").read_text() == "encoded"


def test_in_place_output_replaces_the_earlier_run_or_puts_it_back(tmp_path):
    out = tmp_path / "lora"
    with output_dir_in_place(out) as folder:
        assert folder == out
        (folder / "encoders").mkdir()
        (folder / "encoders" / "text").write_text("first")
    with pytest.raises(KeyboardInterrupt), output_dir_in_place(out) as folder:
        (folder / "half").write_text("x")
        raise KeyboardInterrupt
    assert _names(out) == [MARKER, "encoders"] and _names(tmp_path) == ["lora"]  # put back, nothing aside
    with output_dir_in_place(out) as folder:
        (folder / "summary.json").write_text("second")
    assert _names(out) == [MARKER, "summary.json"] and _names(tmp_path) == ["lora"]


def test_replace_dir_swaps_folders(tmp_path):
    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir()
    (old / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, old)
    assert _names(tmp_path) == ["out"] and _names(old) == ["new.txt"]


def test_replace_dir_without_an_atomic_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    monkeypatch.setattr("triptych.core.io._exchange", lambda a, b: False)
    test_replace_dir_swaps_folders(tmp_path)


def test_a_real_command_rerun_leaves_no_file_of_the_earlier_run(tmp_path):
    """`matic benchmark --merge` (cheap: it only reads earlier results) into a folder of an earlier run."""
    from typer.testing import CliRunner

    from triptych.cli import app

    parts = []
    for seed in (0, 1):
        part = tmp_path / f"seed{seed}"
        part.mkdir()
        (part / "results.json").write_text(
            json.dumps(
                {
                    "datasets": {"toy": {"ple": {"a": {"roc_auc": [0.6 + seed / 10], "pr_auc": [0.5]}}}},
                    "seconds": {"toy": {"ple": 1.0}},
                }
            )
        )
        parts += ["--merge", str(part)]
    out = tmp_path / "bench"
    runner = CliRunner()
    first = runner.invoke(app, ["matic", "benchmark", "--out", str(out), *parts])
    assert first.exit_code == 0, first.output
    (out / "components.json").write_text("{}")  # pretend the earlier run wrote more files
    second = runner.invoke(app, ["matic", "benchmark", "--out", str(out), *parts[:2]])
    assert second.exit_code == 0, second.output
    assert _names(out) == [MARKER, "results.json", "results.md"]  # components.json is gone
    assert json.loads((out / "results.json").read_text())["datasets"]["toy"]["ple"]["a"]["roc_auc"] == [0.6]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, ["matic", "benchmark", "--out", str(mine), *parts[:2]])
    assert refused.exit_code != 0 and isinstance(refused.exception, InputError)
    assert _names(mine) == ["notes.txt"]


# ---------------------------------------------------------------- training: OUT.partial, resume, last every epoch


class _CrashAt(L.Callback):
    def __init__(self, epoch: int, exc: BaseException) -> None:
        self.epoch, self.exc = epoch, exc

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise self.exc


def _train_into(run: Path, epochs: int, resume: Path | None = None, callbacks=()) -> Tiny:
    seed_everything(0)
    model = Tiny()
    trainer = make_trainer(
        max_epochs=epochs,
        default_root_dir=run,
        monitor=None,
        enable_progress_bar=False,
        callbacks=list(callbacks),
        accelerator="cpu",
    )
    fit(trainer, model, DataLoader(IndexedData(), batch_size=16), resume=resume)
    (run / "metrics.json").write_text(json.dumps({"epochs": epochs}))
    return model


def test_an_interrupted_training_rerun_keeps_the_earlier_run_and_can_resume(tmp_path, capsys, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(
        "triptych.core.io.COMMAND_LINE", ["triptych", "toy", "train", "--out", str(tmp_path / "run")]
    )
    out = tmp_path / "run"
    with training_run_dir(out) as run:
        _train_into(run, epochs=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("checkpoints/last.safetensors") in before and not partial_dir(out).exists()

    # Ctrl-C in the third epoch of a rerun (Lightning turns it into sys.exit(1), and ignores SIGINT after)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as info, training_run_dir(out) as run:
            _train_into(run, epochs=4, callbacks=[_CrashAt(2, KeyboardInterrupt())])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert info.value.code == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    last = partial_dir(out) / "checkpoints" / "last.safetensors"
    assert load_checkpoint(last)[0]["epoch"] == 1  # the interrupted run's last finished epoch
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted:"), lines
    assert lines[0].endswith(f"resume with: triptych toy train --out {out} --resume {last}")

    # a fresh run into OUT refuses rather than discard the interrupted one
    with pytest.raises(InputError, match="interrupted run"), training_run_dir(out):
        pass
    # resuming finishes the run: OUT is replaced, the partial folder is gone
    with training_run_dir(out, resume=last) as run:
        _train_into(run, epochs=4, resume=last)
    assert not partial_dir(out).exists() and json.loads((out / "metrics.json").read_text()) == {"epochs": 4}
    assert load_checkpoint(out / "checkpoints" / "last.safetensors")[0]["epoch"] == 3


def test_an_interruption_before_any_checkpoint_says_nothing_was_written(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Interrupted), training_run_dir(out) as run:
        (run / "half.txt").write_text("x")
        raise KeyboardInterrupt
    assert capsys.readouterr().err.strip() == f"interrupted: nothing was written ({out} is unchanged)"
    assert _names(tmp_path) == []


def test_resume_command_replaces_an_earlier_resume():
    argv = [
        "/venv/bin/triptych",
        "matic",
        "train",
        "--out",
        "my run",
        "--resume",
        "a.safetensors",
        "--epochs",
        "3",
    ]
    assert resume_command("my run.partial/checkpoints/last.safetensors", argv) == (
        "triptych matic train --out 'my run' --epochs 3 --resume 'my run.partial/checkpoints/last.safetensors'"
    )


class _Logged(Tiny):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss


def test_last_checkpoint_is_written_every_epoch_even_without_improvement(tmp_path):
    """Monitoring train_loss with mode=max: only epoch 0 is 'best', yet last must follow every epoch."""
    torch.set_num_threads(1)
    seed_everything(0)
    model = _Logged()
    trainer = make_trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        monitor="train_loss",
        mode="max",
        enable_progress_bar=False,
        accelerator="cpu",
    )
    fit(trainer, model, DataLoader(IndexedData(), batch_size=16))
    assert _names(tmp_path / "checkpoints") == ["best.safetensors", "last.safetensors"]
    best, _ = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    last, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert best["epoch"] == 0  # the loss falls, so with mode=max the first epoch stays best
    assert last["epoch"] == 2
    torch.testing.assert_close(last["state_dict"]["net.weight"], model.net.weight.detach())


# ---------------------------------------------------------------- the real entry point, with real signals


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "interrupt_cli.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def _wait_for(proc: subprocess.Popen, line: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {line!r}: {proc.stderr.read()[-3000:]}")
    proc.kill()
    pytest.fail(f"no {line!r} within {timeout} s")


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_ctrl_c_during_training_prints_one_line_with_the_resume_command(tmp_path, sig, code):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    with training_run_dir(out) as run:  # the earlier, finished run
        _train_into(run, epochs=1)
    before = (out / "checkpoints" / "last.safetensors").read_bytes()

    proc = _start(tmp_path, "toy-train", str(out), "--epochs", "5", "--pause", "30")
    _wait_for(proc, "epoch 1 saved")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = partial_dir(out) / "checkpoints" / "last.safetensors"
    want = (
        f"interrupted: {out} is unchanged; the run so far is in {partial_dir(out)}/; resume with: "
        f"triptych toy-train {out} --epochs 5 --pause 30 --resume {last}"
    )
    # Lightning's start-up lines come first; about the interruption there is exactly one line, the last
    about = [
        line
        for line in err.splitlines()
        if any(w in line.lower() for w in ("interrupt", "traceback", "abort"))
    ]
    assert about == [want] and err.rstrip().endswith(want), err
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before  # the earlier run is intact
    assert load_checkpoint(last)[0]["epoch"] == 1


@pytest.mark.timeout(300)
def test_sigterm_leaves_no_staging_folder_and_the_earlier_run_intact(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as stage:
        (stage / "old.txt").write_text("earlier run")
    proc = _start(tmp_path, "toy-write", str(out))
    _wait_for(proc, "staged")
    assert any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # the staging folder exists now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "terminated: nothing was written"
    assert _names(tmp_path) == ["out"]  # no hidden staging folder survived
    assert _names(out) == [MARKER, "old.txt"]

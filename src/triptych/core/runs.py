"""A training command's run folder: built in the visible sibling ``OUT.partial/``, swapped into ``OUT`` at the end.

Lightning writes checkpoints while it trains. Writing them beside ``OUT`` rather than into it
means that an interrupted run never damages an earlier finished run in ``OUT``, and that the
interrupted run's ``checkpoints/last.safetensors`` (rewritten every epoch) stays where the
user can see it and resume from it: Ctrl-C prints the exact command to do so.

Light module (no torch): the CLI modules use it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from triptych.core import io
from triptych.core.errors import InputError
from triptych.core.io import check_replaceable, replace_dir, write_marker

PARTIAL = ".partial"
LAST = Path("checkpoints") / "last.safetensors"


class Interrupted(SystemExit):
    """An interruption whose one line (what was kept, how to resume) has been printed already."""


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a run into ``out`` trains: ``<out>.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL)


def resume_command(checkpoint: str | os.PathLike, argv: list[str] | None = None) -> str:
    """The command being run, with ``--resume checkpoint`` in place of any ``--resume`` it had."""
    argv = list(argv or io.COMMAND_LINE or sys.argv)
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["triptych", *args, "--resume", str(checkpoint)])


def exit_code(exc: KeyboardInterrupt | SystemExit) -> int | str | None:
    """130 for Ctrl-C (also when Lightning turned it into ``sys.exit(1)``), else the exit's own code."""
    if isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt):
        return 130
    return exc.code


def final_path(path: str | os.PathLike, partial: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Where ``path``, written inside the partial folder, will be once the run has replaced ``out``."""
    return Path(out) / Path(path).resolve().relative_to(Path(partial).resolve())


def say(line: str) -> None:
    """One line on stderr (the CLI's channel for status that is not the command's result)."""
    print(line, file=sys.stderr, flush=True)


def _secondary_rank() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (local or node rank > 0)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK"))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@contextlib.contextmanager
def on_interrupt(line: str) -> Iterator[None]:
    """Print ``line`` (what was kept, how to resume) if the block is interrupted by Ctrl-C or SIGTERM."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, Interrupted):
            raise
        say(line)
        raise Interrupted(exit_code(exc)) from None


@contextlib.contextmanager
def training_run_dir(out: str | os.PathLike, resume: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield ``<out>.partial`` to train into; when the block finishes it replaces ``out`` whole.

    On Ctrl-C, SIGTERM (see ``triptych.cli.main``) or an error after a checkpoint was written,
    the partial folder is kept and one line gives the resume command; with no checkpoint yet it
    is removed and one line says that nothing was written. ``out`` is untouched either way.
    An existing partial folder is continued only when ``resume`` points into it; otherwise the
    command refuses rather than discard an interrupted run.
    """
    if _secondary_rank():
        # DDP re-runs the command once per extra process: Lightning broadcasts rank 0's checkpoint folder
        # to them, and only rank 0 owns OUT.partial; what else they write goes to a private scratch folder
        scratch = Path(tempfile.mkdtemp(prefix="triptych-rank-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    out = check_replaceable(out)
    partial = partial_dir(out)
    resume = Path(resume) if resume else None
    last = partial / LAST
    if partial.exists() and not (resume is not None and _inside(resume, partial)) and any(partial.iterdir()):
        raise InputError(
            f"{partial} holds an interrupted run; resume it with --resume {last}, "
            "or delete that folder to start afresh"
        )
    partial.mkdir(parents=True, exist_ok=True)
    try:
        yield partial
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        if last.is_file():
            say(
                f"{'interrupted' if interrupted else 'stopped'}: {out} is unchanged; the run so far is in "
                f"{partial}/; resume with: {resume_command(last)}"
            )
        else:
            shutil.rmtree(partial, ignore_errors=True)
            if interrupted:
                say(f"interrupted: nothing was written ({out} is unchanged)")
        if interrupted and not isinstance(exc, Interrupted):  # the line above is the whole message
            raise Interrupted(exit_code(exc)) from None
        raise
    write_marker(partial)
    replace_dir(partial, out)

"""The ``triptych`` command: ``demo``, and one sub-command per system (pdcr, matic, m3jepa).

Sub-apps import their heavy libraries inside commands, so ``triptych --help`` is fast.
"""

from __future__ import annotations

import importlib
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from triptych import __version__
from triptych.core.demo import SYSTEMS
from triptych.core.errors import TriptychError

app = typer.Typer(
    help="triptych: PdCR causal explanations of segmentation models, MATIC dual-activity molecules, "
    "M3-JEPA multimodal alignment.\n\nExample: triptych demo --out demo_out",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"triptych {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """triptych command line."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report and each system's outputs.")] = Path(
        "demo_out"
    ),
    only: Annotated[
        str | None, typer.Option(help="Comma-separated systems to run (default: all registered).")
    ] = None,
) -> None:
    """Run every registered system's demo on the embedded data and shipped weights; write <out>/index.html.

    index.html is rewritten after each step; a failed step is marked with its error and the
    next one still runs (the exit status is then 1).

    Example: triptych demo --out demo_out --only pdcr
    """
    from triptych.core.demo import registered_demos, run_demos

    steps = registered_demos()
    if only:
        wanted = {s.strip() for s in only.split(",") if s.strip()}
        unknown = wanted - set(SYSTEMS)
        if unknown:
            raise TriptychError(
                f"--only {only!r}: unknown system(s) {sorted(unknown)}; choose from {list(SYSTEMS)}"
            )
        steps = [s for s in steps if s.name in wanted]
    if not steps:
        typer.echo("No system demo is registered yet; nothing to run.")
        raise typer.Exit(0)
    start = time.perf_counter()
    run = run_demos(steps, out, echo=typer.echo)
    typer.echo(f"Report: {out / 'index.html'} ({time.perf_counter() - start:.0f} s)")
    if run.failed:
        typer.secho(
            f"{len(run.failed)} of {len(steps)} demo step(s) failed: "
            + ", ".join(o.step.name for o in run.failed),
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


for _system in SYSTEMS:
    try:
        _module = importlib.import_module(f"triptych.{_system}.cli")
    except ModuleNotFoundError as _exc:
        if _exc.name not in (f"triptych.{_system}", f"triptych.{_system}.cli"):
            raise
        continue
    app.add_typer(_module.app, name=_system)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM becomes a clean exit, so ``finally`` blocks remove staging folders; a second one kills."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def as_cli_flags(message: str, argv: list[str]) -> str:
    """A library error that names a Python argument (``target_class=5 …``), told in the command's flag.

    Library code raises with the argument's name, so that API users read their own words; on the command line
    the same message names the option (``--target-class 5 …``) when the invoked command has that option.
    """
    import re

    m = re.match(r"([a-z][a-z0-9_]*)=(\S+)", message)
    if not m:
        return message
    flag = "--" + m.group(1).replace("_", "-")
    command = typer.main.get_command(app)
    for token in argv[1:]:  # down the sub-commands named on the command line (Typer's own Click)
        if token not in getattr(command, "commands", {}):
            break
        command = command.commands[token]
    if not any(flag in getattr(p, "opts", ()) for p in command.params):
        return message
    rest = message[m.end() :].replace(f" ({flag})", "", 1)
    return f"{flag} {m.group(2)}{rest}"


def main() -> None:
    """Entry point: user errors print one line and exit 2, with no traceback; Ctrl-C and SIGTERM print one line."""
    from triptych.core import io
    from triptych.core.runs import Interrupted, say

    io.COMMAND_LINE[:] = sys.argv  # for output markers and the resume command that Ctrl-C prints
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except TriptychError as exc:
        typer.secho(f"error: {as_cli_flags(str(exc), sys.argv)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # outside a command (Typer turns one inside into exit 130)
        say("interrupted: nothing was written")
        sys.exit(130)
    except SystemExit as exc:
        # a command that can resume said so already (Interrupted); any other wrote through staging folders
        if exc.code in (130, 128 + signal.SIGTERM) and not isinstance(exc, Interrupted):
            say("interrupted: nothing was written" if exc.code == 130 else "terminated: nothing was written")
        raise


if __name__ == "__main__":
    main()

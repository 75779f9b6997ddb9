"""A fast CLI: importing it loads no heavy library, and every ``--help`` works.

Start-up time itself is measured by ``benchmarks/cli_startup.py``, not here (timings on a
shared machine are noise).
"""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "rdkit", "transformers", "ray", "faiss", "monai", "torch_geometric", "sklearn")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_importing_the_cli_loads_no_heavy_library():
    code = f"import json, sys, triptych.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "args", [[], ["pdcr"], ["matic"], ["m3jepa"]], ids=["triptych", "pdcr", "matic", "m3jepa"]
)
def test_help_exits_zero_as_a_process(args):
    proc = subprocess.run(
        [sys.executable, "-m", "triptych.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "Traceback" not in proc.stderr


def test_every_command_has_help_with_an_example():
    """Each leaf command's --help renders (Typer builds it from the signature) and shows an example."""
    import typer
    from typer.testing import CliRunner

    from triptych.cli import app

    def leaves(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from leaves(command, [*path, name])
            elif not command.hidden:
                yield [*path, name]

    runner = CliRunner()
    commands = list(leaves(typer.main.get_command(app), []))
    assert len(commands) > 15
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, path

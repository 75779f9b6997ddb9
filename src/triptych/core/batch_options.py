"""Typer option types shared by every batch command that runs on :mod:`triptych.core.batch`.

Kept apart from ``batch`` and free of heavy imports, so a CLI module can use them at its top
level while ``triptych --help`` stays fast (Ray is imported only when a command runs).
"""

from __future__ import annotations

from typing import Annotated

import typer

WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help="Ray worker processes, one model each (default: all CPUs; 0 = run in this process without Ray).",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Join a running Ray cluster: HOST:PORT, ray://HOST:10001 or auto "
        "(default: start Ray on this machine).",
    ),
]
ThreadsPerWorkerOpt = Annotated[
    int,
    typer.Option("--threads-per-worker", min=1, help="torch/OpenMP threads in each worker process."),
]

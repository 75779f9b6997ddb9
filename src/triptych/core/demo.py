"""The registry and runner behind ``triptych demo``: each system registers one demo step.

A system registers by defining ``triptych/<system>/demo.py`` with a function decorated
by :func:`register_demo`; the function writes into its own folder and returns a
:class:`DemoResult` (its report section plus one headline sentence). :func:`run_demos`
runs every step, rewrites ``<out>/index.html`` after each one (so a long or broken run
still leaves a readable page), marks a failed step with its one-line error and goes on
to the next.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report machinery (Jinja2) loads only when a demo runs: `triptych --help` stays fast
    from triptych.core.report import Report, Section

SYSTEMS = ("pdcr", "matic", "m3jepa")


@dataclass
class DemoResult:
    """What a demo step hands back: its section, one sentence for the summary table, its full report."""

    section: Section
    headline: str
    report: str | None = "report.html"  # relative to the step's folder; None when it writes none


@dataclass
class DemoStep:
    name: str
    title: str
    run: Callable[[Path], DemoResult]  # writes into the given folder


@dataclass
class StepOutcome:
    """Where one step stands: pending, running, ok or failed (with its one-line error)."""

    step: DemoStep
    status: str = "pending"
    seconds: float | None = None
    result: DemoResult | None = None
    error: str | None = None
    log: str | None = None  # traceback file, relative to the demo's folder


@dataclass
class DemoRun:
    out: Path
    outcomes: list[StepOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[StepOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


_REGISTRY: dict[str, DemoStep] = {}


def register_demo(
    name: str, title: str
) -> Callable[[Callable[[Path], DemoResult]], Callable[[Path], DemoResult]]:
    """Decorator: register ``fn(out_dir) -> DemoResult`` as system ``name``'s demo step."""

    def wrap(fn: Callable[[Path], DemoResult]) -> Callable[[Path], DemoResult]:
        _REGISTRY[name] = DemoStep(name, title, fn)
        return fn

    return wrap


def registered_demos() -> list[DemoStep]:
    """Import each system's demo module (if it exists) and return the registered steps."""
    for system in SYSTEMS:
        try:
            importlib.import_module(f"triptych.{system}.demo")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"triptych.{system}", f"triptych.{system}.demo"):
                raise
    return [_REGISTRY[name] for name in SYSTEMS if name in _REGISTRY]


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what the summary table shows for a failed step)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def index_report(run: DemoRun) -> Report:
    """The index page: a one-row-per-system summary first, then each finished step's section.

    Sections were written for pages inside each step's folder, so their relative links
    are re-rooted at that folder here (``report.html`` -> ``pdcr/report.html``).
    """
    from triptych.core.report import Report

    report = Report(
        "triptych demo",
        intro="Each section below was produced by `triptych demo` on the data and "
        "weights shipped inside the package (nothing is downloaded, nothing is trained here).",
    )
    rows = []
    for o in run.outcomes:
        name = o.step.name
        if o.status == "ok" and o.result is not None:
            result = {"text": o.result.headline, "href": f"#{o.result.section.anchor}"}
            page = {"text": "report", "href": f"{name}/{o.result.report}"} if o.result.report else ""
        elif o.status == "failed":
            result = f"FAILED: {o.error}"
            page = {"text": "traceback", "href": o.log} if o.log else ""
        else:
            result, page = o.status, ""
        rows.append(
            {
                "system": o.step.title,
                "status": o.status,
                "seconds": f"{o.seconds:.0f}" if o.seconds is not None else "",
                "result": result,
                "full report": page,
            }
        )
    summary = report.section("Summary")
    summary.table(rows, caption="One row per system; the result links to its section below.")
    for o in run.outcomes:
        if o.status == "ok" and o.result is not None:
            report.add(o.result.section.rebased(o.step.name))
        elif o.status == "failed":
            report.section(o.step.title).text(f"This step failed: {o.error}")
    return report


def run_demos(steps: list[DemoStep], out: Path, echo: Callable[[str], None] = print) -> DemoRun:
    """Run ``steps`` into ``out/<name>``; rewrite ``out/index.html`` before the first step and after each.

    A step that raises is marked failed (its traceback goes to ``out/<name>.error.txt``)
    and the next step runs; the caller decides the exit status from ``run.failed``.
    """
    from triptych.core.io import write_text

    out = Path(out)
    run = DemoRun(out, [StepOutcome(s) for s in steps])
    index = out / "index.html"
    index_report(run).write(index)
    for i, o in enumerate(run.outcomes, 1):
        o.status = "running"
        index_report(run).write(index)
        echo(f"[{i}/{len(steps)}] {o.step.title} ...")
        start = time.perf_counter()
        try:
            o.result = o.step.run(out / o.step.name)
            o.status = "ok"
        except Exception as exc:  # a broken step must not hide the others; its error is shown, not swallowed
            o.status, o.error = "failed", one_line(exc)
            o.log = write_text(
                out / f"{o.step.name}.error.txt", "".join(traceback.format_exception(exc))
            ).name
        o.seconds = time.perf_counter() - start
        if o.result is not None:
            o.result.section.text(f"Finished in {o.seconds:.1f} s.")
        index_report(run).write(index)
        echo(
            f"[{i}/{len(steps)}] {o.step.title}: {o.status} in {o.seconds:.1f} s"
            + (f" ({o.error})" if o.error else "")
        )
    return run

"""The demo runner: index.html after every step, failed steps marked, links re-rooted at each step's folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from triptych.core.demo import DemoResult, DemoStep, run_demos
from triptych.core.report import Section


def ok_step(name: str) -> DemoStep:
    def run(out: Path) -> DemoResult:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text("<html>full</html>")
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "report.html").write_text("<html>sub</html>")
        sec = Section(f"{name} section").text("fine").link("sub/report.html", "sub report")
        sec.table([{"page": {"text": "report", "href": "report.html"}}])
        return DemoResult(sec, f"{name} did its job")

    return DemoStep(name, f"{name} title", run)


def broken_step(name: str) -> DemoStep:
    def run(out: Path) -> DemoResult:
        raise ValueError("weights missing\nsecond line not shown")

    return DemoStep(name, f"{name} title", run)


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


def test_a_failed_step_is_marked_and_the_next_one_still_runs(tmp_path):
    seen = []

    def spy(step: DemoStep) -> DemoStep:
        def run(out: Path) -> DemoResult:
            seen.append(step.name)
            # index.html exists and shows this step as running while it runs
            assert "running" in (tmp_path / "index.html").read_text()
            return step.run(out)

        return DemoStep(step.name, step.title, run)

    run = run_demos(
        [spy(ok_step("a")), spy(broken_step("b")), spy(ok_step("c"))], tmp_path, echo=lambda s: None
    )
    assert seen == ["a", "b", "c"]
    assert [o.status for o in run.outcomes] == ["ok", "failed", "ok"]
    assert [o.step.name for o in run.failed] == ["b"]
    html = (tmp_path / "index.html").read_text()
    assert "FAILED: ValueError: weights missing" in html and "second line not shown" not in html
    assert "second line not shown" in (tmp_path / "b.error.txt").read_text()  # the full traceback is kept
    # the summary table comes first, one row per system
    assert html.index("Summary") < html.index("a section")
    assert "a did its job" in html and "c did its job" in html


def test_every_link_of_the_index_resolves(tmp_path):
    run_demos([ok_step("a"), broken_step("b")], tmp_path, echo=lambda s: None)
    html = (tmp_path / "index.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', html))
    links = hrefs(html)
    assert "a/sub/report.html" in links and "a/report.html" in links and "b.error.txt" in links
    for href in links:
        if href.startswith("#"):
            assert href[1:] in ids, href
        else:
            assert (tmp_path / href).is_file(), href


def test_rebased_leaves_anchors_urls_and_data_alone():
    sec = (
        Section("s")
        .link("x/y.html", "rel")
        .link("#a", "anchor")
        .link("https://e.org", "url")
        .link("/abs", "abs")
    )
    moved = [b["href"] for b in sec.rebased("pdcr").blocks]
    assert moved == ["pdcr/x/y.html", "#a", "https://e.org", "/abs"]
    assert [b["href"] for b in sec.blocks][0] == "x/y.html"  # the original is untouched


def test_cli_demo_exits_1_when_a_step_fails(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import triptych.cli as cli
    import triptych.core.demo as demo

    monkeypatch.setattr(demo, "_REGISTRY", {"pdcr": broken_step("pdcr"), "matic": ok_step("matic")})
    monkeypatch.setattr(demo, "registered_demos", lambda: [demo._REGISTRY["pdcr"], demo._REGISTRY["matic"]])
    result = CliRunner().invoke(cli.app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert (tmp_path / "matic" / "report.html").is_file()
    assert "FAILED" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("system", ["pdcr", "matic"])
def test_shipped_demo_weights_are_small(system):
    from importlib import resources

    files = list((resources.files(f"triptych.{system}") / "weights").iterdir())
    weights = [f for f in files if f.name.endswith(".safetensors")]
    assert weights, f"no shipped weights for {system}; run benchmarks/train_demo_weights.py"
    assert sum(f.stat().st_size for f in weights) < 4_000_000

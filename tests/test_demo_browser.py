"""The demo's pages in a real browser: headless Chromium renders ``demo_out/index.html`` and every report.

The fixture runs the real ``triptych demo`` (shipped weights, about 2 minutes on 2 cores)
into a temporary folder. Each page reached from index.html by links is rendered; every
link must point at a file that exists (or an id on its page), and every image must have
a non-zero rendered size. Screenshots go to ``<tmp>/screenshots/<page>.png``.

Chromium is Debian's ``chromium`` package, driven through Playwright (no browser
download). CI installs it (``.ci/run``); locally the test skips with a reason when it is
absent, unless ``CI`` is set, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES_EXPECTED = [
    "index.html",
    "pdcr/report.html",
    "matic/report.html",
    "matic/explain/report.html",
    "matic/generate/report.html",
    "m3jepa/report.html",
    "m3jepa/search.html",
]


def chromium_path() -> str:
    """The Chromium binary, or skip (fail under CI) with the reason."""
    path = os.environ.get("TRIPTYCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = None
    if not Path(path).is_file():
        missing = f"no Chromium at {path}: apt-get install -y chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the Python package playwright is missing: pip install -e '.[dev]'"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI must install it; see .ci/run)")
        pytest.skip(missing)
    return path


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """A fresh, real ``triptych demo`` output folder (``TRIPTYCH_DEMO_OUT=DIR`` reuses a finished one)."""
    chromium_path()  # skip before spending minutes on the demo
    if os.environ.get("TRIPTYCH_DEMO_OUT"):
        return Path(os.environ["TRIPTYCH_DEMO_OUT"])
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-m", "triptych.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=2400,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def local_target(url: str, root: Path) -> tuple[Path, str]:
    """A rendered link (absolute file:// URL) -> (file, fragment); fails for anything outside ``root``."""
    parsed = urlparse(url)
    assert parsed.scheme == "file", f"link {url} leaves the demo folder (the demo must work offline)"
    path = Path(unquote(parsed.path))
    assert path.resolve().is_relative_to(root.resolve()), f"link {url} points outside {root}"
    return path, parsed.fragment


def test_every_page_renders_with_live_links_and_visible_images(demo_out, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    visited: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900},
        )
        try:
            page = browser.new_page()
            queue = [demo_out / "index.html"]
            while queue:
                path = queue.pop(0)
                rel = path.relative_to(demo_out).as_posix()
                if rel in visited:
                    continue
                visited.append(rel)
                page.goto(path.as_uri(), wait_until="load")
                links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
                for url in links:
                    target, fragment = local_target(url, demo_out)
                    assert target.is_file(), f"{rel}: link {url} has no target"
                    if fragment and target == path:
                        assert page.locator(f"[id='{fragment}']").count() == 1, f"{rel}: no id {fragment!r}"
                    if target.suffix == ".html" and target not in queue:
                        queue.append(target)
                images = page.eval_on_selector_all(
                    "img",
                    """els => els.map(e => {
                    const r = e.getBoundingClientRect();
                    return {src: e.currentSrc.slice(0, 60), natural: e.naturalWidth, w: r.width, h: r.height};
                })""",
                )
                for img in images:
                    assert img["natural"] > 0 and img["w"] > 0 and img["h"] > 0, (
                        f"{rel}: image not shown {img}"
                    )
                name = rel.replace("/", "_").removesuffix(".html")
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    missing = [p for p in PAGES_EXPECTED if p not in visited]
    assert not missing, f"pages not reached from index.html: {missing} (reached {visited})"
    assert all(
        (shots / f"{p.replace('/', '_').removesuffix('.html')}.png").stat().st_size > 0 for p in visited
    )
    index = (demo_out / "index.html").read_text()
    assert index.index("Summary") < index.index("PdCR: causal") and "FAILED" not in index
    print("screenshots:", sorted(f.name for f in shots.iterdir()))

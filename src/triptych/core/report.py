"""HTML reports from a Jinja2 template, images embedded, so one file is the whole report."""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from triptych.core.io import write_text

_TEMPLATE = jinja2.Environment(
    loader=jinja2.PackageLoader("triptych.core", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
).get_template("report.html.j2")

_MIME = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
}


def image_data_uri(image: Any, fmt: str = "png") -> str:
    """A data URI for a matplotlib Figure, a PIL image, raw PNG/SVG bytes or an image file."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    if isinstance(image, bytes):
        mime = "image/svg+xml" if image.lstrip().startswith(b"<") else "image/png"
        return f"data:{mime};base64," + base64.b64encode(image).decode()
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):  # matplotlib Figure
        image.savefig(buffer, format=fmt, bbox_inches="tight", dpi=110)
    else:  # PIL image
        image.save(buffer, format=fmt.upper())
    mime = "image/svg+xml" if fmt == "svg" else f"image/{fmt}"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Section:
    """One titled part of a report: paragraphs, figures, tables, links, in order."""

    title: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"

    def text(self, text: str) -> Section:
        self.blocks.append({"type": "text", "text": text})
        return self

    def figure(self, image: Any, caption: str = "") -> Section:
        self.blocks.append({"type": "figure", "src": image_data_uri(image), "caption": caption})
        return self

    def table(self, rows: list[dict[str, Any]], caption: str = "", floatfmt: str = "{:.3g}") -> Section:
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]

        def fmt(v: Any) -> Any:
            if isinstance(v, dict) and "href" in v:  # a link cell: {"text": ..., "href": ...}
                return {"text": str(v.get("text", v["href"])), "href": str(v["href"])}
            return floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))

        body = [[fmt(row.get(c)) for c in columns] for row in rows]
        self.blocks.append({"type": "table", "columns": columns, "rows": body, "caption": caption})
        return self

    def link(self, href: str, text: str) -> Section:
        self.blocks.append({"type": "link", "href": href, "text": text})
        return self

    def code(self, text: str) -> Section:
        self.blocks.append({"type": "code", "text": text})
        return self

    def rebased(self, folder: str) -> Section:
        """A copy whose relative links point from one folder up: for a sub-folder's section shown in its parent.

        Anchors (``#x``), absolute paths, URLs with a scheme and data URIs are left alone.
        """

        def move(href: str) -> str:
            keep = href.startswith(("#", "/")) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href)
            return href if keep else f"{folder.rstrip('/')}/{href}"

        def cell(v: Any) -> Any:
            return {**v, "href": move(v["href"])} if isinstance(v, dict) and "href" in v else v

        blocks = []
        for b in self.blocks:
            b = dict(b)
            if b["type"] == "link":
                b["href"] = move(b["href"])
            elif b["type"] == "table":
                b["rows"] = [[cell(v) for v in row] for row in b["rows"]]
            blocks.append(b)
        return Section(self.title, blocks)


@dataclass
class Report:
    """A whole report: a title, an optional intro, and sections linked from a contents list."""

    title: str
    intro: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def render(self) -> str:
        from triptych import __version__

        return _TEMPLATE.render(report=self, version=__version__)

    def write(self, path: str | os.PathLike) -> Path:
        return write_text(path, self.render())

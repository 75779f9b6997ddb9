from triptych.core.demo import registered_demos
from triptych.m3jepa.demo import run_demo


def test_demo_is_registered():
    assert "m3jepa" in [step.name for step in registered_demos()]


def test_small_demo_writes_report_with_recall_and_search(tmp_path):
    section = run_demo(tmp_path, count=40, epochs=2, hidden=32).section
    html = (tmp_path / "report.html").read_text()
    assert "Test-split retrieval" in html and "Example search" in html
    table = next(b for b in section.blocks if b["type"] == "table")
    assert {r[0] for r in table["rows"]} == {"m3jepa", "clip_linear"} and len(table["rows"]) == 4
    assert all(0 <= float(v) <= 100 for row in table["rows"] for v in row[2:])
    assert (tmp_path / "search.html").is_file()
    assert sum(b["type"] == "figure" for b in section.blocks) == 5

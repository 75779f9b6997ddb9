import pytest

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
    # the table's M3-JEPA rows are its checkpoint's test recall, recomputed by hand
    from m3jepa_synth import recall_by_hand

    from triptych.m3jepa.features import load_cache

    want = recall_by_hand(
        tmp_path / "runs" / "m3jepa" / "checkpoints" / "best.safetensors",
        load_cache(tmp_path / "cache"),
        "test",
    )
    for row in table["rows"]:
        if row[0] == "m3jepa":
            assert [float(v) for v in row[2:]] == pytest.approx(
                [round(want[row[1]][k], 1) for k in ("r1", "r5", "r10")]
            )
    assert (tmp_path / "search.html").is_file()
    assert sum(b["type"] == "figure" for b in section.blocks) == 5

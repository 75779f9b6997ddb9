"""Atomic writes, the HTML report, results files, device choice and seeding."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from triptych.core.device import choose_device  # noqa: E402
from triptych.core.errors import InputError  # noqa: E402
from triptych.core.io import atomic_output_dir, atomic_write, write_text  # noqa: E402
from triptych.core.report import Report  # noqa: E402
from triptych.core.results import markdown_table, mean_sd, write_results  # noqa: E402
from triptych.core.seed import seed_everything  # noqa: E402


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary left behind


def test_atomic_output_dir_leaves_no_partial_output(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as stage:
        (stage / "first.txt").write_text("1")
    with pytest.raises(ValueError), atomic_output_dir(out) as stage:
        (stage / "second.txt").write_text("2")
        raise ValueError("bad input")
    assert sorted(p.name for p in out.iterdir()) == [".triptych-run", "first.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_report_is_one_self_contained_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    report = Report("Demo <report>")
    report.section("First part").text("hello & welcome").figure(fig, "a line").table(
        [{"model": "x", "auc": 0.91234}]
    )
    report.section("Second part").link("other.html", "more")
    path = report.write(tmp_path / "index.html")
    html = path.read_text()
    assert "data:image/png;base64," in html
    assert 'href="#first-part"' in html and 'id="second-part"' in html
    assert "Demo &lt;report&gt;" in html and "hello &amp; welcome" in html  # escaped
    assert "0.912" in html


def test_results_files_and_formatting(tmp_path):
    assert mean_sd([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert mean_sd([0.5]) == "0.500"
    table = markdown_table([{"m": "a", "v": 1.23456}, {"m": "b", "v": None}])
    assert table.splitlines()[0] == "| m | v |" and "| a | 1.235 |" in table
    j, m = write_results(tmp_path, {"x": np.float32(1.5), "y": np.arange(2)}, table)
    assert json.loads(j.read_text()) == {"x": 1.5, "y": [0, 1]}
    assert m.read_text() == table


def test_device_and_seed():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(InputError):
        choose_device("tpu-9000")
    seed_everything(7)
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_demo_with_no_registered_system_says_so(monkeypatch, tmp_path, invoke):
    import triptych.cli as cli
    import triptych.core.demo as demo

    monkeypatch.setattr(demo, "SYSTEMS", ())
    monkeypatch.setattr(demo, "_REGISTRY", {})
    result = invoke(cli.app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert "No system demo is registered" in result.output


def test_version(invoke):
    import triptych
    import triptych.cli as cli

    result = invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and triptych.__version__ in result.output


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    path = write_text(tmp_path / "p.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)

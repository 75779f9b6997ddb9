"""Multi-model statistics and tests on constructed maps whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triptych.pdcr.analysis import (
    across_inputs,
    between_models,
    concentration,
    explanation_statistics,
    holm,
    roi_distance,
    share_within,
    sign_shares,
    support_radius,
)
from triptych.pdcr.compare import run_compare

H = 32


def roi_centre() -> np.ndarray:
    roi = np.zeros((H, H), bool)
    roi[14:18, 14:18] = True
    return roi


def ring_map(radius: float, width: float = 2.0, sign: float = -1.0) -> np.ndarray:
    """|ATE| = 1 on a ring at ``radius`` px from the RoI, 0 elsewhere."""
    dist = roi_distance(roi_centre())
    return sign * ((dist > radius - width / 2) & (dist <= radius + width / 2)).astype(float)


def test_locality_statistics_of_rings():
    roi = roi_centre()
    dist = roi_distance(roi)
    near, far = ring_map(3), ring_map(10)
    assert share_within(near, dist, 5) == 1.0 and share_within(far, dist, 5) == 0.0
    assert share_within(near + far, dist, 5) == pytest.approx(np.abs(near).sum() / np.abs(near + far).sum())
    assert 2 < support_radius(near, dist, 0.9) <= 4
    assert 9 < support_radius(far, dist, 0.9) <= 11
    assert np.isnan(share_within(np.zeros((H, H)), dist, 5))


def test_sign_shares_and_concentration():
    assert sign_shares(np.array([1.0, -2.0, 0.0, 0.0])) == (0.25, 0.25, 0.5)
    assert concentration([5.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert concentration([1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert 0 < concentration([3.0, 1.0, 1.0, 1.0]) < 1
    stats = explanation_statistics(ring_map(3), roi_centre(), [-1.0, 0.0], [2.0, 2.0], d=5)
    assert (
        stats["share_within"] == 1.0
        and stats["negative"] == 0.5
        and stats["concentration"] == pytest.approx(0.0)
    )


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_between_models_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    local = rng.normal(0.9, 0.03, 20)
    global_ = rng.normal(0.5, 0.03, 20)
    same = local + rng.normal(0, 0.03, 20)
    res = between_models({"local": local, "global": global_, "same": same}, "share_within")
    assert res.test == "Friedman" and res.p < 1e-4
    pairs = {(p["a"], p["b"]): p["p_holm"] for p in res.pairs}
    assert pairs[("local", "global")] < 0.01 and pairs[("global", "same")] < 0.01
    assert pairs[("local", "same")] > 0.05
    null = between_models({m: rng.normal(0, 1, 20) for m in "abc"}, "x")
    assert null.p > 0.01
    assert np.isnan(between_models({"a": [1.0, 1.0], "b": [2.0, 2.0]}, "x").p)  # too few RoIs


def test_across_inputs_groups_rois_by_image():
    values = [0.1, 0.12, 0.11, 0.9, 0.88, 0.91, 0.5, 0.52, 0.49]
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert across_inputs(values, groups, "s").p < 0.05
    assert np.isnan(across_inputs([0.1, 0.2], ["a", "b"], "s").p)


def test_compare_report_separates_a_local_from_a_global_model(tmp_path):
    rng = np.random.default_rng(1)
    roi = roi_centre()

    def maps(radius: float) -> dict[str, np.ndarray]:
        ate = np.stack([ring_map(radius + rng.normal(0, 0.5)) * rng.uniform(0.5, 1.5) for _ in range(12)])
        return {
            "ate": ate,
            "roi": np.stack([roi] * 12),
            "block_ate": -np.abs(rng.normal(size=(12, 10))),
            "component_ate": rng.normal(size=(12, 4)),
            "image_name": np.array(["im1", "im2", "im3"] * 4),
        }

    results = run_compare({"local": maps(3), "global": maps(12), "mid": maps(7)}, tmp_path / "cmp", d=6)
    test = {t["statistic"]: t for t in results["between_models"]}
    assert test["share_within"]["p"] < 0.01 and test["support_radius"]["p"] < 0.01
    assert (
        results["models"]["local"]["share_within"] > 0.9 > 0.1 > results["models"]["global"]["share_within"]
    )
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "Friedman" in html and html.count("<img") >= 3
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["config"]["rois"] == 12

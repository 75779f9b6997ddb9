"""ATE estimators: the paper's coarse-to-fine rule, and adaptive sequential sampling with CIs.

For a unit k (an input block, a network component) and draws t of the intervention,
the effect of one draw is d_t = M(do_t(k)) − M0 and ATE_k = E[d]. Estimators only ask a
:class:`Problem` for draws of d for several units at once, so perturbations are batched
across units and draws.

- :func:`reference_estimate`: screen with S draws (ATE_k = 0 if max_s |d_s| < τ), else
  ATE_k = mean of N fresh draws; dead zone |ATE_k| < τ → 0 (S=3, N=50, τ=0.02).
- :func:`sequential_estimate`: draws in rounds until the 95% CI is tight (z·SE < tol) or
  lies inside the dead zone; one draw for a deterministic intervention. Effects of
  patch draws on a thresholded Dice are sparse and lumpy (on a DRIVE crop, 61% of draws
  change no pixel at all), so draws that have all stayed below τ say little: a block
  that drops Dice by 100 points in 10% of draws (ATE −10) shows 12 quiet draws in a row
  28% of the time. Such a unit is called zero only when the bound on its *ATE* is within
  the tolerance: |ATE| ≤ τ + B·p, with B the largest possible |effect| (100 Dice points)
  and p the one-sided (1 − α) Clopper–Pearson bound on the share of draws that move the
  outcome by τ or more, 1 − α^{1/n} after n quiet draws (:func:`quiet_bound`). When
  ``max_draws`` ends first the unit is ``unresolved``: 0 on the map, not called zero, its
  bound reported as the SE (bound / z).
- :func:`bh_significance`: per-unit p-values (t-test of the draws) with Benjamini–Hochberg
  control across the units of one explanation.
- :func:`coarse_to_fine`: a quadtree/octree over units; a coarse unit is split only where
  its screen shows an effect (or where it must be, e.g. a coarse block over the RoI), and
  the finest units are estimated sequentially.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

Z95 = 1.959963984540054


class Problem(Protocol):
    """Source of effect draws d = M(do(k)) − M0 for units k; counts forward passes."""

    stochastic: bool
    forward_passes: int

    def draw(
        self, units: Sequence[Hashable], counts: Sequence[int], generator: torch.Generator
    ) -> list[np.ndarray]:
        """For each unit, ``counts[i]`` effect draws (one array per unit)."""
        ...


def batched_draws(
    units: Sequence[Hashable],
    counts: Sequence[int],
    batch_size: int,
    run: Callable[[list[tuple[Hashable, int]]], np.ndarray],
) -> list[np.ndarray]:
    """Split ``counts[i]`` draws of each unit into forward batches of at most ``batch_size``.

    ``run`` gets one batch as consecutive (unit, n) groups and returns one effect per row.
    """
    jobs = [i for i, c in enumerate(counts) for _ in range(int(c))]
    out: list[list[float]] = [[] for _ in units]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        groups = [(units[i], len(list(g))) for i, g in itertools.groupby(chunk)]
        for i, v in zip(chunk, run(groups), strict=True):
            out[i].append(v)  # a scalar, or one value per RoI (a row)
    return [np.asarray(v, dtype=float) for v in out]


@dataclass
class UnitResult:
    """Estimated effect of one unit: ``ate`` after the dead zone, ``mean``/``se`` of the raw draws."""

    unit: Hashable
    ate: float
    mean: float
    se: float
    n: int
    status: str  # screened | dead_zone | significant | not_significant | unresolved | estimated | skipped | relevant
    draws: list[float] = field(default_factory=list, repr=False)
    level: int = 0

    @property
    def ci(self) -> tuple[float, float]:
        return self.mean - Z95 * self.se, self.mean + Z95 * self.se


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    """Sample mean and standard error of the mean (0 with one draw)."""
    n = d.size
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def reference_estimate(
    problem: Problem,
    units: Sequence[Hashable],
    generator: torch.Generator,
    *,
    screen: int = 3,
    draws: int = 50,
    tau: float = 0.02,
) -> list[UnitResult]:
    """The paper's rule: S-draw screen, N-draw mean, dead zone τ (all units of a stage batched together)."""
    if not problem.stochastic:
        screen, draws = 1, 0  # one deterministic intervention (the reference's zero-occlusion ablation)
    first = problem.draw(units, [screen] * len(units), generator)
    results: dict[int, UnitResult] = {}
    passing = []
    for i, (u, d) in enumerate(zip(units, first, strict=True)):
        if np.max(np.abs(d)) < tau:
            results[i] = UnitResult(u, 0.0, float(d.mean()), 0.0, screen, "screened", d.tolist())
        else:
            passing.append(i)
    if draws and passing:
        fine = problem.draw([units[i] for i in passing], [draws] * len(passing), generator)
    else:
        fine = [first[i] for i in passing]
    for i, d in zip(passing, fine, strict=True):
        mean, se = _mean_se(d)
        dead = abs(mean) < tau
        results[i] = UnitResult(
            units[i],
            0.0 if dead else mean,
            mean,
            se,
            screen + (draws or 0),
            "dead_zone" if dead else "estimated",
            d.tolist(),
        )
    return [results[i] for i in range(len(units))]


@dataclass
class SequentialRule:
    """Stopping rule for :func:`sequential_estimate` (effects in outcome units, e.g. Dice points)."""

    tau: float = 0.02  # dead zone, as the reference
    tol: float = 0.2  # stop when the 95% CI half-width z·SE < tol
    first: int = 3  # first round, and the coarse-to-fine screen of coarse units
    min_draws: int = 6  # before a CI may stop a unit
    max_draws: int = 50
    growth: float = 2.0  # each round multiplies the draws so far by this
    z: float = Z95
    clear: float = 2.0  # "clearly excludes zero" also stops: |mean| > clear · z · SE (inf turns it off)
    alpha: float = 0.05  # error rate of a zero call, and the BH false discovery rate across units
    effect_bound: float = 100.0  # the largest possible |M(do) − M0| (Dice points: 100)
    # None: a quiet unit is zero only under the ATE bound above. An int n: the paper's screen, zero after
    # n quiet draws with no bound on the ATE (kept for network components, see components.py).
    screen_zero_after: int | None = None


def quiet_bound(n: int, rule: SequentialRule) -> float:
    """(1 − α) upper bound on |ATE| after n draws all below τ: τ + B·(1 − α^{1/n}).

    |ATE| ≤ E|d·1(|d|<τ)| + B·P(|d| ≥ τ) ≤ τ + B·p, and 1 − α^{1/n} is the exact one-sided
    Clopper–Pearson bound on p when none of n draws reached τ.
    """
    return rule.tau + rule.effect_bound * (1.0 - rule.alpha ** (1.0 / max(n, 1)))


def _quiet(d: np.ndarray, tau: float) -> bool:
    """No draw has moved the outcome by τ yet."""
    return bool(np.max(np.abs(d)) < tau)


def _decide(d: np.ndarray, rule: SequentialRule) -> str | None:
    """Stopping status for draws ``d``, or None to keep drawing."""
    n = d.size
    if _quiet(d, rule.tau):
        if rule.screen_zero_after is not None:
            return "screened" if n >= min(rule.screen_zero_after, rule.max_draws) else None
        # zero only when the bound on the ATE is within the tolerance; else draw on, up to max_draws
        if quiet_bound(n, rule) <= rule.tau + rule.tol:
            return "screened"
        return "unresolved" if n >= rule.max_draws else None
    mean, se = _mean_se(d)
    half = rule.z * se
    if n < min(rule.min_draws, rule.max_draws):  # max_draws below min_draws must still end the loop
        return None
    if abs(mean) + half < rule.tau:
        return "dead_zone"
    if abs(mean) > rule.clear * half and abs(mean) >= rule.tau:
        return "significant"
    if half < rule.tol or n >= rule.max_draws:
        return "significant" if abs(mean) > half and abs(mean) >= rule.tau else "not_significant"
    return None


def sequential_estimate(
    problem: Problem,
    units: Sequence[Hashable],
    generator: torch.Generator,
    rule: SequentialRule | None = None,
    level: int = 0,
) -> list[UnitResult]:
    """Sequential sampling per unit with 95% CI stopping; every round batches all open units."""
    rule = rule or SequentialRule()
    if not problem.stochastic:
        out = []
        for u, d in zip(units, problem.draw(units, [1] * len(units), generator), strict=True):
            m = float(d[0])
            sig = abs(m) >= rule.tau
            out.append(
                UnitResult(
                    u, m if sig else 0.0, m, 0.0, 1, "significant" if sig else "dead_zone", d.tolist(), level
                )
            )
        return out
    draws: list[np.ndarray] = [np.empty(0)] * len(units)
    status: list[str | None] = [None] * len(units)
    open_ = list(range(len(units)))
    while open_:
        want = [
            rule.first
            if draws[i].size == 0
            else min(rule.max_draws, max(rule.min_draws, int(math.ceil(draws[i].size * rule.growth))))
            - draws[i].size
            for i in open_
        ]
        new = problem.draw([units[i] for i in open_], want, generator)
        for i, d in zip(open_, new, strict=True):
            draws[i] = np.concatenate([draws[i], d])
            status[i] = _decide(draws[i], rule)
        open_ = [i for i in open_ if status[i] is None]
    return [finish(u, d, s, rule, level) for u, d, s in zip(units, draws, status, strict=True)]


def finish(unit: Hashable, d: np.ndarray, status: str, rule: SequentialRule, level: int = 0) -> UnitResult:
    """The result of a unit whose sequential sampling stopped with ``status`` after draws ``d``."""
    mean, se = _mean_se(d)
    if status in ("screened", "unresolved"):  # quiet draws: their spread is unknown; report the ATE bound
        se = quiet_bound(d.size, rule) / rule.z
    # the map keeps the reference's convention (dead zone only); significance is in ``status``
    ate = mean if abs(mean) >= rule.tau and status not in ("screened", "dead_zone", "unresolved") else 0.0
    return UnitResult(unit, ate, mean, se, int(d.size), status, d.tolist(), level)


def shared_sequential_estimate(
    problem: Problem,
    units: Sequence[Hashable],
    applies: np.ndarray,
    generator: torch.Generator,
    rule: SequentialRule | None = None,
) -> list[list[UnitResult | None]]:
    """The sequential rule for R outcomes at once (R RoIs of one image): every draw of a unit serves
    every outcome it applies to (common random numbers).

    ``problem.draw`` returns (n, R) effects per unit; ``applies`` (U, R) says which outcomes a unit
    is estimated for (a block is not, for a RoI it overlaps). A unit draws while any of its
    (unit, outcome) pairs is open; each pair keeps the draws up to its own stopping point, so
    every pair follows exactly :func:`sequential_estimate`'s rule. Returns results[u][r] (None
    where the unit does not apply).
    """
    rule = rule or SequentialRule()
    n_units, n_out = applies.shape
    draws = [np.empty((0, n_out))] * n_units
    stop: dict[tuple[int, int], tuple[str, int]] = {}
    if not problem.stochastic:
        for i, d in enumerate(problem.draw(list(units), [1] * n_units, generator)):
            draws[i] = d.reshape(1, n_out)
            for r in np.nonzero(applies[i])[0]:
                stop[i, int(r)] = ("significant" if abs(d.flat[r]) >= rule.tau else "dead_zone", 1)
    open_ = [i for i in range(n_units) if applies[i].any()] if problem.stochastic else []
    while open_:
        want = [
            rule.first
            if draws[i].shape[0] == 0
            else min(rule.max_draws, max(rule.min_draws, int(math.ceil(draws[i].shape[0] * rule.growth))))
            - draws[i].shape[0]
            for i in open_
        ]
        for i, d in zip(open_, problem.draw([units[i] for i in open_], want, generator), strict=True):
            draws[i] = np.concatenate([draws[i], d.reshape(-1, n_out)])
            for r in np.nonzero(applies[i])[0]:
                if (i, int(r)) not in stop:
                    status = _decide(draws[i][:, r], rule)
                    if status is not None:
                        stop[i, int(r)] = (status, draws[i].shape[0])
        open_ = [i for i in open_ if any((i, int(r)) not in stop for r in np.nonzero(applies[i])[0])]
    out: list[list[UnitResult | None]] = []
    for i, u in enumerate(units):
        row: list[UnitResult | None] = []
        for r in range(n_out):
            if (i, r) in stop:
                status, n = stop[i, r]
                row.append(
                    finish(u, draws[i][:n, r], status, rule)
                    if problem.stochastic
                    else UnitResult(
                        u,
                        float(draws[i][0, r]) if status == "significant" else 0.0,
                        float(draws[i][0, r]),
                        0.0,
                        1,
                        status,
                        [float(draws[i][0, r])],
                    )
                )
            else:
                row.append(None)
        out.append(row)
    return out


# the rule called the unit zero (within its tolerance); exact_zero: the unit cannot reach the outcome at all
ZERO_STATUSES = ("screened", "dead_zone", "exact_zero")


def p_value(r: UnitResult, tau: float) -> float:
    """Two-sided p-value of "ATE = 0" for one unit: a t-test of its draws (quiet or zero-called units: 1)."""
    from scipy import stats

    if r.status in ZERO_STATUSES or r.status in ("unresolved", "skipped", "relevant") or abs(r.mean) < tau:
        return 1.0
    if r.se <= 0:  # identical non-zero draws, or one deterministic intervention
        return 0.0
    return float(2 * stats.t.sf(abs(r.mean) / r.se, max(r.n - 1, 1)))


def bh_significance(results: Sequence[UnitResult], tau: float, alpha: float = 0.05) -> list[float]:
    """Benjamini–Hochberg q-values of the units' p-values (significant: q < α)."""
    from scipy.stats import false_discovery_control

    if not results:
        return []
    p = np.array([p_value(r, tau) for r in results])
    return false_discovery_control(p, method="bh").tolist()


def screen_estimate(
    problem: Problem,
    units: Sequence[Hashable],
    generator: torch.Generator,
    rule: SequentialRule,
    level: int = 0,
) -> list[UnitResult]:
    """The screen alone: "relevant" if any |d| ≥ τ (then the unit is split).

    ``rule.first`` draws; units whose draws all stay below τ draw on, in rounds, until the
    bound on their ATE is within the tolerance (``screened``) or ``max_draws`` (``unresolved``,
    not split either), as in :func:`sequential_estimate`.
    """
    if not problem.stochastic:
        draws = problem.draw(units, [1] * len(units), generator)
    else:
        draws = [np.empty(0)] * len(units)
        open_ = list(range(len(units)))
        while open_:
            want = [
                rule.first
                if draws[i].size == 0
                else min(rule.max_draws, int(math.ceil(draws[i].size * rule.growth))) - draws[i].size
                for i in open_
            ]
            for i, d in zip(open_, problem.draw([units[i] for i in open_], want, generator), strict=True):
                draws[i] = np.concatenate([draws[i], d])
            open_ = [
                i
                for i in open_
                if _quiet(draws[i], rule.tau)
                and draws[i].size < rule.max_draws
                and quiet_bound(draws[i].size, rule) > rule.tau + rule.tol
            ]
    out = []
    for u, d in zip(units, draws, strict=True):
        mean, se = _mean_se(d)
        if not _quiet(d, rule.tau):
            status = "relevant"
        elif not problem.stochastic:  # the one possible draw moved nothing: exactly zero
            status = "screened"
        else:
            status = "screened" if quiet_bound(d.size, rule) <= rule.tau + rule.tol else "unresolved"
            se = quiet_bound(d.size, rule) / rule.z
        out.append(UnitResult(u, 0.0, mean, se, int(d.size), status, d.tolist(), level))
    return out


def coarse_to_fine(
    problem: Problem,
    roots: Sequence[Hashable],
    generator: torch.Generator,
    *,
    split: Callable[[Hashable], list[Hashable]],
    must_split: Callable[[Hashable], bool],
    skip: Callable[[Hashable], bool],
    rule: SequentialRule | None = None,
) -> list[UnitResult]:
    """Screen coarse units, split the relevant ones level by level, estimate the finest sequentially.

    A coarse unit is split when any screen draw moves the outcome by τ or more, not only
    when its mean is significant: children with opposite effects cancel in the coarse
    mean, and would otherwise be missed. ``split(u)`` gives u's children ([] at the
    finest level); ``must_split(u)`` marks units split without being estimated (a coarse
    block overlapping the RoI); ``skip(u)`` marks finest units never estimated (blocks
    inside the RoI). Returns every unit's result, with its level.
    """
    rule = rule or SequentialRule()
    results: list[UnitResult] = []
    level, current = 0, list(roots)
    while current:
        direct = [u for u in current if must_split(u) and split(u)]
        ignored = [u for u in current if skip(u) and not split(u)]
        done = set(direct) | set(ignored)
        coarse = [u for u in current if u not in done and split(u)]
        finest = [u for u in current if u not in done and not split(u)]
        screened = screen_estimate(problem, coarse, generator, rule, level) if coarse else []
        estimated = sequential_estimate(problem, finest, generator, rule, level=level) if finest else []
        results += [UnitResult(u, 0.0, 0.0, 0.0, 0, "skipped", [], level) for u in ignored]
        results += screened + estimated
        nxt: list[Hashable] = []
        for u in direct:
            nxt += split(u)
        for r in screened:
            if r.status == "relevant":
                nxt += split(r.unit)
        level, current = level + 1, nxt
    return results

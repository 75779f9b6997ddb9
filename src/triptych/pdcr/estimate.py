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
  change no pixel at all), so a unit whose draws are all identical is called zero only
  after ``zero_draws`` of them: the paper's 3-draw screen wrongly zeroes about a quarter of the
  blocks there (``benchmarks/pdcr_speed.py``).
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

    def draw(self, units: Sequence[Hashable], counts: Sequence[int], generator: torch.Generator) -> list[np.ndarray]:
        """For each unit, ``counts[i]`` effect draws (one array per unit)."""
        ...


def batched_draws(units: Sequence[Hashable], counts: Sequence[int], batch_size: int,
                  run: Callable[[list[tuple[Hashable, int]]], np.ndarray]) -> list[np.ndarray]:
    """Split ``counts[i]`` draws of each unit into forward batches of at most ``batch_size``.

    ``run`` gets one batch as consecutive (unit, n) groups and returns one effect per row.
    """
    jobs = [i for i, c in enumerate(counts) for _ in range(int(c))]
    out: list[list[float]] = [[] for _ in units]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        groups = [(units[i], len(list(g))) for i, g in itertools.groupby(chunk)]
        for i, v in zip(chunk, run(groups), strict=True):
            out[i].append(float(v))
    return [np.asarray(v, dtype=float) for v in out]


@dataclass
class UnitResult:
    """Estimated effect of one unit: ``ate`` after the dead zone, ``mean``/``se`` of the raw draws."""

    unit: Hashable
    ate: float
    mean: float
    se: float
    n: int
    status: str  # screened | dead_zone | significant | not_significant | estimated | skipped
    draws: list[float] = field(default_factory=list, repr=False)
    level: int = 0

    @property
    def ci(self) -> tuple[float, float]:
        return self.mean - Z95 * self.se, self.mean + Z95 * self.se


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    """Sample mean and standard error of the mean (0 with one draw)."""
    n = d.size
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def reference_estimate(problem: Problem, units: Sequence[Hashable], generator: torch.Generator, *, screen: int = 3,
                       draws: int = 50, tau: float = 0.02) -> list[UnitResult]:
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
        results[i] = UnitResult(units[i], 0.0 if dead else mean, mean, se, screen + (draws or 0),
                                "dead_zone" if dead else "estimated", d.tolist())
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
    # all draws identical and below τ: zero only after this many (rule of three: < 3/12 of draws move it, 95%)
    zero_draws: int = 12
    clear: float = 2.0  # "clearly excludes zero" also stops: |mean| > clear · z · SE (inf turns it off)


def _unmoved(d: np.ndarray, tau: float) -> bool:
    """All draws identical and below τ: no draw has moved the outcome yet, so nothing is known of its spread."""
    return bool(np.max(np.abs(d)) < tau and np.ptp(d) == 0)


def _decide(d: np.ndarray, rule: SequentialRule) -> str | None:
    """Stopping status for draws ``d``, or None to keep drawing."""
    n = d.size
    if np.max(np.abs(d)) < rule.tau:
        # draws that vary below τ show a small effect (the paper's screen); identical ones (a Dice
        # that no draw has moved yet) say nothing about the spread, so wait for ``zero_draws``
        enough = min(rule.zero_draws, rule.max_draws) if _unmoved(d, rule.tau) else rule.first
        return "screened" if n >= enough else None
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


def sequential_estimate(problem: Problem, units: Sequence[Hashable], generator: torch.Generator,
                        rule: SequentialRule | None = None, level: int = 0) -> list[UnitResult]:
    """Sequential sampling per unit with 95% CI stopping; every round batches all open units."""
    rule = rule or SequentialRule()
    if not problem.stochastic:
        out = []
        for u, d in zip(units, problem.draw(units, [1] * len(units), generator), strict=True):
            m = float(d[0])
            sig = abs(m) >= rule.tau
            out.append(UnitResult(u, m if sig else 0.0, m, 0.0, 1, "significant" if sig else "dead_zone",
                                  d.tolist(), level))
        return out
    draws: list[np.ndarray] = [np.empty(0)] * len(units)
    status: list[str | None] = [None] * len(units)
    open_ = list(range(len(units)))
    while open_:
        want = [rule.first if draws[i].size == 0 else
                min(rule.max_draws, max(rule.min_draws, int(math.ceil(draws[i].size * rule.growth)))) - draws[i].size
                for i in open_]
        new = problem.draw([units[i] for i in open_], want, generator)
        for i, d in zip(open_, new, strict=True):
            draws[i] = np.concatenate([draws[i], d])
            status[i] = _decide(draws[i], rule)
        open_ = [i for i in open_ if status[i] is None]
    out = []
    for u, d, s in zip(units, draws, status, strict=True):
        mean, se = _mean_se(d)
        # the map keeps the reference's convention (dead zone only); significance is in ``status``
        ate = mean if abs(mean) >= rule.tau and s not in ("screened", "dead_zone") else 0.0
        out.append(UnitResult(u, ate, mean, se, int(d.size), s, d.tolist(), level))
    return out


def screen_estimate(problem: Problem, units: Sequence[Hashable], generator: torch.Generator,
                    rule: SequentialRule, level: int = 0) -> list[UnitResult]:
    """The screen alone: "relevant" if any |d| ≥ τ (then the unit is split).

    ``rule.first`` draws, topped up to ``rule.zero_draws`` for units whose draws are all
    identical and below τ (as in :func:`sequential_estimate`: they show no spread yet).
    """
    n = rule.first if problem.stochastic else 1
    draws = problem.draw(units, [n] * len(units), generator)
    if problem.stochastic and rule.zero_draws > n:
        quiet = [i for i, d in enumerate(draws) if _unmoved(d, rule.tau)]
        more = problem.draw([units[i] for i in quiet], [rule.zero_draws - n] * len(quiet), generator) if quiet else []
        for i, d in zip(quiet, more, strict=True):
            draws[i] = np.concatenate([draws[i], d])
    out = []
    for u, d in zip(units, draws, strict=True):
        mean, se = _mean_se(d)
        out.append(UnitResult(u, 0.0, mean, se, int(d.size), "relevant" if np.max(np.abs(d)) >= rule.tau
                              else "screened", d.tolist(), level))
    return out


def coarse_to_fine(problem: Problem, roots: Sequence[Hashable], generator: torch.Generator, *,
                   split: Callable[[Hashable], list[Hashable]], must_split: Callable[[Hashable], bool],
                   skip: Callable[[Hashable], bool], rule: SequentialRule | None = None) -> list[UnitResult]:
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

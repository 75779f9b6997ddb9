"""Reinforcement-learning rounds: sample completions, score them, update the completion policy.

Two updates of the same log-likelihood of sampled trajectories tau = (s_t, a_t):

    filtered MLE (the paper):  L = - 1/|S| sum_{tau in S} sum_t log pi(a_t | s_t),
                               S = all successful completions so far (p_A, p_B, QED, SA constraints)
    policy gradient (REINFORCE with a per-rationale mean baseline):
                               L = - 1/|B| sum_{tau in B} (r(tau) - b(rationale)) sum_t log pi(a_t | s_t)

After ``drop_after`` rounds, rationales whose cumulative success rate stays below
``alpha`` are dropped (always keeping the ``min_keep`` best).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from triptych.core.progress import progress
from triptych.matic.generate.completion import CompletionModel, Step, collate
from triptych.matic.generate.scoring import CountingOracle, RewardWeights, Scores, Thresholds, score


@dataclass(frozen=True)
class FinetuneConfig:
    """RL parameters; thresholds and reward weights included."""

    method: Literal["filtered", "pg"] = "filtered"
    rounds: int = 4
    samples_per_round: int = 400
    lr: float = 5e-4
    epochs_per_round: int = 2
    batch_size: int = 512
    alpha: float = 0.5
    drop_after: int = 2
    min_keep: int = 5
    temperature: float = 1.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    weights: RewardWeights = field(default_factory=RewardWeights)


@dataclass
class RoundLog:
    """What one round did: samples, successes, rationales kept, oracle calls so far."""

    round: int
    samples: int
    success: float
    mean_reward: float
    rationales: int
    oracle_calls: int
    loss: float


def spread(rationales: Sequence[str], n: int) -> list[str]:
    """``n`` rationales, round-robin, so each gets an equal share of samples."""
    return [rationales[i % len(rationales)] for i in range(n)] if rationales else []


def sample_scored(
    model: CompletionModel,
    rationales: Sequence[str],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    temperature: float,
    generator: torch.Generator,
    chunk: int = 256,
) -> tuple[Scores, list[list[Step]]]:
    """Complete each of ``rationales`` once and score the completions."""
    smiles: list[str | None] = []
    steps: list[list[Step]] = []
    for start in progress(range(0, len(rationales), chunk), desc="sampling completions", unit="batch"):
        s, st = model.sample(rationales[start : start + chunk], temperature=temperature, generator=generator)
        smiles += s
        steps += st
    return score(smiles, oracle, tasks), steps


def weighted_nll(
    model: CompletionModel, trajectories: Sequence[list[Step]], weights: Sequence[float]
) -> torch.Tensor:
    """- sum_tau w_tau sum_t log pi(a_t | s_t) / n_tau  (one batch of trajectories)."""
    flat = [s for t in trajectories for s in t]
    owner = torch.tensor([i for i, t in enumerate(trajectories) for _ in t])
    logp = model.policy.log_prob(collate(flat))
    per_traj = torch.zeros(len(trajectories)).index_add(0, owner, logp)
    return -(torch.as_tensor(weights, dtype=torch.float32) * per_traj).sum() / len(trajectories)


def update(
    model: CompletionModel,
    opt: torch.optim.Optimizer,
    trajectories: Sequence[list[Step]],
    weights: Sequence[float],
    cfg: FinetuneConfig,
    rng: np.random.Generator,
) -> float:
    """``epochs_per_round`` passes of Adam over the weighted trajectories; returns the last loss."""
    model.policy.train()
    keep = [i for i, t in enumerate(trajectories) if t]
    loss_value = float("nan")
    if not keep:
        return loss_value
    per_batch = max(1, cfg.batch_size // 10)  # about ten steps per trajectory
    for _ in range(cfg.epochs_per_round):
        order = rng.permutation(keep)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            loss = weighted_nll(model, [trajectories[i] for i in idx], [weights[i] for i in idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.policy.parameters(), 5.0)
            opt.step()
            loss_value = loss.item()
    model.policy.eval()
    return loss_value


def finetune(
    model: CompletionModel,
    rationales: Sequence[str],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    cfg: FinetuneConfig,
    seed: int = 0,
) -> tuple[list[str], list[RoundLog]]:
    """Run ``cfg.rounds`` RL rounds in place on ``model``; return the rationales kept and the round logs."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.policy.parameters(), lr=cfg.lr)
    kept = list(dict.fromkeys(rationales))
    tried: dict[str, int] = defaultdict(int)
    won: dict[str, int] = defaultdict(int)
    pool: dict[str, list[Step]] = {}  # successful completions so far (filtered MLE's training set)
    logs: list[RoundLog] = []
    for r in range(1, cfg.rounds + 1):
        batch = spread(kept, cfg.samples_per_round)
        scores, steps = sample_scored(model, batch, oracle, tasks, cfg.temperature, gen)
        ok = scores.success(cfg.thresholds)
        reward = scores.reward(cfg.weights, cfg.thresholds)
        for rat, s, hit, st in zip(batch, scores.smiles, ok, steps, strict=True):
            tried[rat] += 1
            won[rat] += int(hit)
            if hit and s is not None:
                pool.setdefault(s, st)
        if cfg.method == "filtered":
            trajectories, weights = list(pool.values()), [1.0] * len(pool)
        else:
            base = defaultdict(list)
            for rat, rew in zip(batch, reward, strict=True):
                base[rat].append(rew)
            trajectories = steps
            weights = [float(rew - np.mean(base[rat])) for rat, rew in zip(batch, reward, strict=True)]
        loss = update(model, opt, trajectories, weights, cfg, rng)
        if r >= cfg.drop_after and len(kept) > cfg.min_keep:
            rate = {k: won[k] / max(1, tried[k]) for k in kept}
            best = sorted(kept, key=lambda k: -rate[k])[: cfg.min_keep]
            kept = [k for k in kept if rate[k] >= cfg.alpha or k in best]
        logs.append(
            RoundLog(r, len(batch), float(ok.mean()), float(reward.mean()), len(kept), oracle.calls, loss)
        )
    return kept, logs

"""Training an aligner with alternating gradient descent (AGD), through Lightning.

A *task* is one direction over one dataset (image→text, text→image, image→label, ...),
given as pairs of rows into two feature caches. AGD takes one optimiser step per task:

- ``cyclic``: every training step visits the tasks in order, one optimiser step each;
- ``sampled``: every training step draws as many tasks (with replacement) from
  probabilities that adapt after each validation to the tasks' recall (worse → drawn more);
- ``summed``: the no-AGD ablation, one optimiser step on the sum of all task losses. With
  ``match_agd_steps`` (the benchmark's ``moe_summed``) it takes as many optimiser steps as
  AGD: an epoch visits each task's items T times (T tasks), T× the batches at one step each,
  where AGD takes T steps per batch.

AdamW with a warmup-cosine learning rate, a cosine weight-decay schedule (rising), gradient
clipping and early stopping on the validation recall. Optimisation is manual (several
optimiser steps per batch), which Lightning supports under DDP; the task choice of
``sampled`` is drawn from a generator seeded by the step, so every rank picks the same task.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from triptych.core.errors import InputError
from triptych.core.training import TrainerFlags, best_checkpoint, fit, load_module_state, make_trainer
from triptych.m3jepa.aligner import KIND, build_model
from triptych.m3jepa.config import TrainConfig
from triptych.m3jepa.features import EncodedBatch
from triptych.m3jepa.losses import M3JepaLoss, load_balancing
from triptych.m3jepa.predictor import M3Predictor, direction_key
from triptych.m3jepa.tasks import Task

__all__ = ["AlignmentModule", "TrainConfig", "TrainResult", "train_aligner"]


def warmup_cosine(step: int, total: int, start: float, peak: float, end: float, warmup: float) -> float:
    """Linear warmup start→peak over the first ``warmup`` share of steps, then cosine peak→end."""
    n_warm = max(1, int(warmup * total))
    if step < n_warm:
        return start + (peak - start) * step / n_warm
    t = min(1.0, (step - n_warm) / max(1, total - n_warm))
    return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * t))


def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """Cosine schedule start→end over ``total`` steps (the weight decay rises this way)."""
    t = min(1.0, step / max(1, total))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


class _GroupedPairs(Dataset):
    """Items of a task for one epoch: each pair, or each group with one random member (``repeats`` times over)."""

    def __init__(self, task: Task, repeats: int = 1) -> None:
        self.repeats = repeats
        self.pairs = torch.from_numpy(task.pairs)
        if task.group_by is None:
            self.groups = None
        else:
            col = 0 if task.group_by == "src" else 1
            keys = task.pairs[:, col]
            order = np.argsort(keys, kind="stable")
            _, starts = np.unique(keys[order], return_index=True)
            self.groups = [torch.from_numpy(g) for g in np.split(order, starts[1:])]

    def __len__(self) -> int:
        return self.repeats * (len(self.pairs) if self.groups is None else len(self.groups))

    def __getitem__(self, i: int) -> Tensor:
        i = i % (len(self) // self.repeats)
        if self.groups is None:
            return self.pairs[i]
        members = self.groups[i]
        return self.pairs[members[torch.randint(len(members), ()).item()]]


class AlignmentData(L.LightningDataModule):
    """Training tasks (one loader each, cycled together) and validation tasks (evaluated whole)."""

    def __init__(self, tasks: list[Task], val_tasks: list[Task], batch_size: int, repeats: int = 1) -> None:
        super().__init__()
        self.tasks, self.val_tasks, self.batch_size, self.repeats = tasks, val_tasks, batch_size, repeats

    def train_dataloader(self) -> CombinedLoader:
        loaders = {}
        for task in self.tasks:
            items = _GroupedPairs(task, self.repeats)
            # a last batch of a few pairs gives InfoNCE too few negatives; drop it when there are others
            loaders[task.name] = DataLoader(
                items, batch_size=self.batch_size, shuffle=True, drop_last=len(items) > self.batch_size
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=1)  # one step; the module evaluates every val task in it


def _to(batch: EncodedBatch, device: torch.device) -> EncodedBatch:
    return EncodedBatch(batch.tokens.to(device), batch.mask.to(device), batch.pooled.to(device))


class AlignmentModule(L.LightningModule):
    """An aligner (the MMoE predictor, its MLP ablation, or CLIP heads) trained by AGD."""

    def __init__(
        self,
        model_config: dict[str, Any],
        train_config: dict[str, Any],
        task_names: list[str],
        encoders: dict[str, Any] | None = None,
        kind: str = KIND,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = build_model(model_config)
        self.cfg = TrainConfig(**train_config)
        # under DDP, InfoNCE sees every rank's batch as negatives (open_clip style); one process: no-op
        self.loss = M3JepaLoss(
            self.cfg.alpha,
            self.cfg.temperature,
            self.cfg.learnable_temperature,
            self.cfg.regression,
            gather=True,
            fused_weight=self.cfg.fused_contrastive,
        )
        self.task_names = list(task_names)
        self.register_buffer("task_probs", torch.full((len(task_names),), 1.0 / len(task_names)))
        experts = model_config.get("experts", 0) if model_config.get("mixer", "moe") == "moe" else 0
        self.register_buffer("usage_counts", torch.zeros(max(experts, 1)))
        self.val_history: list[dict[str, float]] = []
        self.expert_usage: list[float] | None = None
        # EMA of the weights (Polyak averaging): updated after every optimiser step; validation,
        # epoch selection and checkpoints see the averaged weights, training continues from its own
        self.ema: nn.Module | None = None
        self._fast_weights: list[Tensor] | None = None
        if self.cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay), use_buffers=False
            )

    @property
    def is_predictor(self) -> bool:
        return isinstance(self.model, M3Predictor)

    def _tasks(self) -> dict[str, Task]:
        return {t.name: t for t in self.trainer.datamodule.tasks}

    # ---- the loss of one task on one batch of pairs ---------------------------------------
    def task_loss(self, task: Task, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        """α·InfoNCE + (1−α)·regression (+ λ·balance) for the predictor; InfoNCE for CLIP heads."""
        rows = rows.cpu()
        src = _to(task.src_features.batch(rows[:, 0].numpy()), self.device)
        tgt = _to(task.tgt_features.batch(rows[:, 1].numpy()), self.device)
        ids = rows[:, 0].to(self.device), rows[:, 1].to(self.device)
        if not self.is_predictor:
            q, k = self.model.embed_query(task.src, task.tgt, src), self.model.embed_key(task.tgt, tgt)
            return self.loss(q, k, *ids)
        out = self.model(task.src, task.tgt, src.tokens, src.mask)
        target = self.model.project_target(task.tgt, tgt.tokens, tgt.mask)
        loss, logs = self.loss(
            out.contrastive, target, *ids, out.regression, tgt.pooled, self._reverse(task, src, tgt)
        )
        if out.routings:
            experts = self.model.config.experts
            for r in out.routings:
                self.usage_counts += torch.bincount(r.index.reshape(-1), minlength=experts).to(
                    self.usage_counts
                )
            if self.cfg.balance_weight > 0:
                lb = torch.stack([load_balancing(r.probs, r.index, experts) for r in out.routings]).mean()
                loss = loss + self.cfg.balance_weight * lb
                logs["balance"] = lb.item()
        return loss, logs

    def _reverse(self, task: Task, src: EncodedBatch, tgt: EncodedBatch) -> tuple[Tensor, Tensor] | None:
        """The reverse direction's (query vectors of the targets, key vectors of the sources), for the fused loss.

        Held fixed by default (no gradient): under AGD each direction's step moves its own score so
        that the fused sum ranks well, and the reverse direction moves in its own step; cheaper too
        (one forward without backward). ``fused_reverse_grad`` lets every step move both.
        None when the fused term is off or there is no reverse.
        """
        if (
            self.cfg.fused_contrastive <= 0
            or direction_key(task.tgt, task.src) not in self.model.regression_head
        ):
            return None
        with torch.set_grad_enabled(self.cfg.fused_reverse_grad):
            return (
                self.model.embed_query(task.tgt, task.src, tgt),
                self.model.embed_key(task.src, src),
            )

    # ---- AGD -------------------------------------------------------------------------------
    def steps_per_batch(self) -> int:
        return 1 if self.cfg.schedule == "summed" else len(self.task_names)

    def tasks_for_step(self) -> list[str]:
        """Which tasks this training step updates, in order (one optimiser step each)."""
        if self.cfg.schedule in ("cyclic", "summed"):
            return list(self.task_names)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + int(self.global_step))
        picks = torch.multinomial(
            self.task_probs.cpu(), len(self.task_names), replacement=True, generator=gen
        )
        return [self.task_names[i] for i in picks.tolist()]

    def _optimizer_step(self, loss: Tensor) -> None:
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=self.cfg.clip, gradient_clip_algorithm="norm")
        wd = cosine_ramp(
            sched.last_epoch, self._total_steps, self.cfg.weight_decay_start, self.cfg.weight_decay_end
        )
        for group in opt.param_groups:
            if group["weight_decay"] > 0:
                group["weight_decay"] = wd
        opt.step()
        sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        tasks = self._tasks()
        if self.cfg.schedule == "summed":
            losses = [self.task_loss(tasks[name], batch[name]) for name in self.task_names]
            total = torch.stack([loss for loss, _ in losses]).sum()
            self._optimizer_step(total)
            self.log("train_loss", total.detach(), prog_bar=True, batch_size=len(batch[self.task_names[0]]))
            return
        for name in self.tasks_for_step():
            loss, _ = self.task_loss(tasks[name], batch[name])
            self._optimizer_step(loss)
            self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(batch[name]))

    # ---- validation: recall of every val task; adapts the sampling probabilities -----------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        from triptych.m3jepa.retrieval import evaluate_tasks

        results = evaluate_tasks(self.model, self.trainer.datamodule.val_tasks, self.cfg.fuse_directions)
        means = {name: float(np.mean(list(r.values()))) for name, r in results.items()}
        val_recall = float(np.mean(list(means.values())))
        for name, r in results.items():
            for k, v in r.items():
                self.log(f"val/{name}/{k}", v, batch_size=1)
        self.log("val_recall", val_recall, prog_bar=True, batch_size=1)
        self.val_history.append(
            {
                "epoch": int(self.current_epoch),
                "val_recall": val_recall,
                **{f"{n}/{k}": v for n, r in results.items() for k, v in r.items()},
            }
        )
        if self.cfg.schedule == "sampled":
            self.adapt_probabilities(means)

    def adapt_probabilities(self, recall_by_task: dict[str, float]) -> None:
        """p_t = floor/T + (1 − floor) · deficit_t / Σ deficit, deficit_t = 100 − recall_t (worse → more)."""
        deficits = torch.tensor(
            [100.0 - recall_by_task.get(n, 50.0) for n in self.task_names], dtype=torch.float
        ).clamp_min(1e-3)
        uniform = torch.full_like(deficits, 1.0 / len(deficits))
        probs = self.cfg.sample_floor * uniform + (1 - self.cfg.sample_floor) * deficits / deficits.sum()
        self.task_probs.copy_(probs.to(self.task_probs))

    def on_validation_epoch_start(self) -> None:
        """With EMA: validate (and checkpoint after it) the averaged weights; the training ones are kept aside."""
        if self.ema is not None and self.trainer.state.fn == "fit":
            params = list(self.model.parameters())
            self._fast_weights = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, a in zip(params, self.ema.module.parameters(), strict=True):
                    p.copy_(a)

    def on_train_epoch_start(self) -> None:
        """With EMA: training resumes from its own weights, not the averaged ones validated last."""
        if self._fast_weights is not None:
            with torch.no_grad():
                for p, w in zip(self.model.parameters(), self._fast_weights, strict=True):
                    p.copy_(w)
            self._fast_weights = None

    def on_train_epoch_end(self) -> None:
        if self.is_predictor and self.usage_counts.sum() > 0:
            self.expert_usage = (self.usage_counts / self.usage_counts.sum()).tolist()
            self.usage_counts.zero_()

    # ---- optimiser and schedules -------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches) * self.steps_per_batch())
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": self.cfg.weight_decay_start}]
        if any(p.requires_grad for p in self.loss.parameters()):
            groups.append({"params": list(self.loss.parameters()), "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr_peak)
        c = self.cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                warmup_cosine(s, self._total_steps, c.lr_start, c.lr_peak, c.lr_end, c.warmup_fraction)
                / c.lr_peak
            ),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class TrainResult:
    """What :func:`train_aligner` hands back: the best module, its checkpoint, and the history."""

    module: AlignmentModule
    checkpoint: Path | None
    train_seconds: float
    val_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.module.model


def train_aligner(
    tasks: list[Task],
    val_tasks: list[Task],
    model_config: dict[str, Any],
    train_config: TrainConfig | dict[str, Any] | None = None,
    out_dir: str | Path = "runs/m3jepa",
    flags: TrainerFlags | None = None,
    encoders: dict[str, Any] | None = None,
    enable_progress_bar: bool = True,
) -> TrainResult:
    """Train an aligner on ``tasks``, select the epoch by recall on ``val_tasks``, return the best."""
    from triptych.core.checkpoint import load_state_dict_into
    from triptych.core.seed import seed_everything

    cfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig(**(train_config or {}))
    if model_config.get("type", "predictor") == "predictor":
        _check_dims(model_config, tasks + val_tasks)
    names = [t.name for t in tasks]
    if [t.name for t in val_tasks] != names:
        raise InputError(
            f"validation tasks {[t.name for t in val_tasks]} must match the training tasks {names}"
        )
    seed_everything(cfg.seed)
    module = AlignmentModule(dict(model_config), asdict(cfg), names, encoders or {})
    flags = flags or TrainerFlags()
    if flags.strategy == "ddp":  # a direction uses only its own input projection and heads
        flags = TrainerFlags(**{**asdict(flags), "strategy": "ddp_find_unused_parameters_true"})
    trainer = make_trainer(
        flags,
        max_epochs=cfg.max_epochs,
        default_root_dir=out_dir,
        monitor="val_recall",
        mode="max",
        patience=cfg.patience,
        enable_progress_bar=enable_progress_bar,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    # equal optimiser steps: summed losses take one step per batch, AGD one per task, so summed sees T× the batches
    repeats = len(tasks) if cfg.schedule == "summed" and cfg.match_agd_steps else 1
    data = AlignmentData(tasks, val_tasks, cfg.batch_size, repeats)
    start = time.perf_counter()
    fit(trainer, module, datamodule=data, resume=flags.resume)
    seconds = time.perf_counter() - start
    history, usage = module.val_history, module.expert_usage
    best = best_checkpoint(trainer)
    if best is not None and best.is_file():
        state, _ = load_module_state(best, KIND)
        load_state_dict_into(module, state, best)
    module.val_history, module.expert_usage = history, usage
    module.eval()
    return TrainResult(module, best, seconds, history)


def _check_dims(model_config: dict[str, Any], tasks: list[Task]) -> None:
    """A cache whose width differs from the predictor's is a clear error, not a matmul crash."""
    dims = model_config.get("dims", {})
    for t in tasks:
        for modality, feats in ((t.src, t.src_features), (t.tgt, t.tgt_features)):
            have = int(feats.tokens.shape[-1])
            if modality in dims and dims[modality] != have:
                raise InputError(
                    f"{modality} features in {getattr(feats, 'path', '?')} are {have}-d but the predictor "
                    f"expects {dims[modality]}-d; use a cache made with the same {modality} encoder"
                )

"""Training an aligner with alternating gradient descent (AGD), through Lightning.

A *task* is one direction over one dataset (image→text, text→image, image→label, ...),
given as pairs of rows into two feature caches. AGD takes one optimiser step per task:

- ``cyclic``: every training step visits the tasks in order, one optimiser step each;
- ``sampled``: every training step draws as many tasks (with replacement) from
  probabilities that adapt after each validation to the tasks' recall (worse → drawn more);
- ``summed``: the no-AGD ablation, one optimiser step on the sum of all task losses.

AdamW with a warmup-cosine learning rate, a cosine weight-decay schedule (rising), gradient
clipping and early stopping on the validation recall. Optimisation is manual (several
optimiser steps per batch), which Lightning supports under DDP; the task choice of
``sampled`` is drawn from a generator seeded by the step, so every rank picks the same task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from triptych.core.errors import InputError
from triptych.core.training import TrainerFlags, best_checkpoint, fit, load_module_state, make_trainer
from triptych.m3jepa.features import EncodedBatch, Features
from triptych.m3jepa.losses import (
    Temperature,
    alpha_mix,
    info_nce,
    latent_regression,
    load_balancing,
    positives_from_ids,
)
from triptych.m3jepa.predictor import M3Predictor, PredictorConfig

KIND = "m3jepa.aligner"


@dataclass
class Task:
    """One AGD task: ``src -> tgt`` over ``pairs`` (P×2 rows into ``src_features`` / ``tgt_features``).

    ``group_by`` ("src", "tgt" or None) makes an epoch visit each item of that side once
    with one random partner (e.g. each image once with one of its five captions).
    """

    src: str
    tgt: str
    src_features: Features
    tgt_features: Features
    pairs: np.ndarray
    group_by: Literal["src", "tgt"] | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        self.pairs = np.ascontiguousarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        if len(self.pairs) == 0:
            raise InputError(f"task {self.name} has no pairs; check the split and the captions")

    @property
    def name(self) -> str:
        return f"{self.dataset + ':' if self.dataset else ''}{self.src}->{self.tgt}"


def caption_tasks(
    images: Features,
    captions: Features,
    caption_image: Sequence[int] | np.ndarray,
    image_rows: np.ndarray | None = None,
    caption_rows: np.ndarray | None = None,
    dataset: str = "",
    media: str = "image",
) -> list[Task]:
    """image→text and text→image tasks for an image–caption set (``media="audio"``: audio→text, text→audio).

    ``caption_image[j]`` is caption j's image (positions in ``image_rows`` / ``caption_rows``,
    the rows of these items in the two caches; default: the caches' own order).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    image_rows = np.arange(len(images)) if image_rows is None else np.asarray(image_rows)
    caption_rows = np.arange(len(captions)) if caption_rows is None else np.asarray(caption_rows)
    pairs = np.stack([image_rows[caption_image], caption_rows], 1)
    return [
        Task(media, "text", images, captions, pairs, group_by="src", dataset=dataset),
        Task("text", media, captions, images, pairs[:, ::-1], group_by="tgt", dataset=dataset),
    ]


@dataclass
class TrainConfig:
    """Optimisation and loss settings (stored in checkpoints)."""

    schedule: Literal["cyclic", "sampled", "summed"] = "cyclic"
    alpha: float = 0.5
    temperature: float = 0.03
    learnable_temperature: bool = False
    regression: Literal["smooth_l1", "mse"] = "smooth_l1"
    balance_weight: float = 0.0
    lr_start: float = 1e-3
    lr_peak: float = 1.5e-3
    lr_end: float = 5e-6
    warmup_fraction: float = 0.1
    weight_decay_start: float = 0.005
    weight_decay_end: float = 0.2
    clip: float = 1.0
    batch_size: int = 128
    max_epochs: int = 20
    patience: int = 3
    seed: int = 0
    sample_floor: float = 0.5  # share of uniform probability kept by ``sampled``
    fuse_directions: bool = False  # validate with both directions' scores summed (see retrieval.evaluate_tasks)


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


def build_model(config: dict[str, Any]) -> nn.Module:
    """An aligner from its stored config: ``{"type": "predictor"|"clip", ...}``."""
    config = dict(config)
    kind = config.pop("type", "predictor")
    if kind == "predictor":
        return M3Predictor(PredictorConfig(**config))
    if kind == "clip":
        from triptych.m3jepa.baselines import ClipHeads

        return ClipHeads(**config)
    raise InputError(f"unknown aligner type {kind!r} in checkpoint; expected 'predictor' or 'clip'")


class _GroupedPairs(Dataset):
    """Items of a task for one epoch: each pair, or each group with one random member."""

    def __init__(self, task: Task) -> None:
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
        return len(self.pairs) if self.groups is None else len(self.groups)

    def __getitem__(self, i: int) -> Tensor:
        if self.groups is None:
            return self.pairs[i]
        members = self.groups[i]
        return self.pairs[members[torch.randint(len(members), ()).item()]]


class AlignmentData(L.LightningDataModule):
    """Training tasks (one loader each, cycled together) and validation tasks (evaluated whole)."""

    def __init__(self, tasks: list[Task], val_tasks: list[Task], batch_size: int) -> None:
        super().__init__()
        self.tasks, self.val_tasks, self.batch_size = tasks, val_tasks, batch_size

    def train_dataloader(self) -> CombinedLoader:
        loaders = {}
        for task in self.tasks:
            items = _GroupedPairs(task)
            # a last batch of a few pairs gives InfoNCE too few negatives; drop it when there are others
            loaders[task.name] = DataLoader(items, batch_size=self.batch_size, shuffle=True,
                                            drop_last=len(items) > self.batch_size)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=1)  # one step; the module evaluates every val task in it


def _to(batch: EncodedBatch, device: torch.device) -> EncodedBatch:
    return EncodedBatch(batch.tokens.to(device), batch.mask.to(device), batch.pooled.to(device))


class AlignmentModule(L.LightningModule):
    """An aligner (the MMoE predictor, its MLP ablation, or CLIP heads) trained by AGD."""

    def __init__(self, model_config: dict[str, Any], train_config: dict[str, Any], task_names: list[str],
                 encoders: dict[str, Any] | None = None, kind: str = KIND) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = build_model(model_config)
        self.cfg = TrainConfig(**train_config)
        self.temperature = Temperature(self.cfg.temperature, self.cfg.learnable_temperature)
        self.task_names = list(task_names)
        self.register_buffer("task_probs", torch.full((len(task_names),), 1.0 / len(task_names)))
        experts = model_config.get("experts", 0) if model_config.get("mixer", "moe") == "moe" else 0
        self.register_buffer("usage_counts", torch.zeros(max(experts, 1)))
        self.val_history: list[dict[str, float]] = []
        self.expert_usage: list[float] | None = None

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
        positives = positives_from_ids(rows[:, 0], rows[:, 1]).to(self.device)
        if not self.is_predictor:
            q, k = self.model.embed_query(task.src, task.tgt, src), self.model.embed_key(task.tgt, tgt)
            loss = info_nce(q, k, self.temperature(), positives)
            return loss, {"contrastive": loss.item()}
        out = self.model(task.src, task.tgt, src.tokens, src.mask)
        target = self.model.project_target(task.tgt, tgt.tokens, tgt.mask)
        lc = info_nce(out.contrastive, target, self.temperature(), positives)
        lr = latent_regression(out.regression, tgt.pooled, self.cfg.regression)
        loss = alpha_mix(lc, lr, self.cfg.alpha)
        logs = {"contrastive": lc.item(), "regression": lr.item()}
        if out.routings:
            experts = self.model.config.experts
            for r in out.routings:
                self.usage_counts += torch.bincount(r.index.reshape(-1), minlength=experts).to(self.usage_counts)
            if self.cfg.balance_weight > 0:
                lb = torch.stack([load_balancing(r.probs, r.index, experts) for r in out.routings]).mean()
                loss = loss + self.cfg.balance_weight * lb
                logs["balance"] = lb.item()
        return loss, logs

    # ---- AGD -------------------------------------------------------------------------------
    def steps_per_batch(self) -> int:
        return 1 if self.cfg.schedule == "summed" else len(self.task_names)

    def tasks_for_step(self) -> list[str]:
        """Which tasks this training step updates, in order (one optimiser step each)."""
        if self.cfg.schedule in ("cyclic", "summed"):
            return list(self.task_names)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + int(self.global_step))
        picks = torch.multinomial(self.task_probs.cpu(), len(self.task_names), replacement=True, generator=gen)
        return [self.task_names[i] for i in picks.tolist()]

    def _optimizer_step(self, loss: Tensor) -> None:
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=self.cfg.clip, gradient_clip_algorithm="norm")
        wd = cosine_ramp(sched.last_epoch, self._total_steps, self.cfg.weight_decay_start, self.cfg.weight_decay_end)
        for group in opt.param_groups:
            if group["weight_decay"] > 0:
                group["weight_decay"] = wd
        opt.step()
        sched.step()

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
        self.val_history.append({"epoch": int(self.current_epoch), "val_recall": val_recall, **{
            f"{n}/{k}": v for n, r in results.items() for k, v in r.items()}})
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

    def on_train_epoch_end(self) -> None:
        if self.is_predictor and self.usage_counts.sum() > 0:
            self.expert_usage = (self.usage_counts / self.usage_counts.sum()).tolist()
            self.usage_counts.zero_()

    # ---- optimiser and schedules -------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches) * self.steps_per_batch())
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": self.cfg.weight_decay_start}]
        if any(p.requires_grad for p in self.temperature.parameters()):
            groups.append({"params": list(self.temperature.parameters()), "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr_peak)
        c = self.cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: warmup_cosine(s, self._total_steps, c.lr_start, c.lr_peak, c.lr_end, c.warmup_fraction)
            / c.lr_peak,
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
        raise InputError(f"validation tasks {[t.name for t in val_tasks]} must match the training tasks {names}")
    seed_everything(cfg.seed)
    module = AlignmentModule(dict(model_config), asdict(cfg), names, encoders or {})
    flags = flags or TrainerFlags()
    if flags.strategy == "ddp":  # a direction uses only its own input projection and heads
        flags = TrainerFlags(**{**asdict(flags), "strategy": "ddp_find_unused_parameters_true"})
    trainer = make_trainer(
        flags, max_epochs=cfg.max_epochs, default_root_dir=out_dir, monitor="val_recall", mode="max",
        patience=cfg.patience, enable_progress_bar=enable_progress_bar, num_sanity_val_steps=0,
        deterministic=False,
    )
    data = AlignmentData(tasks, val_tasks, cfg.batch_size)
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


@dataclass
class Aligner:
    """A trained aligner for inference: maps cached features of each modality into the retrieval space."""

    model: nn.Module
    model_config: dict[str, Any]
    encoders: dict[str, Any]
    path: Path | None = None

    @torch.no_grad()
    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> Tensor:
        """L2-normalised query vectors of ``src`` items for retrieving ``tgt`` items (B×P)."""
        return torch.nn.functional.normalize(self.model.embed_query(src, tgt, batch), dim=-1)

    @torch.no_grad()
    def embed_key(self, tgt: str, batch: EncodedBatch) -> Tensor:
        """L2-normalised vectors of ``tgt`` items, the index side (B×P)."""
        return torch.nn.functional.normalize(self.model.embed_key(tgt, batch), dim=-1)


@dataclass
class AlignerEnsemble:
    """Several aligners on the same encoders, used as one: the mean of their cosine scores.

    Each vector is the concatenation of the members' unit vectors scaled by 1/sqrt(n), so a
    dot product of two ensemble vectors is the members' mean cosine (and stays in [-1, 1]).
    """

    members: list[Aligner]

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("an ensemble needs at least one checkpoint")
        first = self.members[0]
        for other in self.members[1:]:
            if other.encoders != first.encoders:
                raise InputError(f"checkpoints {first.path} and {other.path} were trained on different encoders; "
                                 "an ensemble needs the same encoders")

    @property
    def encoders(self) -> dict[str, Any]:
        return self.members[0].encoders

    def _joined(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    @torch.no_grad()
    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> Tensor:
        """[q_1, ..., q_n] / sqrt(n): unit-norm query vectors (B × nP)."""
        return self._joined([m.embed_query(src, tgt, batch) for m in self.members])

    @torch.no_grad()
    def embed_key(self, tgt: str, batch: EncodedBatch) -> Tensor:
        """[k_1, ..., k_n] / sqrt(n): unit-norm key vectors (B × nP)."""
        return self._joined([m.embed_key(tgt, batch) for m in self.members])


def load_aligners(checkpoints: Sequence[str | Path]) -> Aligner | AlignerEnsemble:
    """One checkpoint's aligner, or an ensemble of several (e.g. the benchmark's seeds)."""
    aligners = [load_aligner(c) for c in checkpoints]
    return aligners[0] if len(aligners) == 1 else AlignerEnsemble(aligners)


def load_aligner(checkpoint: str | Path) -> Aligner:
    """The aligner saved by ``triptych m3jepa train`` (or any training run), ready for search."""
    from triptych.core.checkpoint import load_state_dict_into, rebuilding

    state, hparams = load_module_state(checkpoint, KIND)
    prefix = "model."
    with rebuilding(checkpoint):
        model = build_model(hparams["model_config"])
        model_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_into(model, model_state, checkpoint)
    model.eval()
    return Aligner(model, hparams["model_config"], hparams.get("encoders") or {}, Path(checkpoint))

"""Training: masked focal / BCE loss, the Lightning module, and the ``train`` entry point.

Loss (per task t, over the molecules labelled for t only, then weighted):

    FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t          (binary focal loss, Lin et al. 2017)
    L = sum_t w_t * mean_{i: y_it observed} FL_it        (masked multi-task loss)

``gamma = 0`` and ``alpha = 0.5`` is BCE up to a factor of 1/2, so ``loss="bce"`` uses
plain BCE instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from triptych.core.checkpoint import save_checkpoint
from triptych.core.errors import InputError
from triptych.core.seed import seed_everything
from triptych.core.training import TrainerFlags, best_checkpoint, fit, make_trainer
from triptych.matic.data import MolTable, Splits
from triptych.matic.featurize import GraphArrays, collate, featurize
from triptych.matic.model import KIND, ModelConfig


def masked_focal_loss(
    logits: Tensor,
    targets: Tensor,
    task_weights: Tensor,
    alpha: float = 0.5,
    gamma: float = 2.0,
    kind: str = "focal",
) -> Tensor:
    """Masked multi-task binary focal loss (or BCE); ``logits, targets [B, T]``, NaN targets are ignored.

    Each task's loss is the mean over its labelled molecules; tasks with none in the
    batch contribute zero. Returns a scalar.
    """
    mask = ~torch.isnan(targets)
    y = torch.where(mask, targets, torch.zeros_like(targets))
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if kind == "focal":
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        alpha_t = alpha * y + (1 - alpha) * (1 - y)
        per = alpha_t * (1 - p_t) ** gamma * bce
    elif kind == "bce":
        per = bce
    else:
        raise ValueError(f"loss {kind!r} not in ('focal', 'bce')")
    per = per * mask
    count = mask.sum(dim=0)
    per_task = per.sum(dim=0) / count.clamp(min=1)
    return (per_task * task_weights).sum()


@dataclass
class TrainConfig(ModelConfig):
    """The network (:class:`ModelConfig`) plus the loss and optimisation settings; saved whole in checkpoints."""

    loss: str = "focal"
    alpha: float = 0.5
    gamma: float = 2.0
    task_weights: list[float] = field(default_factory=list)  # default: equal, summing to 1
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 15
    seed: int = 0
    # Arithmetic of the stacked Attentive FP pass in training: auto (bf16 on a CPU with native bfloat16,
    # e.g. AMX; fp32 elsewhere), bf16 or fp32. Master weights, optimiser, loss and validation stay fp32.
    precision: str = "auto"

    def weights(self) -> list[float]:
        w = self.task_weights or [1.0] * len(self.tasks)
        if len(w) != len(self.tasks):
            raise InputError(f"--task-weights has {len(w)} values for {len(self.tasks)} tasks {self.tasks}")
        total = float(sum(w))
        return [float(v) / total for v in w]


TRAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Lightning's --precision names that select MATIC's own bf16 / fp32 pass (Lightning then runs 32-true:
# its bf16 autocast would leave the stacked pass with mixed dtypes).
LIGHTNING_PRECISIONS = {
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
    "bf16": "bf16",
    "32-true": "fp32",
    "32": "fp32",
}


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bfloat16 arithmetic, else ``fp32``; Lightning's names mapped."""
    precision = LIGHTNING_PRECISIONS.get(precision, precision)
    if precision == "auto":
        from triptych.matic.screen import default_precision

        return default_precision("cpu" if not torch.cuda.is_available() else "cuda")
    if precision not in TRAIN_DTYPES:
        raise InputError(f"--precision {precision!r}: choose auto, bf16 or fp32 (or bf16-mixed / 32-true)")
    return precision


class MaticModule(L.LightningModule):
    """Lightning wrapper: masked focal/BCE loss, Adam, validation loss for early stopping."""

    def __init__(self, config: dict[str, Any], kind: str = KIND) -> None:
        super().__init__()
        self.save_hyperparameters()  # kind + config: typed checkpoints that rebuild the model
        self.config = TrainConfig(**config)
        self.model = self.config.build_model()
        self.model.train_dtype = TRAIN_DTYPES[resolve_precision(self.config.precision)]
        self.register_buffer("task_weights", torch.tensor(self.config.weights()), persistent=False)

    def forward(self, batch: GraphBatch) -> Tensor:
        """Logits ``[num_graphs, T]`` of the batch's molecules (the padding molecule's are dropped)."""
        out = self.model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
        return out.logits[: batch.num_graphs]

    def _loss(self, batch: GraphBatch) -> Tensor:
        return masked_focal_loss(
            self(batch), batch.y, self.task_weights, self.config.alpha, self.config.gamma, self.config.loss
        )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, batch_size=batch.num_graphs, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), batch_size=batch.num_graphs, prog_bar=True, on_epoch=True)

    def configure_optimizers(self):
        # Not fused=True: the fused kernel updates the parameters without bumping their version counters,
        # so the model's cached stacked inference weights (validation) would never see the updates.
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)


# Atoms per batch are padded to a multiple of this (bonds to twice it): bf16 matrix products on CPU
# (oneDNN) build a kernel per shape, and unpadded batches would bring a new shape (kernel builds) every step.
ATOM_BUCKET = 64


class GraphBatch(NamedTuple):
    """A training batch: the disjoint union of ``num_graphs`` molecules plus one padding molecule (last)."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    y: Tensor  # [num_graphs, T], NaN = missing
    num_graphs: int


def labelled_graphs(table: MolTable, cache_dir: Path | None = None) -> list[tuple[GraphArrays, np.ndarray]]:
    """Each molecule's graph arrays and label row (NaN = missing), featurised once (cached by the featuriser)."""
    out = []
    for g, y in zip(featurize(table.smiles, cache_dir), table.labels, strict=True):
        if g is None:  # tables hold canonical SMILES, so this only guards against RDKit oddities
            continue
        out.append(((g.x.numpy(), g.edge_index.numpy(), g.edge_attr.numpy()), np.asarray(y, np.float32)))
    return out


def collate_labelled(items: list[tuple[GraphArrays, np.ndarray]], bucket: int = ATOM_BUCKET) -> GraphBatch:
    """One padded batch (the featuriser's :func:`collate`, in numpy) with its labels."""
    x, edge_index, edge_attr, batch = collate([g for g, _ in items], bucket=bucket)
    y = torch.from_numpy(np.stack([y for _, y in items]))
    return GraphBatch(x, edge_index, edge_attr, batch, y, len(items))


def graph_loader(
    items: list[tuple[GraphArrays, np.ndarray]], batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches of labelled graphs, reshuffled every epoch from ``seed`` when ``shuffle``."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        items, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate_labelled
    )


def labelled_only(table: MolTable) -> MolTable:
    """Rows with at least one label (single-task models train only on their task's molecules)."""
    keep = np.flatnonzero(~np.isnan(table.labels).all(axis=1))
    return table.subset(keep)


def train_predictor(
    splits: Splits,
    config: TrainConfig,
    out_dir: str | Path,
    flags: TrainerFlags | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> Path:
    """Train on ``splits.train``, early-stop on ``splits.val``; write ``out_dir/model.safetensors``.

    Returns the path of the exported best model (weights + config, no optimiser state).
    """
    out_dir = Path(out_dir)
    seed_everything(config.seed)
    train_t, val_t = labelled_only(splits.train), labelled_only(splits.val)
    if len(train_t) == 0:
        raise InputError("the training data has no labelled molecules; give 1/0 labels for at least one task")
    if len(val_t) == 0:
        raise InputError("the validation data has no labelled molecules; give a --val file or a bigger table")
    # Featurised once; an epoch then only shuffles and concatenates arrays (numpy, ~1% of a step).
    train_dl = graph_loader(
        labelled_graphs(train_t, cache_dir), config.batch_size, shuffle=True, seed=config.seed
    )
    val_dl = graph_loader(labelled_graphs(val_t, cache_dir), 256)
    module = MaticModule(asdict(config))
    trainer = make_trainer(
        flags,
        precision="32-true",  # the bf16 pass is the model's own (config.precision), not Lightning's autocast
        max_epochs=config.max_epochs,
        default_root_dir=out_dir,
        monitor="val_loss",
        patience=config.patience,
        enable_progress_bar=progress,
        deterministic=False,
        log_every_n_steps=10,
        gradient_clip_val=1.0,
    )
    fit(trainer, module, train_dl, val_dl, resume=flags.resume if flags else None)
    best = best_checkpoint(trainer)
    if best is None or not best.is_file():
        raise InputError(f"training wrote no checkpoint under {out_dir}")
    return export_model(
        best,
        out_dir / "model.safetensors",
        extra={"epochs_run": trainer.current_epoch, "best_val_loss": _best_score(trainer)},
    )


def _best_score(trainer: L.Trainer) -> float | None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.best_model_score is not None:
            return float(cb.best_model_score)
    return None


def export_model(training_checkpoint: Path, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """Strip a training checkpoint to ``{state_dict, hyper_parameters}`` of kind ``matic.predictor``."""
    from triptych.core.training import load_module_state

    state_dict, hparams = load_module_state(training_checkpoint, KIND)
    return save_checkpoint(
        out,
        {"state_dict": state_dict, "hyper_parameters": hparams},
        kind=KIND,
        config=hparams,
        extra=extra or {},
    )


def write_json(path: Path, obj: Any) -> None:
    from triptych.core.results import write_json

    write_json(path, obj)  # strict JSON: a metric that is not a number (one class) is null, not NaN

"""What an aligner is at inference time, and loading trained ones from checkpoints.

An :class:`Aligner` maps encoded items of one modality into the retrieval space of another:
``embed_query(src, tgt, batch)`` predicts the ``tgt`` embedding of ``src`` items, and
``embed_key(tgt, batch)`` embeds ``tgt`` items as the index side. Search, evaluation and the
querybank take any object with these two methods and an ``encoders`` record (which frozen
encoders made the features it expects); :func:`load_aligner` gives one from a checkpoint and
:class:`AlignerEnsemble` joins several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from triptych.core.errors import InputError
from triptych.m3jepa.features import EncodedBatch

KIND = "m3jepa.aligner"  # the checkpoint kind of a training run


@runtime_checkable
class Aligner(Protocol):
    """Anything that embeds queries and keys of cached features (the predictor, CLIP heads, an ensemble)."""

    encoders: dict[str, Any]  # modality -> {"encoder", "fingerprint", "dim", ...} of the features it expects

    def embed_query(self, src: str, tgt: str, batch: EncodedBatch) -> Tensor:
        """Query vectors of ``src`` items for retrieving ``tgt`` items (B x P)."""
        ...

    def embed_key(self, tgt: str, batch: EncodedBatch) -> Tensor:
        """Index-side vectors of ``tgt`` items (B x P)."""
        ...


def build_model(config: dict[str, Any]) -> nn.Module:
    """An aligner network from its stored config: ``{"type": "predictor"|"clip", ...}``."""
    from triptych.m3jepa.predictor import M3Predictor, PredictorConfig

    config = dict(config)
    kind = config.pop("type", "predictor")
    if kind == "predictor":
        return M3Predictor(PredictorConfig(**config))
    if kind == "clip":
        from triptych.m3jepa.baselines import ClipHeads

        return ClipHeads(**config)
    raise InputError(f"unknown aligner type {kind!r} in checkpoint; expected 'predictor' or 'clip'")


@dataclass
class CheckpointAligner:
    """A trained aligner for inference: maps cached features of each modality into the retrieval space."""

    model: nn.Module
    model_config: dict[str, Any]
    encoders: dict[str, Any]
    path: Path | None = None
    train_config: dict[str, Any] = field(default_factory=dict)  # how it was trained (fuse_directions, ...)

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

    members: list[CheckpointAligner]

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("an ensemble needs at least one checkpoint")
        first = self.members[0]
        for other in self.members[1:]:
            if other.encoders != first.encoders:
                raise InputError(
                    f"checkpoints {first.path} and {other.path} were trained on different encoders; "
                    "an ensemble needs the same encoders"
                )

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


def load_aligners(checkpoints: Sequence[str | Path]) -> CheckpointAligner | AlignerEnsemble:
    """One checkpoint's aligner, or an ensemble of several (e.g. the benchmark's seeds)."""
    aligners = [load_aligner(c) for c in checkpoints]
    return aligners[0] if len(aligners) == 1 else AlignerEnsemble(aligners)


def load_aligner(checkpoint: str | Path) -> CheckpointAligner:
    """The aligner saved by ``triptych m3jepa train`` (or any training run), ready for search."""
    from triptych.core.checkpoint import load_state_dict_into, rebuilding
    from triptych.core.training import load_module_state

    state, hparams = load_module_state(checkpoint, KIND)
    prefix = "model."
    with rebuilding(checkpoint):  # a checkpoint with a broken config is a clear error, not a traceback
        model = build_model(hparams["model_config"])
        model_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_into(model, model_state, checkpoint)
    model.eval()
    return CheckpointAligner(
        model,
        hparams["model_config"],
        hparams.get("encoders") or {},
        Path(checkpoint),
        hparams.get("train_config") or {},
    )

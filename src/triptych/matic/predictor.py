"""Inference: ``load_predictor(checkpoint)`` -> :class:`Predictor` with ``.tasks`` and batched ``predict_proba``.

Nothing here imports training (Lightning): a checkpoint is read with the core's
safetensors loader and the network is rebuilt from its :class:`ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from triptych.core.checkpoint import CheckpointError, load_checkpoint, load_state_dict_into, rebuilding
from triptych.core.errors import InputError
from triptych.matic.featurize import DEFAULT, collate
from triptych.matic.model import KIND, ModelConfig, MultiTaskAttentiveFP, Output

# Inference precision of the stacked pass. bf16 (AMX / AVX-512 BF16 on recent x86 CPUs) moves half
# the bytes; its rankings agree with fp32 to the tolerance in benchmarks/results/matic_screen_speed.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
PAD_BUCKET = 64  # atoms per padding bucket of a scored batch (edges: twice that)


@dataclass
class Predictor:
    """A trained multi-task Attentive FP ready for screening and interpretation."""

    model: MultiTaskAttentiveFP
    config: ModelConfig
    path: Path
    device: torch.device = torch.device("cpu")

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def expert_names(self) -> list[str]:
        return self.model.expert_names(self.tasks)

    def forward_arrays(self, graphs: Sequence) -> Output:
        """One forward pass over featurised molecules (``GraphArrays``, see :mod:`featurize`)."""
        x, edge_index, edge_attr, batch = (t.to(self.device) for t in collate(graphs))
        return self.model(x, edge_index, edge_attr, batch)

    @torch.inference_mode()
    def probabilities(self, graphs: Sequence) -> np.ndarray:
        """``(len(graphs), n_tasks)`` probabilities of featurised molecules (the screening path).

        Batches are padded to a few shapes (:func:`collate` ``bucket``), which bf16 needs to
        reuse its kernels; the padding molecule's row is dropped.
        """
        self.model.eval()
        x, edge_index, edge_attr, batch = (t.to(self.device) for t in collate(graphs, PAD_BUCKET))
        logits = self.model(x, edge_index, edge_attr, batch).logits[: len(graphs)]
        return torch.sigmoid(logits).float().cpu().numpy()

    @torch.inference_mode()
    def forward_batches(
        self, smiles: Sequence[str], batch_size: int = 256
    ) -> Iterator[tuple[list[int], Output]]:
        """Yield ``(indices of valid SMILES in this batch, model output)`` batch by batch."""
        self.model.eval()
        for start in range(0, len(smiles), batch_size):
            graphs = [DEFAULT.arrays(s) for s in smiles[start : start + batch_size]]
            valid = [i for i, g in enumerate(graphs) if g is not None]
            if valid:
                yield [start + i for i in valid], self.forward_arrays([graphs[i] for i in valid])

    def predict_proba(self, smiles: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(n, n_tasks)`` probabilities; rows of NaN for SMILES that cannot be parsed."""
        out = np.full((len(smiles), len(self.tasks)), np.nan, dtype=np.float64)
        for start in range(0, len(smiles), batch_size):
            graphs = [DEFAULT.arrays(s) for s in smiles[start : start + batch_size]]
            valid = [i for i, g in enumerate(graphs) if g is not None]
            if valid:
                out[[start + i for i in valid]] = self.probabilities([graphs[i] for i in valid])
        return out


def read_config(checkpoint: str | Path) -> tuple[dict, dict]:
    """``(state_dict, saved config)`` of a ``matic.predictor`` checkpoint, or a one-line :class:`InputError`."""
    try:
        state, _ = load_checkpoint(Path(checkpoint), kind=KIND)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    state_dict, hparams = state.get("state_dict"), state.get("hyper_parameters") or {}
    if (
        not isinstance(state_dict, dict)
        or not isinstance(hparams, dict)
        or not isinstance(hparams.get("config") or {}, dict)
    ):
        raise InputError(
            f"checkpoint {checkpoint} is corrupt: it lacks a state_dict or a model config; "
            "re-train or re-export it"
        )
    return state_dict, dict(hparams.get("config") or {})


def load_predictor(
    checkpoint: str | Path,
    tasks: Sequence[str] | None = None,
    device: str = "cpu",
    *,
    pyg: bool = True,
    precision: str = "fp32",
) -> Predictor:
    """Rebuild a predictor from a ``matic.predictor`` checkpoint (exported or training).

    ``tasks``, when given, must be the tasks the checkpoint was trained for (any order is
    an error too, since columns would be swapped silently). ``pyg=False`` builds the
    network without PyG (inference through the stacked pass only; starts faster);
    ``precision`` ``"bf16"`` runs that pass in bfloat16 (see :data:`PRECISIONS`).
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} unknown; choose {' or '.join(PRECISIONS)}")
    path = Path(checkpoint)
    state_dict, saved = read_config(path)
    try:
        with rebuilding(path):
            config = ModelConfig.from_dict(saved)
            model = config.build_model(pyg)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    if tasks is not None and list(tasks) != list(config.tasks):
        raise InputError(
            f"checkpoint {path} was trained for tasks {config.tasks}, not {list(tasks)}; "
            "use a checkpoint trained on these tasks or pass matching --tasks"
        )
    model_state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    try:
        load_state_dict_into(model, model_state, path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    dev = torch.device(device)
    model.inference_dtype = PRECISIONS[precision]
    return Predictor(model.to(dev).eval(), config, path, dev)

"""Inference: ``load_predictor(checkpoint)`` -> :class:`Predictor` with ``.tasks`` and batched ``predict_proba``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from triptych.core.checkpoint import CheckpointError, load_state_dict_into, rebuilding
from triptych.core.errors import InputError
from triptych.core.training import load_module_state
from triptych.matic.featurize import featurize
from triptych.matic.model import MultiTaskAttentiveFP, Output
from triptych.matic.train import KIND, TrainConfig


@dataclass
class Predictor:
    """A trained multi-task Attentive FP ready for screening and interpretation."""

    model: MultiTaskAttentiveFP
    config: TrainConfig
    path: Path
    device: torch.device = torch.device("cpu")

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def expert_names(self) -> list[str]:
        return self.model.expert_names(self.tasks)

    @torch.no_grad()
    def forward_batches(self, smiles: Sequence[str], batch_size: int = 256) -> Iterator[tuple[list[int], Output]]:
        """Yield ``(indices of valid SMILES in this batch, model output)`` batch by batch."""
        self.model.eval()
        for start in range(0, len(smiles), batch_size):
            chunk = list(smiles[start:start + batch_size])
            graphs = featurize(chunk)
            valid = [i for i, g in enumerate(graphs) if g is not None]
            if not valid:
                continue
            batch = Batch.from_data_list([graphs[i] for i in valid]).to(self.device)
            yield [start + i for i in valid], self.model(batch)

    def predict_proba(self, smiles: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(n, n_tasks)`` probabilities; rows of NaN for SMILES that cannot be parsed."""
        out = np.full((len(smiles), len(self.tasks)), np.nan, dtype=np.float64)
        for idx, o in self.forward_batches(smiles, batch_size):
            out[idx] = torch.sigmoid(o.logits).cpu().numpy()
        return out


def load_predictor(checkpoint: str | Path, tasks: Sequence[str] | None = None, device: str = "cpu") -> Predictor:
    """Rebuild a predictor from a ``matic.predictor`` checkpoint (exported or training).

    ``tasks``, when given, must be the tasks the checkpoint was trained for (any order is
    an error too, since columns would be swapped silently).
    """
    path = Path(checkpoint)
    try:
        state_dict, hparams = load_module_state(path, KIND)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    try:
        with rebuilding(path):
            config = TrainConfig(**hparams["config"])
            model = config.build_model()
            model_state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    if tasks is not None and list(tasks) != list(config.tasks):
        raise InputError(f"checkpoint {path} was trained for tasks {config.tasks}, not {list(tasks)}; "
                         "use a checkpoint trained on these tasks or pass matching --tasks")
    try:
        load_state_dict_into(model, model_state, path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    dev = torch.device(device)
    return Predictor(model.to(dev).eval(), config, path, dev)

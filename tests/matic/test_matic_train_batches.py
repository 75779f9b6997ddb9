"""The training batches: featurised once, padded to atom buckets, and the loss and gradients unchanged."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from triptych.matic.featurize import featurize
from triptych.matic.train import (
    MaticModule,
    TrainConfig,
    collate_labelled,
    graph_loader,
    labelled_graphs,
    resolve_precision,
)


def _module() -> MaticModule:
    torch.manual_seed(0)
    config = TrainConfig(tasks=["a", "b"], hidden=16, dropout=0.0, precision="fp32")
    return MaticModule(vars(config)).train()


def test_padded_batch_gives_the_unpadded_loss_and_gradients(splits12):
    """A batch padded to a 64-atom bucket (one extra molecule, dropped) trains exactly like PyG's unpadded batch."""
    module = _module()
    items = labelled_graphs(splits12.train)
    padded = collate_labelled(items, bucket=64)
    assert padded.x.shape[0] % 64 == 0 and padded.edge_index.shape[1] % 128 == 0
    assert padded.num_graphs == len(items) and int(padded.batch.max()) == len(items)  # the padding graph
    ref = Batch.from_data_list(featurize(splits12.train.smiles))  # the old path: PyG's collate, no padding
    grads, losses = [], []
    for x, ei, ea, b, y in [
        (padded.x, padded.edge_index, padded.edge_attr, padded.batch, padded.y),
        (
            ref.x,
            ref.edge_index,
            ref.edge_attr,
            ref.batch,
            torch.tensor(splits12.train.labels, dtype=torch.float32),
        ),
    ]:
        module.zero_grad()
        logits = module.model(x, ei, ea, b).logits[: len(items)]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.nan_to_num(0.0))
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_loader_shuffles_reproducibly_and_keeps_labels(splits12):
    items = labelled_graphs(splits12.train)
    order = [torch.cat([b.y for b in graph_loader(items, 5, shuffle=True, seed=3)]) for _ in range(2)]
    torch.testing.assert_close(order[0], order[1], equal_nan=True)  # same seed, same epochs
    plain = torch.cat([b.y for b in graph_loader(items, 5)])
    np.testing.assert_array_equal(plain.numpy(), splits12.train.labels.astype(np.float32))
    module = _module()
    loss = module._loss(next(iter(graph_loader(items, 5))))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_precision_names():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("32-true") == "fp32"
    assert resolve_precision("bf16-mixed") == "bf16"
    assert resolve_precision("auto") in ("fp32", "bf16")
    from triptych.core.errors import InputError

    with pytest.raises(InputError, match="--precision"):
        resolve_precision("16-mixed")


def test_validation_sees_the_optimiser_updates(splits12):
    """After optimiser steps, an eval forward (cached stacked weights) equals a fresh model with the new weights."""
    module = _module()
    batch = collate_labelled(labelled_graphs(splits12.train))
    module.eval()
    with torch.no_grad():
        module(batch)  # builds the inference cache with the initial weights
    module.train()
    opt = module.configure_optimizers()
    for _ in range(2):
        opt.zero_grad()
        module._loss(batch).backward()
        opt.step()
    module.eval()
    fresh = _module().eval()
    fresh.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(batch), fresh(batch))

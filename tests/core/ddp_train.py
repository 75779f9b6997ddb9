"""Tiny training run used by test_core_training.py; run as a script so that Lightning's
``ddp`` strategy can launch its worker processes (it re-executes this file per rank)."""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from triptych.core.checkpoint import save_checkpoint
from triptych.core.seed import seed_everything
from triptych.core.training import TrainerFlags, make_trainer


class IndexedData(Dataset):
    """Samples carry their index, so each rank can record which shard it saw."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return i, self.x[i], self.y[i]


class DistributedUnionBatches(Sampler):
    """Single-process batches equal to the union of what 2 DDP ranks see at each step.

    Lightning gives each DDP rank a ``DistributedSampler(shuffle=True, seed=0)``: per epoch a
    permutation from ``seed + epoch``, rank r taking every second index from r. The mean
    loss over the union has the same gradient as DDP's average of the ranks' gradients.
    """

    def __init__(self, n: int, per_rank_batch: int, world: int = 2, seed: int = 0) -> None:
        self.n, self.b, self.world, self.seed, self.epoch = n, per_rank_batch, world, seed, -1

    def __iter__(self):
        self.epoch += 1  # Lightning does not call set_epoch on a batch_sampler; one pass = one epoch
        perm = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()
        shards = [perm[r :: self.world] for r in range(self.world)]
        for s in range(0, len(shards[0]), self.b):
            yield [i for shard in shards for i in shard[s : s + self.b]]

    def __len__(self) -> int:
        return -(-self.n // (self.world * self.b))


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"kind": "test.tiny"})
        self.net = torch.nn.Linear(4, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        self.seen += [[self.current_epoch, i] for i in idx.tolist()]
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main(out: Path, devices: int, batch_size: int) -> None:
    seed_everything(0)
    model = Tiny()
    flags = TrainerFlags(accelerator="cpu", devices=str(devices), strategy="ddp" if devices > 1 else "auto")
    trainer = make_trainer(flags, max_epochs=3, default_root_dir=out, monitor=None, enable_progress_bar=False)
    data = IndexedData()
    if devices > 1:  # Lightning shards (and shuffles) with a DistributedSampler itself
        loader = DataLoader(data, batch_size=batch_size)
    else:
        loader = DataLoader(data, batch_sampler=DistributedUnionBatches(len(data), batch_size // 2))
    trainer.fit(model, loader)
    (out / f"seen_rank{trainer.global_rank}.json").write_text(json.dumps(model.seen))
    if trainer.global_rank == 0:
        save_checkpoint(out / "final.safetensors", model.state_dict(), kind="test.tiny")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

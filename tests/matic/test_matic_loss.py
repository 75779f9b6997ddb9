"""The masked focal / BCE loss ignores missing labels and weights tasks."""

import math

import pytest
import torch

from triptych.matic.train import masked_focal_loss

NAN = float("nan")


def focal(p, y, alpha=0.5, gamma=2.0):
    pt = p if y == 1 else 1 - p
    a = alpha if y == 1 else 1 - alpha
    return -a * (1 - pt) ** gamma * math.log(pt)


def test_focal_matches_hand_computation_with_missing_labels():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [-3.0, 0.5]])
    targets = torch.tensor([[1.0, NAN], [0.0, 1.0], [NAN, 0.0]])
    w = torch.tensor([0.5, 0.5])
    p = torch.sigmoid(logits).tolist()
    task0 = (focal(p[0][0], 1) + focal(p[1][0], 0)) / 2
    task1 = (focal(p[1][1], 1) + focal(p[2][1], 0)) / 2
    got = masked_focal_loss(logits, targets, w).item()
    assert got == pytest.approx(0.5 * task0 + 0.5 * task1, rel=1e-5)


def test_missing_labels_do_not_change_loss_or_gradient():
    logits = torch.tensor([[0.3, -0.2], [5.0, 7.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [NAN, NAN]])
    loss = masked_focal_loss(logits, targets, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and torch.all(logits.grad[0] != 0)
    only = masked_focal_loss(logits[:1].detach(), targets[:1], torch.tensor([0.5, 0.5]))
    assert loss.item() == pytest.approx(only.item())


def test_bce_and_task_weights():
    logits = torch.tensor([[0.4, -1.2]])
    targets = torch.tensor([[1.0, 1.0]])
    bce = [-math.log(torch.sigmoid(torch.tensor(v)).item()) for v in (0.4, -1.2)]
    got = masked_focal_loss(logits, targets, torch.tensor([0.8, 0.2]), kind="bce").item()
    assert got == pytest.approx(0.8 * bce[0] + 0.2 * bce[1], rel=1e-5)
    # a task with no labels in the batch contributes nothing (no NaN)
    got = masked_focal_loss(logits, torch.tensor([[1.0, NAN]]), torch.tensor([0.5, 0.5])).item()
    assert math.isfinite(got) and got > 0

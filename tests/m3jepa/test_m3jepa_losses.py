import math

import pytest
import torch
import torch.nn.functional as F

from triptych.core.errors import InputError
from triptych.m3jepa.losses import (
    Temperature,
    alpha_mix,
    info_nce,
    latent_regression,
    load_balancing,
    positives_from_ids,
)


def test_info_nce_matches_the_definition_and_rewards_alignment():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.1
    want = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    torch.testing.assert_close(info_nce(a, b, 0.1), want)
    assert info_nce(a, 3 * a, 0.03) < 0.01 < info_nce(a, b, 0.03)
    # identity positives give the same as no positives
    torch.testing.assert_close(info_nce(a, b, 0.1, torch.eye(6, dtype=torch.bool)), want)


def test_duplicate_items_in_a_batch_are_positives():
    ids = torch.tensor([0, 1, 0, 2])
    pos = positives_from_ids(ids, torch.arange(4))
    assert pos[0, 2] and pos[2, 0] and not pos[0, 1]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.05
    target = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])
    want = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(info_nce(a, b, 0.05, pos), want)
    assert not torch.isclose(info_nce(a, b, 0.05, pos), info_nce(a, b, 0.05))


def test_temperature_fixed_or_learnable():
    fixed, learn = Temperature(0.03), Temperature(0.07, learnable=True)
    assert math.isclose(float(fixed()), 0.03, rel_tol=1e-6) and list(fixed.parameters()) == []
    a = torch.randn(4, 3)
    info_nce(a, a + 0.1, learn()).backward()
    assert learn.log_tau.grad is not None and learn.log_tau.grad != 0


def test_regression_and_alpha():
    p, t = torch.zeros(2, 3), torch.tensor([[0.5, 0, 0], [3.0, 0, 0]])
    assert math.isclose(float(latent_regression(p, t, "mse")), (0.25 + 9) / 6, rel_tol=1e-6)
    assert math.isclose(float(latent_regression(p, t)), (0.125 + 2.5) / 6, rel_tol=1e-6)  # smooth-L1, β=1
    with pytest.raises(InputError):
        latent_regression(p, t, "huber")
    assert float(alpha_mix(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == 3.5


def test_load_balancing_is_one_when_uniform_and_grows_with_collapse():
    e = 4
    uniform = load_balancing(torch.full((8, e), 1 / e), torch.arange(8).remainder(e).unsqueeze(1), e)
    assert math.isclose(float(uniform), 1.0, rel_tol=1e-6)
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(8, 1)
    collapsed = load_balancing(probs, torch.zeros(8, 1, dtype=torch.long), e)
    assert math.isclose(float(collapsed), 4 * 0.97, rel_tol=1e-5)

import math

import pytest
import torch
import torch.nn.functional as F

from triptych.core.errors import InputError
from triptych.m3jepa.losses import (
    M3JepaLoss,
    Temperature,
    alpha_mix,
    fused_info_nce,
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
    want = 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
    )
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


def test_m3jepa_loss_owns_tau_alpha_and_the_regression_kind():
    from triptych.m3jepa.losses import M3JepaLoss

    g = torch.Generator().manual_seed(0)
    q, k, pred, target = (torch.randn(6, 5, generator=g) for _ in range(4))
    ids = torch.tensor([0, 1, 2, 3, 3, 4])  # the 4th and 5th pairs share a query item: both positives
    loss = M3JepaLoss(alpha=0.3, temperature=0.2, learnable_temperature=True, regression="mse")
    got, parts = loss(q, k, ids, torch.arange(6), pred, target)
    pos = positives_from_ids(ids, torch.arange(6))
    want = 0.3 * info_nce(q, k, 0.2, pos) + 0.7 * torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(got, want)
    assert set(parts) == {"contrastive", "regression"} and [n for n, _ in loss.named_parameters()] == [
        "temperature.log_tau"
    ]
    clip_only, _ = loss(q, k, ids, torch.arange(6))  # no predictions: InfoNCE alone
    torch.testing.assert_close(clip_only, info_nce(q, k, 0.2, pos))


def _gathered_loss(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from triptych.m3jepa.losses import M3JepaLoss

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    ids = torch.arange(8)
    half = slice(4 * rank, 4 * rank + 4)
    local_q = q[half].clone().requires_grad_(True)
    value, _ = M3JepaLoss(temperature=0.1, learnable_temperature=False, gather=True)(
        local_q, k[half], ids[half], ids[half]
    )
    value.backward()
    torch.save({"loss": value.detach(), "grad": local_q.grad}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_infonce_on_two_ranks_is_the_full_batch_loss(tmp_path):
    """Each rank holds half the batch; with the gather, its loss (and its queries' gradients) is the full batch's."""
    import torch.multiprocessing as mp

    from triptych.m3jepa.losses import M3JepaLoss

    mp.spawn(_gathered_loss, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    q.requires_grad_(True)
    full, _ = M3JepaLoss(temperature=0.1, learnable_temperature=False)(q, k, torch.arange(8), torch.arange(8))
    full.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], full.detach())
        torch.testing.assert_close(got["grad"], q.grad[4 * rank : 4 * rank + 4])


def test_fused_info_nce_is_infonce_on_the_ranked_sum_of_both_directions():
    g = torch.Generator().manual_seed(0)
    q, k, rq, rk = (torch.randn(6, 4, generator=g) for _ in range(4))
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    # the ranking's fused score of (source a, target b): q_{a->b}·k_b + q_{b->a}·k_a (evaluate_tasks)
    fused = n(q) @ n(k).T + (n(rq) @ n(rk).T).T
    want = 0.5 * (
        F.cross_entropy(fused / 0.1, torch.arange(6)) + F.cross_entropy(fused.T / 0.1, torch.arange(6))
    )
    torch.testing.assert_close(fused_info_nce(q, k, rq, rk, 0.1), want)
    # the loss module mixes it in only with a weight and the reverse vectors given
    ids = torch.arange(6)
    plain = M3JepaLoss(temperature=0.1, learnable_temperature=False)
    mixed = M3JepaLoss(temperature=0.1, learnable_temperature=False, fused_weight=0.5)
    base, _ = plain(q, k, ids, ids, reverse=(rq, rk))
    torch.testing.assert_close(base, info_nce(q, k, 0.1))
    loss, logs = mixed(q, k, ids, ids, reverse=(rq, rk))
    torch.testing.assert_close(loss, 0.5 * info_nce(q, k, 0.1) + 0.5 * want)
    assert "fused" in logs and not torch.isclose(loss, base)
    with pytest.raises(InputError, match="fused_contrastive"):
        M3JepaLoss(fused_weight=1.5)

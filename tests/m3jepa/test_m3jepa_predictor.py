import copy

import pytest
import torch

from triptych.core.errors import InputError
from triptych.m3jepa.predictor import M3Predictor, MixtureOfExperts, PredictorConfig

DIMS = {"image": 20, "text": 12}


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, DIMS["image"], generator=g)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    return x, mask


def _pair(**kw):
    torch.manual_seed(0)
    kw.setdefault("dispatch", "sparse")
    sparse = M3Predictor(
        PredictorConfig(DIMS, hidden=16, contrastive_dim=8, experts=6, top_k=3, dropout=0.0, **kw)
    )
    dense = copy.deepcopy(sparse)
    dense.mixer.dispatch = "dense"
    return sparse, dense


@pytest.mark.parametrize("renormalize", [False, True])
def test_sparse_and_dense_dispatch_give_same_outputs_and_gradients(renormalize):
    sparse, dense = _pair(renormalize=renormalize)
    x, mask = _inputs()
    outs = []
    for model in (sparse, dense):
        model.train()
        out = model("image", "text", x, mask)
        target = model.project_target(
            "text",
            torch.randn(5, 3, 12, generator=torch.Generator().manual_seed(1)),
            torch.ones(5, 3, dtype=torch.bool),
        )
        ((out.contrastive @ target.T).logsumexp(1).sum() + (out.regression**2).sum()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].contrastive, outs[1].contrastive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0].regression, outs[1].regression, rtol=1e-5, atol=1e-6)
    n_grads = 0
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
            n_grads += 1
    assert n_grads > 10
    # the gate itself receives gradient (through the top-k weights)
    assert sparse.mixer.gate.weight.grad.abs().sum() > 0


def test_sparse_dispatch_computes_only_selected_experts():
    sparse, dense = _pair()
    auto, _ = _pair(dispatch="auto")  # on the CPU, auto is sparse
    x, mask = _inputs()
    seen = {"sparse": 0, "dense": 0, "auto": 0}
    for name, model in (("sparse", sparse), ("dense", dense), ("auto", auto)):
        for expert in model.mixer.experts:
            expert.register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, seen[name] + a[0].shape[0])
            )
        out = model("image", "text", x, mask)
    n_routed = 2 * int(mask.sum())  # both branches, valid tokens only
    assert seen["sparse"] == n_routed * 3  # k = 3
    assert seen["dense"] == n_routed * 6  # every one of E = 6
    assert seen["auto"] == seen["sparse"]
    usage = sparse.expert_usage(out.routings)
    assert usage.shape == (6,) and torch.isclose(usage.sum(), torch.tensor(1.0))


def test_padding_tokens_do_not_change_the_prediction():
    model, _ = _pair()
    model.eval()
    x, mask = _inputs()
    y = x.clone()
    y[~mask] = 100.0
    a, b = model("image", "text", x, mask), model("image", "text", y, mask)
    torch.testing.assert_close(a.contrastive, b.contrastive)
    # ... but real tokens do
    y[0, 0] += 1.0
    assert not torch.allclose(model("image", "text", y, mask).contrastive[0], a.contrastive[0])


def test_routing_topk_weights():
    moe = MixtureOfExperts(8, experts=5, top_k=2, dropout=0.0)
    r = moe.route(torch.randn(11, 8))
    assert r.index.shape == (11, 2) and (r.weight.sum(1) < 1).all()  # the reference does not renormalise
    torch.testing.assert_close(r.weight, r.probs.topk(2, dim=-1).values)
    moe.renormalize = True
    torch.testing.assert_close(moe.route(torch.randn(11, 8)).weight.sum(1), torch.ones(11))


def test_mlp_mixer_and_shapes():
    model = M3Predictor(PredictorConfig(DIMS, hidden=16, contrastive_dim=8, mixer="mlp"))
    x, mask = _inputs()
    out = model("image", "text", x, mask)
    assert out.contrastive.shape == (5, 8) and out.regression.shape == (5, 12) and out.routings == []
    t = model("text", "image", torch.randn(5, 3, 12), torch.ones(5, 3, dtype=torch.bool))
    assert t.regression.shape == (5, 20)


def test_bad_shapes_and_configs_are_clear_errors():
    model, _ = _pair()
    with pytest.raises(InputError, match="expects B×L×20"):
        model("image", "text", torch.randn(2, 3, 21), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="top_k"):
        PredictorConfig(DIMS, experts=3, top_k=4)
    with pytest.raises(InputError, match="audio"):
        PredictorConfig(DIMS, directions=[("audio", "text")])


def test_grid_pooling_of_image_tokens():
    from triptych.m3jepa.predictor import pool_grid

    x = torch.arange(2 * 16 * 3, dtype=torch.float).reshape(2, 16, 3)  # a 4×4 grid
    pooled, mask = pool_grid(x, torch.ones(2, 16, dtype=torch.bool), 2)
    assert pooled.shape == (2, 4, 3) and mask.all()
    torch.testing.assert_close(pooled[0, 0], x[0, [0, 1, 4, 5]].mean(0))  # top-left 2×2 window
    model = M3Predictor(
        PredictorConfig(
            DIMS, hidden=16, contrastive_dim=8, experts=4, top_k=2, dropout=0.0, grid_pool={"image": 2}
        )
    )
    seen = []
    model.input_projection["image"].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    model("image", "text", torch.randn(3, 16, 20), torch.ones(3, 16, dtype=torch.bool))
    assert seen == [3 * 4]
    with pytest.raises(InputError, match="square grid"):
        pool_grid(torch.randn(1, 5, 3), torch.ones(1, 5, dtype=torch.bool), 2)


def test_per_task_gates_route_each_direction_and_branch_by_its_own_gate():
    torch.manual_seed(0)
    cfg = PredictorConfig(
        DIMS, hidden=16, contrastive_dim=8, experts=6, top_k=3, dropout=0.0, gates="per_task"
    )
    model = M3Predictor(cfg)
    x, mask = _inputs()
    out = model("image", "text", x, mask)
    (out.contrastive.sum() + out.regression.sum()).backward()
    # this direction's two gates learn, the other direction's and the shared one get no gradient
    for key, gate in model.task_gates.items():
        assert (gate.weight.grad is not None) == key.startswith("image_to_text"), key
    assert model.mixer.gate.weight.grad is None
    # each branch's routing is its own gate's top-k of the branch input
    n = int(mask.sum())
    h = out.routings[0].probs
    assert h.shape == (n, 6)
    with torch.no_grad():
        model.task_gates["image_to_text__regression"].weight.add_(torch.randn(6, 16))
    again = model("image", "text", x, mask)
    torch.testing.assert_close(again.routings[0].probs, out.routings[0].probs)  # contrastive gate untouched
    assert not torch.allclose(again.routings[1].probs, out.routings[1].probs)
    with pytest.raises(InputError, match="gates='bogus'"):
        PredictorConfig(DIMS, gates="bogus")


@pytest.mark.parametrize("gates", ["shared", "per_task"])
def test_contrastive_only_forward_equals_the_full_one(gates):
    from triptych.m3jepa.features import EncodedBatch

    torch.manual_seed(0)
    model = M3Predictor(PredictorConfig(DIMS, hidden=16, contrastive_dim=8, experts=6, top_k=3, gates=gates))
    model.eval()
    x, mask = _inputs()
    full = model("image", "text", x, mask)
    query = model.embed_query("image", "text", EncodedBatch(x, mask, x.mean(1)))
    torch.testing.assert_close(query, full.contrastive)
    assert model("image", "text", x, mask, regression=False).regression is None

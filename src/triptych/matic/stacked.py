"""K Attentive FP encoders on the same molecules, computed as one batched (stacked) network.

The paper's PLE runs five Attentive FP networks (three experts, two gates) on every
batch. Run one by one through PyG, each layer is a handful of small matrix products and
scatter operations per network, and on a CPU the per-operation overhead dominates. Here
the K networks' weights are stacked along a leading axis and every step is one batched
operation over node states ``x [K, N, H]``:

    x^0 = LeakyReLU(W_in x_atoms + b)                                          (atom embedding)
    GATE:  a_ij = softmax_j(LeakyReLU(u . LeakyReLU(W_1 [x_j ; e_ij]) + v . x_i))
           h_i = ELU(sum_j a_ij W_2 x_j + b);          x = ReLU(GRU(h, x))
    GAT:   a_ij = softmax_j(LeakyReLU(u . W x_j + v . W x_i))
           h_i = ELU(sum_j a_ij W x_j + b);            x = ReLU(GRU(h, x))      (layers - 1 times)
    readout: s = ReLU(sum_i x_i);  a_i = softmax_i(LeakyReLU(u . W x_i + v . W s))
           s = ReLU(GRU(ELU(sum_i a_i W x_i + b), s))                           (timesteps times)
    y = W_out s + b

Two rewritings cut the number of operations without changing the maths: the attention
dot products ``u . W x`` are folded into the weight (one more output column,
``x (W^T u)``), so every node-side product of a layer is one ``bmm``; and the GRU's
gates use fused elementwise ops (``addcmul``, ``lerp``).

The parameters stay those of the PyG ``AttentiveFP`` modules (same names, same state
dict): :func:`stack_weights` stacks them (differentiably, so training reaches them), and
inference caches the stacked weights once (see ``model.py``). ``tests/matic`` checks the
result against PyG's own forward. Nothing here imports PyG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = Mapping[str, Tensor]  # one network's parameters by PyG name ("gate_conv.lin1.weight", ...)
StackedWeights = dict[str, Tensor | list[Tensor]]


def stack_weights(nets: Sequence[Params], layers: int) -> StackedWeights:
    """Stack K networks' parameters (PyG ``AttentiveFP`` names) into the batched layout of the forward.

    Weights are stored transposed, ``[K, in, out]``, so a layer is ``bmm(x, W)``.
    """

    def s(name: str) -> Tensor:
        return torch.stack([p[name] for p in nets])

    def t(name: str) -> Tensor:  # [K, out, in] -> [K, in, out]
        return s(name).transpose(1, 2)

    def vec(name: str) -> Tensor:  # attention vectors [1, (1,) H] -> [K, H, 1]
        return torch.stack([p[name].reshape(-1, 1) for p in nets])

    gate_w1 = s("gate_conv.lin1.weight")  # [K, H, H + edge_dim]
    hidden = gate_w1.shape[1]
    w: StackedWeights = {
        "in_w": s("lin1.weight"),  # [K, H, atom_dim]
        "in_b": s("lin1.bias").unsqueeze(1),
        # node side of the GATE layer in one product: [W_1x^T | v | W_2^T] -> [K, H, 2H + 1]
        "gate_node": torch.cat(
            [gate_w1[:, :, :hidden].transpose(1, 2), vec("gate_conv.att_r"), t("gate_conv.lin2.weight")], 2
        ),
        "gate_edge": gate_w1[:, :, hidden:],  # [K, H, edge_dim]
        "gate_att": vec("gate_conv.att_l"),
        "gate_b": s("gate_conv.bias").unsqueeze(1),
        "lin2_w": [p["lin2.weight"] for p in nets],  # output sizes differ (experts vs gates)
        "lin2_b": [p["lin2.bias"] for p in nets],
    }
    grus = ["gru"] + [f"atom_grus.{i}" for i in range(layers - 1)] + ["mol_gru"]
    for g in grus:
        w[f"{g}.ih"], w[f"{g}.hh"] = t(f"{g}.weight_ih"), t(f"{g}.weight_hh")
        w[f"{g}.bih"], w[f"{g}.bhh"] = s(f"{g}.bias_ih").unsqueeze(1), s(f"{g}.bias_hh").unsqueeze(1)
    for c in [f"atom_convs.{i}" for i in range(layers - 1)] + ["mol_conv"]:
        lin = t(f"{c}.lin.weight")  # [K, H, H]
        # [W^T | W^T u_src | W^T u_dst]: the attention terms come out of the same product
        w[c] = torch.cat([lin, lin @ vec(f"{c}.att_src"), lin @ vec(f"{c}.att_dst")], 2)
        w[f"{c}.b"] = s(f"{c}.bias").unsqueeze(1)
    return w


def cast_weights(w: StackedWeights, dtype: torch.dtype) -> StackedWeights:
    """Stacked weights in ``dtype``, contiguous (one copy each; differentiable, so fp32 master weights get the gradients)."""
    return {
        k: [t.to(dtype) for t in v]
        if isinstance(v, list)
        else v.to(dtype, memory_format=torch.contiguous_format)
        for k, v in w.items()
    }


def _attention_layer(hidden: int, edge_dim: int | None = None) -> nn.Module:
    """The parameters of PyG's ``GATConv`` (``edge_dim=None``) or ``GATEConv`` as AttentiveFP builds them."""
    layer = nn.Module()
    if edge_dim is None:  # GATConv, one head
        layer.lin = nn.Linear(hidden, hidden, bias=False)
        layer.att_src, layer.att_dst = (nn.Parameter(torch.zeros(1, 1, hidden)) for _ in range(2))
    else:  # GATEConv
        layer.att_l, layer.att_r = (nn.Parameter(torch.zeros(1, hidden)) for _ in range(2))
        layer.lin1 = nn.Linear(hidden + edge_dim, hidden, bias=False)
        layer.lin2 = nn.Linear(hidden, hidden, bias=False)
    layer.bias = nn.Parameter(torch.zeros(hidden))
    return layer


class AttentiveFPParams(nn.Module):
    """PyG ``AttentiveFP``'s parameters (same names, shapes and state dict) without importing PyG.

    For inference through :func:`stacked_attentive_fp` only (it has no forward of its
    own): screening then starts without PyG's import, a few seconds per process.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        edge_dim: int,
        num_layers: int,
        num_timesteps: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        h = hidden_channels
        self.num_timesteps, self.dropout = num_timesteps, dropout
        self.lin1 = nn.Linear(in_channels, h)
        self.gate_conv = _attention_layer(h, edge_dim)
        self.gru = nn.GRUCell(h, h)
        self.atom_convs = nn.ModuleList(_attention_layer(h) for _ in range(num_layers - 1))
        self.atom_grus = nn.ModuleList(nn.GRUCell(h, h) for _ in range(num_layers - 1))
        self.mol_conv = _attention_layer(h)
        self.mol_gru = nn.GRUCell(h, h)
        self.lin2 = nn.Linear(h, out_channels)


def segment_softmax(logits: Tensor, index: Tensor, size: int) -> Tensor:
    """Softmax of ``logits [K, E]`` within the groups given by ``index [E]`` (PyG's ``softmax``, dim 1)."""
    k = logits.shape[0]
    top = logits.new_full((k, size), float("-inf"))
    top = top.scatter_reduce(1, index.expand(k, -1), logits.detach(), "amax")
    e = (logits - top.index_select(1, index)).exp()
    total = e.new_zeros(k, size).index_add_(1, index, e)
    return e / (total.index_select(1, index) + 1e-16)


def _gru(inp: Tensor, h: Tensor, w: StackedWeights, name: str) -> Tensor:
    """K ``GRUCell`` steps at once (gate order r, z, n as in PyTorch): ``n + z (h - n)``."""
    gi = torch.baddbmm(w[f"{name}.bih"], inp, w[f"{name}.ih"])
    gh = torch.baddbmm(w[f"{name}.bhh"], h, w[f"{name}.hh"])
    hid = h.shape[-1]
    # split, not slicing: in training, a slice's backward fills a zero tensor of the whole [K, N, 3H]
    # per slice and adds them up; split's backward is one concatenation
    gi_rz, gi_n = gi.split([2 * hid, hid], -1)
    gh_rz, gh_n = gh.split([2 * hid, hid], -1)
    r, z = torch.sigmoid(gi_rz + gh_rz).split([hid, hid], -1)
    n = torch.tanh(torch.addcmul(gi_n, r, gh_n))
    return torch.lerp(n, h, z)


def _scatter_sum(values: Tensor, index: Tensor, size: int, bias: Tensor | None = None) -> Tensor:
    """Sum ``values [K, E, H]`` into ``[K, size, H]`` by ``index [E]`` (starting from ``bias [K, 1, H]`` if given)."""
    k, _, h = values.shape
    out = values.new_zeros(k, size, h) if bias is None else bias.expand(k, size, h).contiguous()
    return out.index_add_(1, index, values)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """``values[:, index]`` for ``values [K, N, ...]``: ``index_select``, whose backward is one ``index_add``.

    (Advanced indexing's backward is an accumulating ``index_put`` into zeros, several times slower on CPU.)
    """
    return values.index_select(1, index)


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout (keep with probability ``1 - p``, scale by ``1 / (1 - p)``), as ``F.dropout``.

    The mask comes from ``torch.rand``, which on CPU is several times faster than the
    ``bernoulli_`` that ``F.dropout`` draws; same distribution, other random numbers.
    """
    if not training or p == 0.0:
        return x
    drop = torch.rand(x.shape, dtype=torch.float32, device=x.device) < p
    # the scale as a Python number: exact in the product's fp32 arithmetic even when x is bf16
    return x.masked_fill(drop, 0.0) * (1.0 / (1.0 - p))


def stacked_forward(
    w: StackedWeights,
    x: Tensor,
    edge_index: Tensor,
    edge_attr: Tensor,
    batch: Tensor,
    num_graphs: int,
    layers: int,
    timesteps: int,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[list[Tensor], Tensor]:
    """The K networks of ``w`` (:func:`stack_weights`) on one batch: outputs ``[B, out_k]`` and attention ``[N, K]``."""
    p = dropout
    n, b = x.shape[0], num_graphs
    k, hdim = w["in_w"].shape[:2]
    src, dst = edge_index[0], edge_index[1]

    # Atom embedding, shared input: one [N, atom_dim] x [atom_dim, K*H] product.
    h0 = (x @ w["in_w"].reshape(k * hdim, -1).t()).view(n, k, hdim).transpose(0, 1)
    h0 = F.leaky_relu(h0 + w["in_b"])

    # GATEConv: the bond features enter the source-side attention term.
    node = torch.bmm(h0, w["gate_node"])  # [K, N, 2H + 1]: W_1x x | v . x | W_2 x
    node_x, node_v, node_w2 = node.split([hdim, 1, hdim], -1)
    ej = (edge_attr @ w["gate_edge"].reshape(k * hdim, -1).t()).view(-1, k, hdim).transpose(0, 1)
    xj = F.leaky_relu(_gather(node_x, src) + ej)
    alpha = torch.bmm(xj, w["gate_att"]).squeeze(-1) + _gather(node_v, dst).squeeze(-1)
    alpha = _dropout(segment_softmax(F.leaky_relu(alpha), dst, n), p, training)
    h = _scatter_sum(_gather(node_w2, src) * alpha.unsqueeze(-1), dst, n, w["gate_b"])
    h = _dropout(F.elu(h), p, training)
    h_atoms = _gru(h, h0, w, "gru").relu()

    # Atom GAT layers.
    for layer in range(layers - 1):
        c = f"atom_convs.{layer}"
        xs = torch.bmm(h_atoms, w[c])  # [K, N, H + 2]: W x | u_src . W x | u_dst . W x
        wx, a_src, a_dst = xs.split([hdim, 1, 1], -1)
        a = _gather(a_src, src).squeeze(-1) + _gather(a_dst, dst).squeeze(-1)
        alpha = _dropout(segment_softmax(F.leaky_relu(a, 0.01), dst, n), p, training)
        h = _scatter_sum(_gather(wx, src) * alpha.unsqueeze(-1), dst, n, w[f"{c}.b"])
        h = _dropout(F.elu(h), p, training)
        h_atoms = _gru(h, h_atoms, w, f"atom_grus.{layer}").relu()

    # Molecule readout through the virtual super node (atom-side products do not change over timesteps).
    mol = _scatter_sum(h_atoms, batch, b).relu()
    wx, a_src, _ = torch.bmm(h_atoms, w["mol_conv"]).split([hdim, 1, 1], -1)
    att_dst = w["mol_conv"][:, :, hdim + 1 :]
    attention = h_atoms.new_zeros(k, n)
    for _ in range(timesteps):
        a = a_src.squeeze(-1) + _gather(torch.bmm(mol, att_dst), batch).squeeze(-1)
        attention = _dropout(segment_softmax(F.leaky_relu(a, 0.01), batch, b), p, training)
        h = _scatter_sum(wx * attention.unsqueeze(-1), batch, b, w["mol_conv.b"])
        h = _dropout(F.elu(h), p, training)
        mol = _gru(h, mol, w, "mol_gru").relu()
    mol = _dropout(mol, p, training)
    outs = [F.linear(mol[i], wi, bi) for i, (wi, bi) in enumerate(zip(w["lin2_w"], w["lin2_b"], strict=True))]
    return outs, attention.detach().t()


def stacked_attentive_fp(
    nets: Sequence[torch.nn.Module],
    x: Tensor,
    edge_index: Tensor,
    edge_attr: Tensor,
    batch: Tensor,
    num_graphs: int | None = None,
    weights: StackedWeights | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Run PyG ``AttentiveFP`` ``nets`` (same hidden size, layers and timesteps) on one batch of molecules.

    Returns each network's output ``[B, out_k]`` and the readout attention of the last
    timestep, ``[N, K]`` (the super node's softmax over each molecule's atoms). ``weights``:
    the nets' :func:`stack_weights`, when already stacked (inference caches them).
    """
    ref = nets[0]
    layers = len(ref.atom_convs) + 1
    if weights is None:
        weights = stack_weights([dict(m.named_parameters()) for m in nets], layers)
    b = int(batch.max()) + 1 if num_graphs is None else num_graphs
    return stacked_forward(
        weights, x, edge_index, edge_attr, batch, b, layers, ref.num_timesteps, ref.dropout, ref.training
    )

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

The parameters stay those of the PyG ``AttentiveFP`` modules (same state dict); they are
stacked on every call, so gradients reach them unchanged. ``tests/matic`` checks the
result against PyG's own forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.models import AttentiveFP
from torch_geometric.utils import softmax


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(tensors))


def _bmm_t(x: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """``x [K, N, in] @ W_k^T`` for each network's ``W_k [out, in]`` -> ``[K, N, out]``."""
    return torch.bmm(x, _stack(weights).transpose(1, 2))


def _gru(inp: Tensor, h: Tensor, cells: Sequence[torch.nn.GRUCell]) -> Tensor:
    """K ``GRUCell`` steps at once (gate order r, z, n as in PyTorch)."""
    gi = torch.baddbmm(
        _stack([c.bias_ih for c in cells]).unsqueeze(1),
        inp,
        _stack([c.weight_ih for c in cells]).transpose(1, 2),
    )
    gh = torch.baddbmm(
        _stack([c.bias_hh for c in cells]).unsqueeze(1),
        h,
        _stack([c.weight_hh for c in cells]).transpose(1, 2),
    )
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


def _scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum ``values [K, E, H]`` into ``[K, size, H]`` by ``index [E]``."""
    return values.new_zeros(values.shape[0], size, values.shape[2]).index_add_(1, index, values)


def _vec(params: Sequence[Tensor]) -> Tensor:
    """Per-network attention vectors of any shape ``[1, (1,) H]`` -> ``[K, 1, H]``."""
    return _stack([p.reshape(1, -1) for p in params])


def stacked_attentive_fp(
    nets: Sequence[AttentiveFP],
    x: Tensor,
    edge_index: Tensor,
    edge_attr: Tensor,
    batch: Tensor,
    num_graphs: int | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Run ``nets`` (same hidden size, layers and timesteps) on one batch of molecules.

    Returns each network's output ``[B, out_k]`` and the readout attention of the last
    timestep, ``[N, K]`` (the super node's softmax over each molecule's atoms).
    """
    ref = nets[0]
    training, p = ref.training, ref.dropout
    n, k = x.shape[0], len(nets)
    b = int(batch.max()) + 1 if num_graphs is None else num_graphs
    src, dst = edge_index[0], edge_index[1]

    # Atom embedding, shared input: one [N, 39] x [39, K*H] product.
    w_in = _stack([m.lin1.weight for m in nets])  # [K, H, 39]
    hdim = w_in.shape[1]
    h0 = (x @ w_in.reshape(k * hdim, -1).t()).view(n, k, hdim).transpose(0, 1)
    h0 = F.leaky_relu(h0 + _stack([m.lin1.bias for m in nets]).unsqueeze(1))

    # GATEConv: the bond features enter the source-side attention term.
    g = [m.gate_conv for m in nets]
    w1 = _stack([c.lin1.weight for c in g])  # [K, H, H + edge_dim]
    xj = torch.bmm(h0, w1[:, :, :hdim].transpose(1, 2))[:, src]
    ej = (edge_attr @ w1[:, :, hdim:].reshape(k * hdim, -1).t()).view(-1, k, hdim).transpose(0, 1)
    xj = F.leaky_relu(xj + ej)
    alpha = (xj * _vec([c.att_l for c in g])).sum(-1) + (h0 * _vec([c.att_r for c in g])).sum(-1)[:, dst]
    alpha = F.dropout(softmax(F.leaky_relu(alpha), dst, num_nodes=n, dim=1), p, training)
    msg = _bmm_t(h0, [c.lin2.weight for c in g])[:, src] * alpha.unsqueeze(-1)
    h = _scatter_sum(msg, dst, n) + _stack([c.bias for c in g]).unsqueeze(1)
    h = F.dropout(F.elu(h), p, training)
    h_atoms = _gru(h, h0, [m.gru for m in nets]).relu()

    # Atom GAT layers.
    for layer in range(len(ref.atom_convs)):
        convs = [m.atom_convs[layer] for m in nets]
        xs = _bmm_t(h_atoms, [c.lin.weight for c in convs])
        a_src = (xs * _vec([c.att_src for c in convs])).sum(-1)
        a_dst = (xs * _vec([c.att_dst for c in convs])).sum(-1)
        alpha = softmax(F.leaky_relu(a_src[:, src] + a_dst[:, dst], 0.01), dst, num_nodes=n, dim=1)
        alpha = F.dropout(alpha, p, training)
        h = _scatter_sum(xs[:, src] * alpha.unsqueeze(-1), dst, n) + _stack(
            [c.bias for c in convs]
        ).unsqueeze(1)
        h = F.dropout(F.elu(h), p, training)
        h_atoms = _gru(h, h_atoms, [m.atom_grus[layer] for m in nets]).relu()

    # Molecule readout through the virtual super node.
    mol = _scatter_sum(h_atoms, batch, b).relu()
    convs = [m.mol_conv for m in nets]
    attention = h_atoms.new_zeros(k, n)
    for _ in range(ref.num_timesteps):
        xs = _bmm_t(h_atoms, [c.lin.weight for c in convs])
        xd = _bmm_t(mol, [c.lin.weight for c in convs])
        a = (xs * _vec([c.att_src for c in convs])).sum(-1) + (xd * _vec([c.att_dst for c in convs])).sum(-1)[
            :, batch
        ]
        attention = F.dropout(softmax(F.leaky_relu(a, 0.01), batch, num_nodes=b, dim=1), p, training)
        h = _scatter_sum(xs * attention.unsqueeze(-1), batch, b) + _stack([c.bias for c in convs]).unsqueeze(
            1
        )
        h = F.dropout(F.elu(h), p, training)
        mol = _gru(h, mol, [m.mol_gru for m in nets]).relu()
    mol = F.dropout(mol, p, training)
    outs = [m.lin2(mol[i]) for i, m in enumerate(nets)]
    return outs, attention.detach().t()

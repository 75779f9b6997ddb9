"""Multi-task Attentive FP predictors: PLE/CGC (MATIC), MMoE and single-task, on PyG's ``AttentiveFP``.

Every expert is a PyG ``AttentiveFP`` encoder (hidden 150, 3 layers, T = 1, dropout 0.1)
whose output is a 150-d molecule embedding. One CGC level (Tang et al. 2020):

    e_t = sum_k g_{t,k}(G) * E_k(G),  k over task t's private experts and the shared ones   (CGC mix)
    g_t = softmax(Gate_t(G))                                                                   (gate)
    logit_t = Tower_t(e_t),  Tower: 150 -> 32 -> 1                                             (tower)

``gate="full"`` makes each gate an Attentive FP of its own (the paper's choice);
``gate="light"`` a linear layer on the concatenated expert embeddings. MMoE is the same
with only shared experts; single-task uses one private expert per task and no gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from triptych.matic.featurize import ATOM_DIM, BOND_DIM
from triptych.matic.stacked import (
    AttentiveFPParams,
    StackedWeights,
    cast_weights,
    stack_weights,
    stacked_attentive_fp,
)

KIND = "matic.predictor"  # checkpoint kind of a trained predictor
ARCHS = ("ple", "mmoe", "single")
GATES = ("full", "light")


class Expert(nn.Module):
    """An Attentive FP encoder that also keeps its readout atom attention.

    The attention is the softmax of the virtual super node over a molecule's atoms in
    the last readout step (PyG's ``mol_conv``), caught with a PyG edge-update hook.
    ``pyg=False`` holds the same parameters without PyG (:class:`AttentiveFPParams`), for
    the stacked pass only.
    """

    def __init__(
        self,
        out_channels: int,
        hidden: int = 150,
        layers: int = 3,
        timesteps: int = 1,
        dropout: float = 0.1,
        pyg: bool = True,
    ) -> None:
        super().__init__()
        self.attention: Tensor | None = None  # [atoms] after each forward
        if not pyg:
            self.net = AttentiveFPParams(ATOM_DIM, hidden, out_channels, BOND_DIM, layers, timesteps, dropout)
            return
        from torch_geometric.nn.models import AttentiveFP  # only here: PyG's import costs seconds

        self.net = AttentiveFP(ATOM_DIM, hidden, out_channels, BOND_DIM, layers, timesteps, dropout)
        self.net.mol_conv.register_edge_update_forward_hook(self._keep_attention)

    def _keep_attention(self, module: nn.Module, inputs: tuple, alpha: Tensor) -> None:
        self.attention = alpha.detach().mean(dim=-1)  # [atoms, heads] -> [atoms]

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor) -> Tensor:
        """Atoms ``x [N, 39]``, bonds ``edge_attr [E, 10]`` -> ``[B, out_channels]``."""
        return self.net(x, edge_index, edge_attr, batch)


def make_towers(n_tasks: int, hidden: int, tower_hidden: int, dropout: float) -> nn.ModuleList:
    """Per-task towers ``hidden -> tower_hidden -> 1`` (ReLU, dropout), as in the reference."""
    return nn.ModuleList(
        nn.Sequential(
            nn.Linear(hidden, tower_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(tower_hidden, 1)
        )
        for _ in range(n_tasks)
    )


def cgc_mix(
    emb: Tensor, gate_experts: list[list[int]], gate_logits: Callable[[int, Tensor], Tensor | None]
) -> tuple[list[Tensor], Tensor]:
    """The CGC mix ``e_t = sum_k softmax(gate_t)_k E_k`` over task t's experts ``gate_experts[t]``.

    ``emb [B, K, H]``; ``gate_logits(t, e_t [B, k, H])`` gives ``[B, k]`` logits, or ``None``
    for no gate (weights of one). Returns per-task gate weights and ``[B, T, H]``.
    """
    gates, mixed = [], []
    for t, members in enumerate(gate_experts):
        e_t = emb[:, members]  # [B, k, H]
        logits = gate_logits(t, e_t)
        g = torch.ones(e_t.shape[:2], device=e_t.device) if logits is None else torch.softmax(logits, dim=-1)
        gates.append(g)
        mixed.append((g.unsqueeze(-1) * e_t).sum(dim=1))
    return gates, torch.stack(mixed, dim=1)


@dataclass
class Output:
    """What a forward pass exposes for training and interpretation."""

    logits: Tensor  # [B, T]
    gates: list[Tensor]  # per task [B, n_experts_t] softmax weights (ones for single-task)
    gate_experts: list[list[int]]  # per task: indices into the expert list, in gate order
    expert_embeddings: Tensor  # [B, K, H] each expert's molecule embedding
    task_embeddings: Tensor  # [B, T, H] gated mixture fed to each tower
    attention: Tensor  # [N atoms, K] readout attention per expert


class MultiTaskAttentiveFP(nn.Module):
    """PLE/CGC, MMoE or single-task Attentive FP for ``n_tasks`` binary tasks (see module docstring)."""

    def __init__(
        self,
        n_tasks: int,
        arch: str = "ple",
        gate: str = "full",
        n_shared: int | None = None,
        n_private: int = 1,
        hidden: int = 150,
        layers: int = 3,
        timesteps: int = 1,
        dropout: float = 0.1,
        tower_hidden: int = 32,
        pyg: bool = True,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch {arch!r} not in {ARCHS}")
        if gate not in GATES:
            raise ValueError(f"gate {gate!r} not in {GATES}")
        if n_shared is None:
            n_shared = 3 if arch == "mmoe" else 1  # the reference's MMoE has three shared experts
        if arch == "mmoe":
            n_private = 0
        if arch == "single":
            n_shared, n_private = 0, 1
        if n_shared + n_private < 1:
            raise ValueError("need at least one expert per task")
        self.arch, self.gate_kind, self.n_tasks = arch, gate, n_tasks
        self.n_shared, self.n_private = n_shared, n_private
        n_experts = n_shared + n_private * n_tasks
        self.experts = nn.ModuleList(
            Expert(hidden, hidden, layers, timesteps, dropout, pyg) for _ in range(n_experts)
        )
        shared = list(range(n_shared))
        # Task t's gate ranks its private experts first, then the shared ones.
        self.gate_experts = [
            [n_shared + t * n_private + k for k in range(n_private)] + shared for t in range(n_tasks)
        ]
        self.gates = nn.ModuleList()
        if arch != "single":
            for members in self.gate_experts:
                k = len(members)
                self.gates.append(
                    Expert(k, hidden, layers, timesteps, dropout, pyg)
                    if gate == "full"
                    else nn.Linear(k * hidden, k)
                )
        self.pyg = pyg  # False: no PyG modules, so only the stacked pass can run
        self.stacked = (
            True  # batched pass over all Attentive FPs (same maths and weights; much faster on CPU)
        )
        # The dtype of the stacked pass (bfloat16 uses the CPU's AMX/AVX-512 BF16 units), for inference and
        # for training; training keeps fp32 master weights (the bf16 copies are cast from them every step).
        self.inference_dtype = torch.float32
        self.train_dtype = torch.float32
        self._cache: tuple[tuple, StackedWeights] | None = None
        self.towers = make_towers(n_tasks, hidden, tower_hidden, dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor) -> Output:
        """Atoms ``x [N, 39]``, ``edge_index [2, E]``, bonds ``edge_attr [E, 10]``, graph ids ``batch [N]`` -> :class:`Output`."""
        args = (x, edge_index, edge_attr, batch)
        full = self.gate_kind == "full" and len(self.gates) > 0
        if self.stacked or not self.pyg:  # every Attentive FP (experts, then full gates) in one batched pass
            nets = [e.net for e in self.experts] + ([g.net for g in self.gates] if full else [])
            w, dtype = self._inference_weights(nets), self.inference_dtype
            if w is None:  # autograd: stacked anew every step, so that the gradients reach the parameters
                layers = len(nets[0].atom_convs) + 1
                w = cast_weights(
                    stack_weights([dict(m.named_parameters()) for m in nets], layers), self.train_dtype
                )
                dtype = self.train_dtype
            outs, att = stacked_attentive_fp(
                nets, x.to(dtype), edge_index, edge_attr.to(dtype), batch, weights=w
            )
            outs, att = [o.float() for o in outs], att.float()
            expert_out, gate_logits = outs[: len(self.experts)], outs[len(self.experts) :]
            attention = att[:, : len(self.experts)]
        else:  # PyG's AttentiveFP network by network (the reference the stacked pass is tested against)
            expert_out = [e(*args) for e in self.experts]
            gate_logits = [g(*args) for g in self.gates] if full else []
            attention = torch.stack([e.attention for e in self.experts], dim=1)
        emb = torch.stack(expert_out, dim=1)  # [B, K, H]

        def gate(t: int, e_t: Tensor) -> Tensor | None:
            if not self.gates:
                return None
            return gate_logits[t] if full else self.gates[t](e_t.flatten(1))

        gates, task_emb = cgc_mix(emb, self.gate_experts, gate)
        logits = torch.cat([tower(task_emb[:, t]) for t, tower in enumerate(self.towers)], dim=1)
        return Output(logits, gates, [list(m) for m in self.gate_experts], emb, task_emb, attention)

    def _inference_weights(self, nets: list[nn.Module]) -> StackedWeights | None:
        """Without autograd, the stacked weights, built once and reused while the parameters stay unchanged.

        Stacking copies every weight (about 3 M numbers for the paper's PLE), which is
        a few percent of a small batch's forward; in training it must run every step.
        """
        if self.training or torch.is_grad_enabled():
            return None
        params = list(self.parameters())
        key = (self.inference_dtype, *((q.data_ptr(), q._version) for q in params))
        if self._cache is None or self._cache[0] != key:
            layers = len(nets[0].atom_convs) + 1
            w = stack_weights([dict(m.named_parameters()) for m in nets], layers)
            self._cache = (key, cast_weights(w, self.inference_dtype))
        return self._cache[1]

    def expert_names(self, tasks: list[str]) -> list[str]:
        """Human names of the experts: ``shared``/``shared-k`` or ``<task>-private``/``<task>-private-k``."""
        names = [f"shared-{k}" if self.n_shared > 1 else "shared" for k in range(self.n_shared)]
        for t in range(self.n_tasks):
            names += [
                f"{tasks[t]}-private" + (f"-{k}" if self.n_private > 1 else "") for k in range(self.n_private)
            ]
        return names


@dataclass
class ModelConfig:
    """What rebuilds a predictor's network (no training settings, so inference never imports training)."""

    tasks: list[str]
    arch: str = "ple"
    gate: str = "full"
    n_shared: int | None = None
    n_private: int = 1
    hidden: int = 150
    layers: int = 3
    timesteps: int = 1
    dropout: float = 0.1

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModelConfig:
        """The model part of a saved config (a checkpoint's config also holds the training settings)."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def build_model(self, pyg: bool = True) -> MultiTaskAttentiveFP:
        """The network; ``pyg=False`` for inference without importing PyG (stacked pass only)."""
        return MultiTaskAttentiveFP(
            len(self.tasks),
            self.arch,
            self.gate,
            self.n_shared,
            self.n_private,
            self.hidden,
            self.layers,
            self.timesteps,
            self.dropout,
            pyg=pyg,
        )

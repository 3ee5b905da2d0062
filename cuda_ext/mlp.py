"""Small MLPs at inference, fused (csrc/mlp_cpu.cpp): on the CPU every layer of a block of rows runs while the block
is in cache, instead of one pass over memory per layer, bias, ReLU and sigmoid. No gradients: training keeps
torch.nn's layers (the same weights). On a GPU, and on the "torch" backend, the reference (_torch_impl.mlp_forward)
runs: cuBLAS already keeps small MLPs fast there."""

from __future__ import annotations

import torch
from torch import nn

from . import _backend, _torch_impl


def linear_layers(net: nn.Sequential) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weights, biases) of an MLP built as Linear, ReLU, ..., Linear (nerf_talk.fields.mlp)."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    others = [m for m in net if not isinstance(m, (nn.Linear, nn.ReLU))]
    if not layers or others:
        raise ValueError(f"expected Linear and ReLU layers only, got {[type(m).__name__ for m in net]}")
    return [m.weight for m in layers], [m.bias for m in layers]


@torch.no_grad()
def mlp_forward(
    x: torch.Tensor,  # [N, D0]
    weights: list[torch.Tensor],  # [D(l+1), Dl] each, as nn.Linear's
    biases: list[torch.Tensor],  # [D(l+1)] each
    add_rows: torch.Tensor | None = None,  # [M] int: rows whose first-layer pre-activation gets add_values
    add_values: torch.Tensor | None = None,  # [M, D1]
    sigmoid: bool = False,
    backend: str | None = None,
) -> torch.Tensor:  # [N, D_last]
    """Linear, ReLU, ..., Linear (then a sigmoid when `sigmoid`), with add_values added to the first layer's
    pre-activations of add_rows (a code that acts on a few rows, added before the ReLU; rows may repeat)."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, D], got {list(x.shape)}")
    if (add_rows is None) != (add_values is None):
        raise ValueError("add_rows and add_values go together")
    if add_rows is not None and add_rows.numel() and (int(add_rows.min()) < 0 or int(add_rows.max()) >= len(x)):
        raise ValueError(f"add_rows must lie in [0, {len(x)})")
    name = _backend.resolve(backend, x.device)
    if name != "cpu" or x.dtype != torch.float32:
        return _torch_impl.mlp_forward(x, weights, biases, add_rows, add_values, sigmoid)
    if x.stride(-1) != 1:
        x = x.contiguous()
    if add_rows is None or not add_rows.numel():
        add_rows, add_values = x.new_empty(0, dtype=torch.long), x.new_empty(0, 0)
    else:  # the kernel walks the rows in order
        order = torch.argsort(add_rows, stable=True)
        add_rows, add_values = add_rows.long()[order].contiguous(), add_values.float()[order].contiguous()
    return _backend.module_for(name).mlp_forward(x, [w.detach().contiguous() for w in weights],
                                                 [b.detach().contiguous() for b in biases], add_rows, add_values,
                                                 sigmoid)

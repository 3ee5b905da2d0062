"""A plain MLP, the one building block the fields share."""

from __future__ import annotations

import torch
from torch import nn

from cuda_ext import linear_layers, mlp_forward


def mlp(in_dim: int, hidden: int, out_dim: int, n_hidden: int = 1) -> nn.Sequential:
    """in -> (hidden, ReLU) x n_hidden -> out. Small on purpose: the hash grids carry the detail."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def run_mlp(net: nn.Sequential, x: torch.Tensor, code: torch.Tensor | None = None, backend: str | None = None
            ) -> torch.Tensor:
    """net over x [N, D], with `code` [N, C] (or one row [1, C] shared by every row) appended to each row's input.
    Without gradients (rendering, occupancy-grid updates) the MLP runs fused (cuda_ext.mlp_forward) and a shared
    code's share of the first layer is one vector added to its bias: nothing is concatenated or expanded. With
    gradients (training), torch.nn's layers: the same weights, the same function to float rounding."""
    if torch.is_grad_enabled() or (code is not None and code.shape[0] != 1):
        return net(x if code is None else torch.cat([x, code.expand(len(x), -1).to(x.dtype)], -1))
    weights, biases = linear_layers(net)
    if code is not None:
        w_x, w_code = weights[0].split([x.shape[1], code.shape[1]], 1)
        weights = [w_x, *weights[1:]]
        biases = [biases[0] + w_code @ code[0].to(w_code.dtype), *biases[1:]]
    return mlp_forward(x, weights, biases, backend=backend)


def frequency_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:  # [..., D] -> [..., D * (1 + 2 n_freqs)]
    """x with sin/cos at octave frequencies: smooth inputs for the low-frequency deformation MLPs."""
    out = [x]
    for k in range(n_freqs):
        out += [torch.sin((2.0**k) * torch.pi * x), torch.cos((2.0**k) * torch.pi * x)]
    return torch.cat(out, dim=-1)

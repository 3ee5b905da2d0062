"""A plain MLP, the one building block the fields share."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, n_hidden: int = 1) -> nn.Sequential:
    """in -> (hidden, ReLU) x n_hidden -> out. Small on purpose: the hash grids carry the detail."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def frequency_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:  # [..., D] -> [..., D * (1 + 2 n_freqs)]
    """x with sin/cos at octave frequencies: smooth inputs for the low-frequency deformation MLPs."""
    out = [x]
    for k in range(n_freqs):
        out += [torch.sin((2.0**k) * torch.pi * x), torch.cos((2.0**k) * torch.pi * x)]
    return torch.cat(out, dim=-1)

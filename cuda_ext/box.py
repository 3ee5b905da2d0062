"""The feathered box weight (csrc/box.h): where the head field's motion and eye codes act (1 in a box's core, falling
to 0 at its faces), one pass over the points instead of six torch ops; and the head field's density activation inside
its box (exp of the clamped logit, 0 outside), one pass instead of eight."""

from __future__ import annotations

import torch

from . import _backend, _torch_impl


def box_weight(x: torch.Tensor, box: torch.Tensor, feather: float, backend: str | None = None) -> torch.Tensor:
    """x [N, 3], box [6] (lo, hi) -> [N] in [0, 1]: 1 in the box's core, falling linearly to 0 at its faces over
    `feather` of its size per axis, 0 outside. Differentiable in x on the reference path only: the kernels serve
    points that need no gradient (the head field takes the reference for those that do)."""
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3], got {list(x.shape)}")
    if box.shape != (6,):
        raise ValueError(f"box must have shape [6] (lo, hi), got {list(box.shape)}")
    if feather <= 0:
        raise ValueError(f"feather must be > 0, is {feather}")
    name = _backend.resolve(backend, x.device)
    if name == "torch" or x.requires_grad:
        return _torch_impl.box_weight(x, box.to(x.dtype), feather)
    dtype = torch.float32 if name == "cuda" else x.dtype
    out = _backend.module_for(name).box_weights(x.to(dtype).contiguous(), box.to(dtype).contiguous(), float(feather))
    return out.to(x.dtype)


def unit_box_density(raw: torch.Tensor, x: torch.Tensor, bias: float, limit: float,
                     backend: str | None = None) -> torch.Tensor:
    """raw [N] density logits (any stride), x [N, 3] the points in box units -> [N]: exp(clamp(raw + bias, -limit,
    limit)) where x lies in [0, 1]^3 (faces included), else 0. Differentiable in raw on the reference path only (the
    kernel serves inference); on a GPU the reference runs (torch's elementwise ops are fast there)."""
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3], got {list(x.shape)}")
    if raw.shape != (x.shape[0],):
        raise ValueError(f"raw must have shape [{x.shape[0]}], got {list(raw.shape)}")
    if not 0 < limit <= 80:
        raise ValueError(f"limit must lie in (0, 80], is {limit}")
    name = _backend.resolve(backend, x.device)
    if name != "cpu" or (torch.is_grad_enabled() and raw.requires_grad) or raw.dtype != x.dtype:
        return _torch_impl.unit_box_density(raw, x, bias, limit)
    return _backend.module_for(name).unit_box_density(raw, x.contiguous(), float(bias), float(limit))

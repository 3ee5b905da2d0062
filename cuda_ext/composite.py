"""Volume compositing over packed samples (nerfacc's vocabulary: t_starts, t_ends, ray_indices, packed_info)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _backend, _torch_impl


def packed_info_from_ray_indices(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:  # [R, 2] int64
    """(first sample, count) per ray from sorted `ray_indices` [S]."""
    if ray_indices.numel() > 1 and bool((ray_indices[1:] < ray_indices[:-1]).any()):
        raise ValueError("ray_indices must be sorted (samples of a ray contiguous, as march_rays returns them)")
    if ray_indices.numel() and (int(ray_indices.min()) < 0 or int(ray_indices.max()) >= n_rays):
        raise ValueError(f"ray_indices must lie in [0, {n_rays}), got [{int(ray_indices.min())}, "
                         f"{int(ray_indices.max())}]")
    counts = torch.bincount(ray_indices.long(), minlength=n_rays)
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=1)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps, backend):
        ext = _backend.module_for(backend)
        rgb, depth, opacity = ext.composite_forward(sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, packed_info, rgb, depth, opacity)
        ctx.early_stop_eps, ctx.backend = early_stop_eps, backend
        return rgb, depth, opacity

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rgb, grad_depth, grad_opacity):
        sigmas, rgbs, t_starts, t_ends, packed_info, rgb, depth, opacity = ctx.saved_tensors
        ext = _backend.module_for(ctx.backend)
        grad_sigmas, grad_rgbs = ext.composite_backward(
            grad_rgb.contiguous(), grad_depth.contiguous(), grad_opacity.contiguous(), sigmas, rgbs, t_starts,
            t_ends, packed_info, rgb, depth, opacity, ctx.early_stop_eps,
        )
        return grad_sigmas, grad_rgbs, None, None, None, None, None


def composite(
    sigmas: torch.Tensor,  # [S]
    rgbs: torch.Tensor,  # [S, 3]
    t_starts: torch.Tensor,  # [S]
    t_ends: torch.Tensor,  # [S]
    packed_info: torch.Tensor | None = None,  # [R, 2] (first sample, count)
    ray_indices: torch.Tensor | None = None,  # [S] sorted; used when packed_info is None
    n_rays: int | None = None,
    early_stop_eps: float = 1e-4,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # rgb [R, 3], depth [R], opacity [R]
    """Alpha-composites packed samples front to back, differentiable w.r.t. `sigmas` and `rgbs`.

    alpha_i = 1 - exp(-sigma_i (t_end - t_start)), w_i = T_i alpha_i; rgb = sum w c, depth = sum w (t_start +
    t_end) / 2, opacity = sum w. A ray stops after the sample that brings its transmittance below `early_stop_eps`
    (0 disables early termination). Blend a background with rgb + (1 - opacity) * background.
    """
    if packed_info is None:
        if ray_indices is None or n_rays is None:
            raise ValueError("composite needs packed_info, or ray_indices together with n_rays")
        packed_info = packed_info_from_ray_indices(ray_indices, n_rays)
    elif n_rays is not None and packed_info.shape[0] != n_rays:
        raise ValueError(f"packed_info has {packed_info.shape[0]} rays but n_rays is {n_rays}")
    if early_stop_eps < 0:
        raise ValueError(f"early_stop_eps must be >= 0, is {early_stop_eps}")
    n_samples = sigmas.shape[0]
    for name, t, shape in (("rgbs", rgbs, [n_samples, 3]), ("t_starts", t_starts, [n_samples]),
                           ("t_ends", t_ends, [n_samples])):
        if list(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {list(t.shape)}")
    packed_info = packed_info.long()
    name = _backend.resolve(backend, sigmas.device)
    if name == "torch":
        return _torch_impl.composite(sigmas, rgbs, t_starts.to(sigmas.dtype), t_ends.to(sigmas.dtype), packed_info,
                                     early_stop_eps)
    dtype = torch.float32 if name == "cuda" else sigmas.dtype
    return _Composite.apply(
        sigmas.to(dtype).contiguous(), rgbs.to(dtype).contiguous(), t_starts.to(dtype).contiguous(),
        t_ends.to(dtype).contiguous(), packed_info.contiguous(), float(early_stop_eps), name,
    )


def composite_weights(
    sigmas: torch.Tensor,  # [S]
    t_starts: torch.Tensor,  # [S]
    t_ends: torch.Tensor,  # [S]
    packed_info: torch.Tensor,  # [R, 2] (first sample, count)
    early_stop_eps: float = 1e-4,
    skip_budget: float = 0.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [S], opacity [R]
    """Inference compositing (no gradients): the weights w_i = T_i alpha_i of `composite`, with its early termination,
    from the densities alone, so that colour is evaluated only at the samples with weight > 0 and the frame is
    rgb = sum w c (e.g. index_add over those samples) + (1 - opacity) * background.

    opacity is exact. Samples after the termination get weight 0, and so do samples whose colour cannot move the ray
    by more than `skip_budget` in all (colours in [0, 1]): in front of the surface while the ray's opacity so far is
    <= skip_budget / 2, behind it once the transmittance is <= skip_budget / 2. skip_budget = 0 keeps every sample
    that `composite` counts.
    """
    if early_stop_eps < 0 or skip_budget < 0:
        raise ValueError(f"early_stop_eps and skip_budget must be >= 0, are {early_stop_eps} and {skip_budget}")
    n_samples = sigmas.shape[0]
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends)):
        if list(t.shape) != [n_samples]:
            raise ValueError(f"{name} must have shape [{n_samples}], got {list(t.shape)}")
    packed_info = packed_info.long()
    name = _backend.resolve(backend, sigmas.device)
    with torch.no_grad():
        if name == "torch":
            return _torch_impl.composite_weights(sigmas, t_starts.to(sigmas.dtype), t_ends.to(sigmas.dtype),
                                                 packed_info, early_stop_eps, skip_budget)
        dtype = torch.float32 if name == "cuda" else sigmas.dtype
        weights, opacity = _backend.module_for(name).composite_weights(
            sigmas.to(dtype).contiguous(), t_starts.to(dtype).contiguous(), t_ends.to(dtype).contiguous(),
            packed_info.contiguous(), float(early_stop_eps), float(skip_budget))
    return weights, opacity


def composite_colours(
    weights: torch.Tensor,  # [S] from composite_weights
    rgbs: torch.Tensor,  # [S, 3]
    packed_info: torch.Tensor,  # [R, 2] (first sample, count)
    backend: str | None = None,
) -> torch.Tensor:  # rgb [R, 3], premultiplied
    """Inference compositing's colour: each ray's sum of weight x colour over its samples, in one pass (the same sums,
    bit for bit, as an index_add of the products in sample order). No gradients."""
    n_samples = weights.shape[0]
    if weights.dim() != 1 or rgbs.shape != (n_samples, 3):
        raise ValueError(f"weights [S] and rgbs [S, 3] must agree, got {list(weights.shape)} and {list(rgbs.shape)}")
    if packed_info.dim() != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"packed_info must have shape [R, 2], got {list(packed_info.shape)}")
    packed_info = packed_info.long()
    if packed_info.numel() and (int((packed_info[:, 0] + packed_info[:, 1]).max()) > n_samples
                                or int(packed_info.min()) < 0):
        raise ValueError(f"packed_info reaches past the {n_samples} samples")
    name = _backend.resolve(backend, weights.device)
    with torch.no_grad():
        if name == "torch":
            return _torch_impl.composite_colours(weights, rgbs.to(weights.dtype), packed_info)
        dtype = torch.float32 if name == "cuda" else weights.dtype
        return _backend.module_for(name).composite_colours(weights.to(dtype).contiguous(),
                                                           rgbs.to(dtype).contiguous(), packed_info.contiguous())

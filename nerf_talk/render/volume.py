"""Field-agnostic volume rendering: march rays through the occupancy grid, ask a radiance closure for density and
colour at the packed samples, composite. The closure carries whatever per-frame codes the field needs (nerfacc's
`sigma_fn`/`rgb_sigma_fn` pattern), so nothing is hung on the model between calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from cuda_ext import OccupancyGrid, composite, march_rays

# (positions [S, 3], ray_indices [S]) -> (density [S], rgb [S, 3])
RadianceFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # [R, 3] premultiplied by opacity
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R] expected distance (metres), premultiplied by opacity
    n_samples: int


def render_rays(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3] unit length
    grid: OccupancyGrid,
    radiance_fn: RadianceFn,
    step_size: float,
    max_samples: int,
    early_stop_eps: float = 1e-4,
    near: float = 0.0,
    jitter: torch.Tensor | None = None,  # [R] in [0, 1): shifts each ray's samples by a fraction of a step
    backend: str | None = None,
) -> RenderOutput:
    """Volume-renders rays against `grid`; differentiable w.r.t. what `radiance_fn` returns."""
    if jitter is not None:
        # Moving the origin along the ray moves the marching lattice: stratified sampling without a new kernel.
        rays_o = rays_o + rays_d * (jitter * step_size)[:, None]
    with torch.no_grad():
        s = march_rays(rays_o, rays_d, grid, near=near, step_size=step_size, max_samples=max_samples,
                       backend=backend)
    n_rays = rays_o.shape[0]
    mids = (s.t_starts + s.t_ends) * 0.5  # [S]
    positions = rays_o[s.ray_indices] + rays_d[s.ray_indices] * mids[:, None]  # [S, 3]
    sigmas, rgbs = radiance_fn(positions, s.ray_indices)
    if sigmas.shape[0] == 0:
        # No sample hit an occupied cell: transparent, but keep the graph connected for backward.
        z = sigmas.sum() * 0 + rgbs.sum() * 0
        zeros = rays_o.new_zeros(n_rays)
        return RenderOutput(rays_o.new_zeros(n_rays, 3) + z, zeros + z, zeros + z, 0)
    rgb, depth, opacity = composite(sigmas, rgbs, s.t_starts, s.t_ends, packed_info=s.packed_info,
                                    early_stop_eps=early_stop_eps, backend=backend)
    return RenderOutput(rgb, opacity, depth, int(sigmas.shape[0]))


def head_radiance_fn(field, codes) -> RadianceFn:
    """The closure for a head field and the per-ray codes of this batch (nerf_talk.fields.HeadCodes)."""

    def fn(positions: torch.Tensor, ray_indices: torch.Tensor):
        c = codes.index(ray_indices)
        sigma, geo = field.get_density(positions, c.motion)  # motion shapes the mouth's density (HeadField)
        return sigma, field.get_outputs(positions, geo, c)

    return fn

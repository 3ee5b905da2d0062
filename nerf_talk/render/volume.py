"""Field-agnostic volume rendering: march rays through the occupancy grid, ask a radiance closure for density and
colour at the packed samples, composite. The closure carries whatever per-frame codes the field needs (nerfacc's
`sigma_fn`/`rgb_sigma_fn` pattern), so nothing is hung on the model between calls.

Two entries, both through cuda_ext's kernels: `render_rays` (differentiable, every sample's colour: training) and
`render_rays_inference` (no gradients: density first, then colour only where the compositing weight matters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cuda_ext import OccupancyGrid, composite, composite_colours, composite_weights, march_rays, sample_positions

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
    positions = sample_positions(rays_o, rays_d, s.ray_indices, s.t_starts, s.t_ends, backend=backend)  # [S, 3]
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
        sigma, geo = field.get_density(positions, c.motion, c.eyes)  # the drive moves lips, jaw and lids (HeadField)
        return sigma, field.get_outputs(positions, geo, c)

    return fn


# Samples per field call at inference (at most; whole rays per call). The field's intermediates ([samples, 32]
# floats per layer) then stay in the CPU's cache: on the demo avatar at 128x128 (156k samples) one call over all
# samples took 85 ms, calls of 16k-65k samples 40 ms, of 4k 64 ms (Python and dispatch overhead).
INFERENCE_CHUNK = 1 << 15


# Above this share of a group's samples with weight > 0, all of them are coloured: gathering the kept ones cost more
# (2 ms a 128 px frame of the demo avatar, 98 % kept) than colouring the rest (the colour MLP: ~45 ns a sample).
KEEP_ALL = 0.9


def ray_groups(packed_info: torch.Tensor, chunk: int) -> list[tuple[int, int]]:
    """Consecutive ray ranges [r0, r1) of packed samples holding at most `chunk` samples each (a ray with more holds
    a range alone): the samples of a range are contiguous, so it is composited on its own."""
    ends = (packed_info[:, 0] + packed_info[:, 1]).cpu().numpy()
    groups, r0, n = [], 0, len(ends)
    while r0 < n:
        first = int(ends[r0 - 1]) if r0 else 0
        r1 = max(int(np.searchsorted(ends, first + chunk, side="right")), r0 + 1)
        groups.append((r0, r1))
        r0 = r1
    return groups


@torch.no_grad()
def render_rays_inference(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3] unit length
    grid: OccupancyGrid,
    field,  # get_density(positions, motion, eyes) -> (density, geo); get_outputs(positions, geo, codes) -> rgb
    codes,  # HeadCodes: per ray, or one row shared by all rays
    step_size: float,
    max_samples: int,
    early_stop_eps: float = 1e-4,
    skip_budget: float = 0.0,
    backend: str | None = None,
    chunk: int = INFERENCE_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:  # rgb [R, 3] premultiplied, opacity [R]
    """What `render_rays` gives (same samples, same compositing and early termination), for inference: densities at
    every sample, then cuda_ext.composite_weights, then colour only at the samples whose weight is > 0. skip_budget
    bounds how much a pixel may differ from render_rays' (colour of skipped samples; see composite_weights).
    Whole rays go through the field together (ray_groups), so a group's densities, weights and colours are computed
    while its samples are still in cache, and nothing is concatenated."""
    n = rays_o.shape[0]
    rgb, opacity = rays_o.new_zeros(n, 3), rays_o.new_zeros(n)
    s = march_rays(rays_o, rays_d, grid, step_size=step_size, max_samples=max_samples, backend=backend)
    if s.t_starts.numel() == 0:
        return rgb, opacity
    ray_idx = s.ray_indices.long()
    for r0, r1 in ray_groups(s.packed_info, chunk):
        a = int(s.packed_info[r0, 0])
        b = a + int(s.packed_info[r0:r1, 1].sum())
        if a == b:
            continue
        idx = ray_idx[a:b]
        t0, t1 = s.t_starts[a:b], s.t_ends[a:b]
        positions = sample_positions(rays_o, rays_d, idx, t0, t1, backend=backend)
        c = codes.index(idx)
        sigma, geo = field.get_density(positions, c.motion, c.eyes)  # the drive moves lips and lids
        info = s.packed_info[r0:r1] - s.packed_info.new_tensor([a, 0])
        weights, opacity[r0:r1] = composite_weights(sigma, t0, t1, info, early_stop_eps, skip_budget,
                                                    backend=backend)
        kept = int(torch.count_nonzero(weights))
        if kept == 0:
            continue
        if kept > KEEP_ALL * len(idx):
            # Nearly every sample counts (a fog: the CPU recipes' heads): colour them all rather than gather the
            # kept ones (a weight-0 sample adds exactly 0).
            rgb[r0:r1] = composite_colours(weights, field.get_outputs(positions, geo, c), info, backend=backend)
            continue
        keep = torch.nonzero(weights).reshape(-1)
        k_idx = idx.index_select(0, keep)
        colour = field.get_outputs(positions.index_select(0, keep), geo.index_select(0, keep), codes.index(k_idx))
        rgb.index_add_(0, k_idx, weights.index_select(0, keep)[:, None] * colour)
    return rgb, opacity

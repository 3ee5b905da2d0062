"""Occupancy grid over the head's box and ray marching against it (instant-ngp style, nerfacc vocabulary)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from . import _backend, _torch_impl


class RaySamples(NamedTuple):
    """Packed samples: the samples of ray r are rows packed_info[r, 0] .. + packed_info[r, 1] - 1, in marching order."""

    ray_indices: torch.Tensor  # [S] int64
    t_starts: torch.Tensor  # [S] float32
    t_ends: torch.Tensor  # [S] float32
    packed_info: torch.Tensor  # [R, 2] int64 (first sample, count)


def pack_bitfield(density: torch.Tensor, threshold: float, backend: str | None = None) -> torch.Tensor:
    """uint8 [ceil(n / 8)]: bit b of byte i is density.flatten()[8 i + b] > threshold."""
    name = _backend.resolve(backend, density.device)
    if name == "torch":
        return _torch_impl.pack_bitfield(density, threshold)
    dtype = torch.float32 if name == "cuda" else density.dtype
    return _backend.module_for(name).pack_bitfield(density.reshape(-1).to(dtype).contiguous(), float(threshold))


class OccupancyGrid(torch.nn.Module):
    """A density grid over an axis-aligned box and the bitfield of its occupied cells.

    Cell (i, j, k) covers aabb_min + ([i, i+1], [j, j+1], [k, k+1]) * extent / resolution; its linear index is
    (i * ry + j) * rz + k, the index of its bit in `bitfield`. `density` holds a decaying estimate of the maximum
    density in each cell. It starts at 0 with every bit set, so marching samples the whole box until the first
    `update` (instant-ngp and nerfacc do the same) carves the empty space away.
    """

    def __init__(self, aabb: Sequence[float], resolution: int | Sequence[int] = 128,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        aabb_t = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb_t.numel() != 6 or not bool((aabb_t[3:] > aabb_t[:3]).all()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {list(aabb)}")
        res = [resolution] * 3 if isinstance(resolution, int) else list(resolution)
        if len(res) != 3 or min(res) < 1:
            raise ValueError(f"resolution must be an int or 3 ints >= 1, got {resolution}")
        self.resolution = tuple(int(r) for r in res)
        self.register_buffer("aabb", aabb_t.to(device))
        n = self.n_cells
        self.register_buffer("density", torch.zeros(n, dtype=torch.float32, device=device))
        self.register_buffer("bitfield", torch.full(((n + 7) // 8,), 255, dtype=torch.uint8, device=device))
        if n % 8:  # clear the padding bits of the last byte
            self.bitfield[-1] = (1 << (n % 8)) - 1

    @property
    def n_cells(self) -> int:
        rx, ry, rz = self.resolution
        return rx * ry * rz

    @property
    def binary(self) -> torch.Tensor:  # [rx, ry, rz] bool
        return _torch_impl.unpack_bitfield(self.bitfield, self.n_cells).reshape(self.resolution)

    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    def cell_centers(self, cells: torch.Tensor, jitter: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:  # [M, 3]
        """World positions in the cells with linear indices `cells` [M]: centres, or uniform in the cell."""
        rx, ry, rz = self.resolution
        ijk = torch.stack([cells // (ry * rz), (cells // rz) % ry, cells % rz], dim=-1).float()
        off = torch.rand(ijk.shape, device=cells.device, generator=generator) if jitter else 0.5
        res = torch.tensor(self.resolution, dtype=torch.float32, device=cells.device)
        lo, hi = self.aabb[:3], self.aabb[3:]
        return lo + (ijk + off) / res * (hi - lo)

    def set_density(self, density: torch.Tensor, threshold: float, backend: str | None = None) -> None:
        """Replaces the density grid ([n_cells] or [rx, ry, rz]) and derives the bitfield (density > threshold)."""
        if density.numel() != self.n_cells:
            raise ValueError(f"density must have {self.n_cells} cells {list(self.resolution)}, got "
                             f"{list(density.shape)}")
        self.density.copy_(density.reshape(-1))
        self.bitfield.copy_(pack_bitfield(self.density, threshold, backend=backend))

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor], torch.Tensor],  # [M, 3] world points -> [M] or [M, 1] density
        step: int,
        decay: float = 0.95,
        threshold: float = 0.01,
        warmup_steps: int = 256,
        chunk: int = 2**18,
        generator: torch.Generator | None = None,
        backend: str | None = None,
    ) -> None:
        """instant-ngp's update: every cell decays (density <- density * decay), the sampled cells take the max of
        that and the density seen at a random point inside them, and the bitfield marks cells above
        min(threshold, mean density). Sampled cells: all of them during the first `warmup_steps` steps, then a
        random quarter of all cells plus as many random occupied cells.
        """
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], is {decay}")
        device = self.density.device
        n = self.n_cells
        if step < warmup_steps:
            cells = torch.arange(n, device=device)
        else:
            m = max(n // 4, 1)
            uniform = torch.randint(0, n, (m,), device=device, generator=generator)
            occupied = torch.nonzero(self.binary.reshape(-1)).reshape(-1)
            if occupied.numel():
                pick = torch.randint(0, occupied.numel(), (m,), device=device, generator=generator)
                cells = torch.cat([uniform, occupied[pick]])
            else:
                cells = uniform
        seen = torch.zeros(n, dtype=torch.float32, device=device)
        for c0 in range(0, cells.numel(), chunk):
            c = cells[c0 : c0 + chunk]
            sigma = density_fn(self.cell_centers(c, jitter=True, generator=generator)).reshape(-1).float()
            if sigma.numel() != c.numel():
                raise ValueError(f"density_fn must return one density per point ({c.numel()}), got {sigma.numel()}")
            seen.scatter_reduce_(0, c, sigma, reduce="amax", include_self=True)
        # Cells never updated keep their (decayed) initial value; sampled cells take what the field says now.
        new = torch.maximum(self.density * decay, seen)
        mean = float(new.clamp(min=0).mean())
        self.set_density(new, min(threshold, mean), backend=backend)


def march_rays(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3] (t is measured in units of |rays_d|)
    grid: OccupancyGrid,
    near: float | torch.Tensor = 0.0,  # scalar or [R]
    far: float | torch.Tensor = 1e10,  # scalar or [R]
    step_size: float = 1e-2,
    max_samples: int = 1024,
    backend: str | None = None,
) -> RaySamples:
    """Samples every ray on the lattice t = t_min + k step_size inside [near, far] and the grid's box, keeping the
    samples whose midpoint lies in an occupied cell (at most `max_samples` per ray). Empty space is skipped cell by
    cell, so the work is proportional to the occupied samples. Rays that miss the box get no samples.
    """
    if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"rays_o and rays_d must both have shape [R, 3], got {list(rays_o.shape)} and "
                         f"{list(rays_d.shape)}")
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, is {step_size}")
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, is {max_samples}")
    n_rays = rays_o.shape[0]
    device = rays_o.device

    def per_ray(v, name):
        t = torch.as_tensor(v, dtype=torch.float32, device=device)
        if t.dim() == 0:
            return t.expand(n_rays).contiguous()
        if list(t.shape) != [n_rays]:
            raise ValueError(f"{name} must be a scalar or have shape [{n_rays}], got {list(t.shape)}")
        return t.contiguous()

    near_t, far_t = per_ray(near, "near"), per_ray(far, "far")
    rays_o = rays_o.float().contiguous()
    rays_d = rays_d.float().contiguous()
    aabb = [float(v) for v in grid.aabb.tolist()]
    name = _backend.resolve(backend, device)
    if name == "torch":
        packed_info, t_starts, t_ends, ray_indices = _torch_impl.march_rays(
            rays_o, rays_d, near_t, far_t, grid.binary, aabb, step_size, max_samples)
    else:
        packed_info, t_starts, t_ends, ray_indices = _backend.module_for(name).march_rays(
            rays_o, rays_d, near_t, far_t, grid.bitfield.contiguous(), aabb, list(grid.resolution), float(step_size),
            int(max_samples))
    return RaySamples(ray_indices, t_starts, t_ends, packed_info)


def sample_positions(rays_o: torch.Tensor, rays_d: torch.Tensor, ray_indices: torch.Tensor, t_starts: torch.Tensor,
                     t_ends: torch.Tensor, backend: str | None = None) -> torch.Tensor:  # [S, 3]
    """The samples' midpoints, rays_o[i] + rays_d[i] * ((t_start + t_end) / 2) for each sample's ray i, in one pass (and
    bit for bit the points whose cells march_rays tested). Differentiable in the rays on the reference path only:
    rays that need a gradient (a pose being refined) go through torch."""
    if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"rays_o and rays_d must both have shape [R, 3], got {list(rays_o.shape)} and "
                         f"{list(rays_d.shape)}")
    n = ray_indices.shape[0]
    if ray_indices.dim() != 1 or t_starts.shape != (n,) or t_ends.shape != (n,):
        raise ValueError(f"ray_indices, t_starts and t_ends must have one shape [S], got {list(ray_indices.shape)}, "
                         f"{list(t_starts.shape)} and {list(t_ends.shape)}")
    name = _backend.resolve(backend, rays_o.device)
    needs_grad = torch.is_grad_enabled() and (rays_o.requires_grad or rays_d.requires_grad)
    if name == "torch" or needs_grad or rays_o.dtype != torch.float32:
        return _torch_impl.sample_positions(rays_o, rays_d, ray_indices, t_starts, t_ends)
    if n and (int(ray_indices.min()) < 0 or int(ray_indices.max()) >= rays_o.shape[0]):
        raise ValueError(f"ray_indices must lie in [0, {rays_o.shape[0]})")
    return _backend.module_for(name).sample_positions(
        rays_o.contiguous(), rays_d.contiguous(), ray_indices.long().contiguous(), t_starts.float().contiguous(),
        t_ends.float().contiguous())

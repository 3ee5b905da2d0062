"""Pure-PyTorch reference of every kernel: the definition the compiled backends are tested against.

Written for clarity, not speed: dense tensors, autograd for the gradients. Each function mirrors the comment at the
top of its header in ``csrc/`` and computes positions with the same operations in the same order, so results agree
with the kernels to float rounding (ray marching, which compares positions with cell boundaries, agrees exactly).
"""

from __future__ import annotations

import torch

HASH_PRIMES = (1, 2654435761, 805459861)


def hash_encode(
    x: torch.Tensor,  # [N, D] in [0, 1]
    table: torch.Tensor,  # [L, T, F]
    scales: list[float],
    resolutions: list[int],
    dense: list[bool],
) -> torch.Tensor:  # [N, L * F]
    """Multiresolution hash-grid encoding (see csrc/hashgrid.h).

    Weights and table rows of every (level, corner) are built first and gathered with one indexing op, so that
    autograd scatters the table gradient once (not once per level and corner).
    """
    n_points, dims = x.shape
    n_levels, table_size, n_features = table.shape
    xc = x.clamp(0.0, 1.0)
    weights, rows = [], []
    for level in range(n_levels):
        pos = xc * scales[level] + 0.5
        cell_f = torch.floor(pos)
        frac = pos - cell_f
        cell = cell_f.long()
        for corner in range(1 << dims):
            w = torch.ones(n_points, dtype=x.dtype, device=x.device)
            index = torch.zeros(n_points, dtype=torch.long, device=x.device)
            stride = 1
            for d in range(dims):
                bit = (corner >> d) & 1
                w = w * (frac[:, d] if bit else 1.0 - frac[:, d])
                c = cell[:, d] + bit
                if dense[level]:
                    index = index + c * stride
                    stride *= resolutions[level]
                else:
                    index = index ^ (c * HASH_PRIMES[d])
            weights.append(w)
            rows.append((index & (table_size - 1)) + level * table_size)
    n_corners = 1 << dims
    w = torch.stack(weights, dim=1).view(n_points, n_levels, n_corners, 1)
    values = table.reshape(n_levels * table_size, n_features)[torch.stack(rows, dim=1)].to(x.dtype)
    return (w * values.view(n_points, n_levels, n_corners, n_features)).sum(dim=2).reshape(n_points, n_levels * n_features)


def ray_interval(
    rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor, far: torch.Tensor, aabb: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """[near, far] clipped to the box, per ray ([R] each); empty where t_min >= t_max (see csrc/march.h)."""
    lo = torch.tensor(aabb[:3], dtype=rays_o.dtype, device=rays_o.device)
    hi = torch.tensor(aabb[3:], dtype=rays_o.dtype, device=rays_o.device)
    inv = 1.0 / rays_d
    ta = (lo - rays_o) * inv
    tb = (hi - rays_o) * inv
    tn = torch.fmin(ta, tb)
    tf = torch.fmax(ta, tb)
    t_near = torch.fmax(torch.fmax(torch.fmax(torch.full_like(near, -torch.inf), tn[:, 0]), tn[:, 1]), tn[:, 2])
    t_far = torch.fmin(torch.fmin(torch.fmin(torch.full_like(far, torch.inf), tf[:, 0]), tf[:, 1]), tf[:, 2])
    return torch.fmax(near, t_near), torch.fmin(far, t_far)


def sample_positions(rays_o, rays_d, ray_indices, t_starts, t_ends):
    """cuda_ext.sample_positions: each sample's midpoint on its ray."""
    idx = ray_indices.long()
    return rays_o[idx] + rays_d[idx] * ((t_starts + t_ends) * 0.5)[:, None]


def march_rays(
    rays_o: torch.Tensor,  # [R, 3] float32
    rays_d: torch.Tensor,  # [R, 3]
    near: torch.Tensor,  # [R]
    far: torch.Tensor,  # [R]
    occupied: torch.Tensor,  # [rx, ry, rz] bool
    aabb: list[float],
    step_size: float,
    max_samples: int,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tests every lattice sample of every ray; returns (packed_info [R, 2], t_starts, t_ends, ray_indices)."""
    n_rays = rays_o.shape[0]
    device = rays_o.device
    res = torch.tensor(occupied.shape, dtype=torch.float32, device=device)
    lo = torch.tensor(aabb[:3], dtype=torch.float32, device=device)
    scale = res / (torch.tensor(aabb[3:], dtype=torch.float32, device=device) - lo)  # cells per unit
    step = torch.tensor(step_size, dtype=torch.float32)
    starts, ends, indices = [], [], []
    counts = torch.zeros(n_rays, dtype=torch.long, device=device)
    for c0 in range(0, n_rays, chunk):
        o, d = rays_o[c0 : c0 + chunk], rays_d[c0 : c0 + chunk]
        t_min, t_max = ray_interval(o, d, near[c0 : c0 + chunk], far[c0 : c0 + chunk], aabb)
        hit = (t_min < t_max) & (d != 0).any(dim=-1)
        if not bool(hit.any()):
            continue
        n_steps = int(torch.ceil((t_max[hit] - t_min[hit]) / step).max().item()) + 1
        k = torch.arange(n_steps, device=device, dtype=torch.float32)
        ts = t_min[:, None] + k[None, :] * step  # [r, K]
        valid = hit[:, None] & (ts < t_max[:, None])
        te = torch.fmin(ts + step, t_max[:, None])
        tm = (ts + te) * 0.5
        x = o[:, None, :] + tm[..., None] * d[:, None, :]
        g = torch.floor((x - lo) * scale).long()
        g = torch.minimum(torch.clamp(g, min=0), (res.long() - 1))
        occ = occupied[g[..., 0].clamp(min=0), g[..., 1].clamp(min=0), g[..., 2].clamp(min=0)]
        keep = valid & occ
        keep = keep & (torch.cumsum(keep.long(), dim=1) <= max_samples)
        counts[c0 : c0 + chunk] = keep.sum(1)
        rows = torch.arange(o.shape[0], device=device)[:, None].expand_as(keep)
        starts.append(ts[keep])
        ends.append(te[keep])
        indices.append(rows[keep] + c0)
    t_starts = torch.cat(starts) if starts else torch.zeros(0, device=device)
    t_ends = torch.cat(ends) if ends else torch.zeros(0, device=device)
    ray_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    packed_info = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=1)
    return packed_info, t_starts, t_ends, ray_indices


def pack_bitfield(density: torch.Tensor, threshold: float) -> torch.Tensor:  # [ceil(n / 8)] uint8
    """Bit b of byte i is density.flatten()[8 i + b] > threshold."""
    occ = (density.reshape(-1) > threshold).to(torch.uint8)
    pad = (-occ.numel()) % 8
    occ = torch.cat([occ, occ.new_zeros(pad)]).view(-1, 8).long()
    weights = (1 << torch.arange(8, device=density.device)).long()
    return (occ * weights).sum(1).to(torch.uint8)


def unpack_bitfield(bits: torch.Tensor, n_cells: int) -> torch.Tensor:  # [n_cells] bool
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((bits[:, None] >> shifts) & 1).bool().reshape(-1)[:n_cells]


def composite(
    sigmas: torch.Tensor,  # [S]
    rgbs: torch.Tensor,  # [S, 3]
    t_starts: torch.Tensor,  # [S]
    t_ends: torch.Tensor,  # [S]
    packed_info: torch.Tensor,  # [R, 2] (first sample, count)
    early_stop_eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # rgb [R, 3], depth [R], opacity [R]
    """Volume compositing over packed samples (see csrc/composite.h), on a padded [R, max_count] layout."""
    n_rays = packed_info.shape[0]
    dtype, device = sigmas.dtype, sigmas.device
    counts = packed_info[:, 1]
    width = int(counts.max().item()) if n_rays > 0 and counts.numel() else 0
    if width == 0:
        z = sigmas.sum() * 0 + rgbs.sum() * 0  # keeps the graph connected
        return (z + torch.zeros(n_rays, 3, dtype=dtype, device=device), z + torch.zeros(n_rays, dtype=dtype,
                device=device), z + torch.zeros(n_rays, dtype=dtype, device=device))
    j = torch.arange(width, device=device)
    mask = j[None, :] < counts[:, None]  # [R, W]
    idx = (packed_info[:, :1] + j[None, :]).clamp(max=max(sigmas.shape[0] - 1, 0))
    idx = torch.where(mask, idx, torch.zeros_like(idx))
    delta = torch.where(mask, (t_ends - t_starts)[idx], torch.zeros((), dtype=dtype, device=device))
    sig = torch.where(mask, sigmas[idx], torch.zeros((), dtype=dtype, device=device))
    alpha = 1.0 - torch.exp(-sig * delta)
    one_minus = 1.0 - alpha
    trans_after = torch.cumprod(one_minus, dim=1)  # T_{i+1}
    trans = torch.cat([torch.ones_like(trans_after[:, :1]), trans_after[:, :-1]], dim=1)  # T_i
    # The kernel stops after the first sample that leaves T < eps, so sample i counts iff i == 0 or T_i >= eps.
    if early_stop_eps > 0:
        alive = mask & ((j[None, :] == 0) | (trans.detach() >= early_stop_eps))
    else:
        alive = mask
    w = torch.where(alive, trans * alpha, torch.zeros((), dtype=dtype, device=device))
    mids = torch.where(mask, ((t_starts + t_ends) * 0.5)[idx], torch.zeros((), dtype=dtype, device=device))
    rgb = (w[..., None] * rgbs[idx]).sum(1)
    depth = (w * mids).sum(1)
    opacity = w.sum(1)
    return rgb, depth, opacity


def composite_weights(
    sigmas: torch.Tensor,  # [S]
    t_starts: torch.Tensor,  # [S]
    t_ends: torch.Tensor,  # [S]
    packed_info: torch.Tensor,  # [R, 2] (first sample, count)
    early_stop_eps: float = 0.0,
    skip_budget: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [S], opacity [R]
    """Inference compositing weights (see composite_ray_weights in csrc/composite.h), on the padded layout."""
    n_rays, n_samples = packed_info.shape[0], sigmas.shape[0]
    dtype, device = sigmas.dtype, sigmas.device
    counts = packed_info[:, 1]
    width = int(counts.max().item()) if n_rays > 0 else 0
    if width == 0 or n_samples == 0:
        return torch.zeros_like(sigmas), torch.zeros(n_rays, dtype=dtype, device=device)
    j = torch.arange(width, device=device)
    mask = j[None, :] < counts[:, None]
    idx = torch.where(mask, (packed_info[:, :1] + j[None, :]).clamp(max=n_samples - 1), 0)
    zero = torch.zeros((), dtype=dtype, device=device)
    alpha = 1.0 - torch.exp(-torch.where(mask, sigmas[idx], zero) * torch.where(mask, (t_ends - t_starts)[idx], zero))
    trans = torch.cat([torch.ones_like(alpha[:, :1]), torch.cumprod(1.0 - alpha, dim=1)[:, :-1]], dim=1)
    alive = mask & ((j[None, :] == 0) | (trans >= early_stop_eps)) if early_stop_eps > 0 else mask
    w = torch.where(alive, trans * alpha, zero)
    opacity_so_far = torch.cumsum(w, dim=1)
    half = skip_budget * 0.5
    keep = alive & (opacity_so_far > half) & (trans > half)
    weights = torch.zeros_like(sigmas)
    weights[idx[keep]] = w[keep]
    return weights, opacity_so_far[:, -1]


def _warp_one_sided(x, ctrl, disp, sigma, reach_z, fade, dist=None):
    squash = x.new_tensor([1.0, 1.0, 1.0 / reach_z])
    if dist is None:
        dist = torch.cdist(x * squash, ctrl * squash)
    w = torch.exp(-dist.square() / (2 * sigma**2))
    return (w @ disp) / (w.sum(-1, keepdim=True) + fade)


def _warp_two_sided(x, ctrl, disp, sigma, sides, reach_z, fade, switch_width, stretch, guides):
    squash = x.new_tensor([1.0, 1.0, 1.0 / reach_z])
    dist = torch.cdist(x * squash, ctrl * squash)
    plane = torch.cdist(x[:, :2], ctrl[:, :2])
    out, lid_y, far = [], [], []
    for s in (1, 0):
        cols = torch.nonzero((sides == s) | (sides == 2)).reshape(-1)
        out.append(_warp_one_sided(x, ctrl[cols], disp[cols], sigma, reach_z, fade, dist[:, cols]))
        if guides is not None:  # only these give the side's height
            cols = cols[guides[cols]]
        near, k = plane[:, cols].min(-1)
        lid_y.append(ctrl[cols][k, 1])
        far.append(near)
    mid = (lid_y[0] + lid_y[1]) / 2
    if stretch:
        ramp = torch.maximum((lid_y[1] - lid_y[0]).clamp(min=switch_width), torch.maximum(far[0], far[1]))
        upper = ((mid - x[:, 1]) / ramp + 0.5).clamp(0, 1)[:, None]
    else:
        upper = torch.sigmoid((mid - x[:, 1]) / switch_width)[:, None]
    return upper * out[0] + (1 - upper) * out[1]


def warp_points(x, ctrl, disp, sigma, rows=None, sides=None, reach_z=1.0, fade=0.0, switch_width=1.0, box=None,
                stretch=False, guides=None):
    """Point warp by control points (see csrc/warp.h): dense distance matrices, control set by control set."""
    idx = torch.arange(x.shape[0], device=x.device)
    if box is not None:
        box = box.to(x.dtype)
        idx = torch.nonzero(((x >= box[:3]) & (x <= box[3:])).all(-1)).reshape(-1)
    d = x.new_zeros(len(idx), 3)
    r = torch.zeros_like(idx) if rows is None else rows[idx]
    for u in torch.unique(r).tolist():
        sel = torch.nonzero(r == u).reshape(-1)
        p = x[idx[sel]]
        d[sel] = (_warp_one_sided(p, ctrl[u], disp[u], sigma, reach_z, fade) if sides is None else
                  _warp_two_sided(p, ctrl[u], disp[u], sigma, sides, reach_z, fade, switch_width, stretch, guides))
    return x.index_add(0, idx, -d)


def composite_colours(weights, rgbs, packed_info):
    """cuda_ext.composite_colours: each ray's sum of weight x colour, by index_add in sample order."""
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    rays = torch.repeat_interleave(torch.arange(len(counts), device=weights.device), counts)
    first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    samples = first + torch.arange(len(rays), device=weights.device)
    rgb = weights.new_zeros(len(counts), 3)
    return rgb.index_add_(0, rays, weights[samples, None] * rgbs[samples])


def unit_box_density(raw, x, bias, limit):
    """cuda_ext.box.unit_box_density: exp of the clamped logit inside [0, 1]^3, 0 outside."""
    inside = ((x >= 0) & (x <= 1)).all(-1)
    return torch.exp((raw + bias).clamp(-limit, limit)) * inside


def box_weight(x, box, feather):
    """csrc/box.h: prod over axes of clamp(min(x - lo, hi - x) / (feather * size), 0, 1)."""
    lo, hi = box[:3], box[3:]
    ramp = feather * (hi - lo).clamp(min=1e-6)
    return (torch.minimum(x - lo, hi - x) / ramp).clamp(0, 1).prod(-1)


def mlp_forward(x, weights, biases, add_rows=None, add_values=None, sigmoid=False):
    """Linear, ReLU, ..., Linear (csrc/mlp_cpu.cpp), add_values [M, D1] added to rows add_rows' first
    pre-activations."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = torch.nn.functional.linear(h, w, b)
        if i == 0 and add_rows is not None and add_rows.numel():
            h = h.index_add(0, add_rows.long(), add_values.to(h.dtype))
        if i + 1 < len(weights):
            h = torch.relu(h)
    return torch.sigmoid(h) if sigmoid else h

"""Occupancy grid and ray marching: C++ CPU kernels against the reference, coverage of occupied intervals, edges."""

import pytest
import torch

from cuda_ext import OccupancyGrid, march_rays, pack_bitfield, sample_positions
from cuda_ext import _backend, _torch_impl

AABB = [-1.0, -0.5, -1.0, 1.0, 1.5, 0.5]


@pytest.fixture(scope="module", autouse=True)
def cpu_ext():
    return _backend.load("cpu")


def _grid(res=(16, 12, 10), frac=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = OccupancyGrid(AABB, res)
    grid.set_density(torch.rand(grid.n_cells, generator=g), 1.0 - frac)
    return grid


def _rays(n, seed=0, inside=False):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    target = lo + torch.rand(n, 3, generator=g) * (hi - lo)
    origin = target + torch.randn(n, 3, generator=g) * (0.3 if inside else 3.0)
    return origin, (target - origin) * (0.5 + torch.rand(n, 1, generator=g))  # unnormalised directions


def _assert_same(a, b):
    for name, u, v in zip(a._fields, a, b):
        assert torch.equal(u, v), f"{name} differs"


def test_pack_bitfield_matches_reference_and_unpacks():
    density = torch.rand(1001, generator=torch.Generator().manual_seed(1))
    bits = pack_bitfield(density, 0.6, backend="cpu")
    assert bits.dtype == torch.uint8 and bits.shape == (126,)
    assert torch.equal(bits, _torch_impl.pack_bitfield(density, 0.6))
    assert torch.equal(_torch_impl.unpack_bitfield(bits, 1001), density > 0.6)
    assert torch.equal(pack_bitfield(density.double(), 0.6, backend="cpu"), bits)


@pytest.mark.parametrize("step", [0.013, 0.05, 0.31])
def test_march_matches_reference_exactly(step):
    grid = _grid()
    o, d = _rays(600, seed=int(step * 1000))
    near = torch.rand(600, generator=torch.Generator().manual_seed(9)) * 2.0
    ours = march_rays(o, d, grid, near=near, far=6.0, step_size=step, backend="cpu")
    ref = march_rays(o, d, grid, near=near, far=6.0, step_size=step, backend="torch")
    assert ours.t_starts.numel() > 100
    _assert_same(ours, ref)


def test_sample_positions_are_the_marched_midpoints_bit_for_bit():
    """The kernel's midpoints equal torch's `o + d * (t0 + t1) / 2` exactly, and lie in the cells march tested."""
    grid = _grid()
    o, d = _rays(600, seed=3)
    s = march_rays(o, d, grid, far=6.0, step_size=0.013, backend="cpu")
    got = sample_positions(o, d, s.ray_indices, s.t_starts, s.t_ends, backend="cpu")
    ref = sample_positions(o, d, s.ray_indices, s.t_starts, s.t_ends, backend="torch")
    assert got.shape == (s.t_starts.numel(), 3) and s.t_starts.numel() > 100
    assert torch.equal(got, ref)
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    cells = ((got - lo) * (torch.tensor(grid.resolution) / (hi - lo))).floor().long()
    cells = torch.minimum(cells.clamp(min=0), torch.tensor(grid.resolution) - 1)
    assert bool(grid.binary[cells[:, 0], cells[:, 1], cells[:, 2]].all())  # every sample's cell is occupied
    o.requires_grad_(True)  # a pose being refined: the reference path keeps the gradient
    sample_positions(o, d, s.ray_indices, s.t_starts, s.t_ends, backend="cpu").sum().backward()
    assert o.grad is not None and float(o.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match=r"ray_indices must lie in \[0, 600\)"):
        sample_positions(o.detach(), d, s.ray_indices + 600, s.t_starts, s.t_ends, backend="cpu")


def test_packed_samples_cover_exactly_the_occupied_intervals():
    grid = _grid(res=(8, 8, 8), frac=0.4, seed=2)
    o, d = _rays(300, seed=3)
    step = 0.02
    s = march_rays(o, d, grid, step_size=step, backend="cpu")
    occ = grid.binary
    t_min, t_max = _torch_impl.ray_interval(o, d, torch.zeros(300), torch.full((300,), 1e10), AABB)
    # every sample is one lattice step (clipped at t_max) whose midpoint lies in an occupied cell
    k = (s.t_starts - t_min[s.ray_indices]) / step
    assert (k - k.round()).abs().max() < 1e-3
    torch.testing.assert_close(s.t_ends, torch.minimum(s.t_starts + step, t_max[s.ray_indices]))
    mid = o[s.ray_indices] + ((s.t_starts + s.t_ends) / 2)[:, None] * d[s.ray_indices]
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    cell = ((mid - lo) / (hi - lo) * 8).floor().long().clamp(0, 7)
    assert occ[cell[:, 0], cell[:, 1], cell[:, 2]].all()
    # and every occupied lattice step is there: count them densely at fine resolution per ray
    for r in range(0, 300, 7):
        if not t_min[r] < t_max[r]:
            assert s.packed_info[r, 1] == 0
            continue
        ks = torch.arange(int(((t_max[r] - t_min[r]) / step).ceil()) + 1)
        ts = t_min[r] + ks * step
        ts = ts[ts < t_max[r]]
        tm = (ts + torch.minimum(ts + step, t_max[r])) / 2
        c = ((o[r] + tm[:, None] * d[r] - lo) / (hi - lo) * 8).floor().long().clamp(0, 7)
        n_occ = int(occ[c[:, 0], c[:, 1], c[:, 2]].sum())
        assert abs(int(s.packed_info[r, 1]) - n_occ) <= 1  # float rounding of a midpoint on a cell face
    # packed_info and ray_indices agree, samples of a ray in marching order
    start, count = s.packed_info[:, 0], s.packed_info[:, 1]
    assert torch.equal(start, torch.cumsum(count, 0) - count)
    assert torch.equal(torch.repeat_interleave(torch.arange(300), count), s.ray_indices)
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert (s.t_starts[1:][same_ray] > s.t_starts[:-1][same_ray]).all()


def test_full_grid_covers_the_whole_interval():
    grid = OccupancyGrid(AABB, 8)
    assert grid.occupied_fraction() == 1.0
    o, d = _rays(200, seed=4, inside=True)
    s = march_rays(o, d, grid, near=0.0, far=1e10, step_size=0.01, max_samples=10**6, backend="cpu")
    t_min, t_max = _torch_impl.ray_interval(o, d, torch.zeros(200), torch.full((200,), 1e10), AABB)
    hit = t_min < t_max
    assert hit.sum() > 150
    start, count = s.packed_info[:, 0], s.packed_info[:, 1]
    assert (count[hit] > 0).all() and (count[~hit] == 0).all()
    first, last = start[hit], start[hit] + count[hit] - 1
    assert torch.equal(s.t_starts[first], t_min[hit])
    assert torch.equal(s.t_ends[last], t_max[hit])
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    torch.testing.assert_close(s.t_starts[1:][same_ray], s.t_ends[:-1][same_ray])  # contiguous, no gaps


def test_single_occupied_cell():
    grid = OccupancyGrid([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 4)
    density = torch.zeros(4, 4, 4)
    density[1, 2, 3] = 1.0
    grid.set_density(density, 0.5)
    # rays along +x through the cell's row; one misses it
    o = torch.tensor([[-1.0, 0.6, 0.9], [-1.0, 0.6, 0.1], [2.0, 0.6, 0.9]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    s = march_rays(o, d, grid, step_size=0.01, backend="cpu")
    _assert_same(s, march_rays(o, d, grid, step_size=0.01, backend="torch"))
    assert s.packed_info[:, 1].tolist() == [25, 0, 25]  # the cell spans x in [0.25, 0.5]: 25 steps of 0.01
    mids0 = (s.t_starts + s.t_ends)[s.ray_indices == 0] / 2 - 1.0
    assert mids0.min() > 0.25 and mids0.max() < 0.5


def test_edge_cases():
    grid = _grid()
    o, d = _rays(50, seed=5)
    # zero rays
    s = march_rays(o[:0], d[:0], grid, step_size=0.01, backend="cpu")
    assert s.packed_info.shape == (0, 2) and s.t_starts.shape == (0,) and s.ray_indices.dtype == torch.int64
    # rays that miss the box, and rays pointing away from it
    miss = march_rays(torch.tensor([[5.0, 5.0, 5.0], [0.0, 0.5, 0.0]]),
                      torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), grid, near=2.0, step_size=0.01,
                      backend="cpu")
    assert miss.packed_info.tolist() == [[0, 0], [0, 0]] and miss.t_starts.numel() == 0
    # a ray without direction gets no samples, even from inside an occupied cell
    full_grid = OccupancyGrid(AABB, 4)
    still = march_rays(torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), full_grid,
                       step_size=0.01, backend="cpu")
    assert still.packed_info[:, 1].tolist() == [0, 50]
    _assert_same(still, march_rays(torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), full_grid,
                                   step_size=0.01, backend="torch"))
    # an empty grid
    empty = OccupancyGrid(AABB, 8)
    empty.set_density(torch.zeros(512), 0.5)
    s = march_rays(o, d, empty, step_size=0.01, backend="cpu")
    assert s.t_starts.numel() == 0 and s.packed_info[:, 1].sum() == 0
    # max_samples caps each ray at its first samples
    full = march_rays(o, d, grid, step_size=0.01, backend="cpu")
    capped = march_rays(o, d, grid, step_size=0.01, max_samples=3, backend="cpu")
    assert torch.equal(capped.packed_info[:, 1], full.packed_info[:, 1].clamp(max=3))
    _assert_same(capped, march_rays(o, d, grid, step_size=0.01, max_samples=3, backend="torch"))
    # axis-aligned directions (zero components) agree with the reference
    oa = torch.tensor([[0.1, 0.2, -3.0], [-3.0, 0.7, -0.2], [0.3, 4.0, 0.1]])
    da = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    _assert_same(march_rays(oa, da, grid, step_size=0.02, backend="cpu"),
                 march_rays(oa, da, grid, step_size=0.02, backend="torch"))
    # bad arguments
    with pytest.raises(ValueError, match="step_size must be > 0, is 0"):
        march_rays(o, d, grid, step_size=0.0, backend="cpu")
    with pytest.raises(ValueError, match=r"near must be a scalar or have shape \[50\]"):
        march_rays(o, d, grid, near=torch.zeros(3), backend="cpu")


def test_update_carves_empty_space_and_decays():
    grid = OccupancyGrid([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], 16)
    sphere = lambda x: (x.norm(dim=-1) < 0.5).float() * 10.0  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        grid.update(sphere, step=step, decay=0.5, threshold=0.01, warmup_steps=8, generator=gen)
    centers = grid.cell_centers(torch.arange(grid.n_cells))
    dist = centers.norm(dim=-1)
    half_diag = (3**0.5) * (2.0 / 16) / 2
    occ = grid.binary.reshape(-1)
    assert occ[dist < 0.5 - half_diag].all()  # cells inside the sphere
    assert not occ[dist > 0.5 + half_diag].any()  # cells outside
    assert torch.equal(grid.bitfield, _torch_impl.pack_bitfield(grid.density, min(0.01, grid.density.mean())))
    # decay: a field that is now empty halves every cell, and the threshold follows the mean
    before = grid.density.clone()
    grid.update(lambda x: torch.zeros(x.shape[0]), step=100, decay=0.5, threshold=0.01, generator=gen)
    torch.testing.assert_close(grid.density, before * 0.5)
    with pytest.raises(ValueError, match="one density per point"):
        grid.update(lambda x: torch.zeros(3), step=0)


def test_rays_almost_parallel_to_a_face_keep_every_sample():
    """Rays whose direction is almost parallel to a y face and that run within 1e-6 of a cell boundary there, across
    empty cells several steps long (so marching jumps over them). The rounded exit distance of such a cell is off by
    (position rounding) / d_y, many steps: the kernel must still keep exactly the samples of stepping one at a time."""
    aabb = [-1.3, -0.4, -0.5, -0.2, 1.1, 0.9]  # extents that are not powers of two: cell faces round
    res = (11, 7, 13)
    grid = OccupancyGrid(aabb, res)
    g = torch.Generator().manual_seed(1)
    grid.set_density(torch.rand(grid.n_cells, generator=g), 0.5)
    step = 0.02
    assert min((aabb[a + 3] - aabb[a]) / res[a] for a in range(3)) >= 3 * step  # empty cells are jumped over
    n = 2000
    lo, hi = torch.tensor(aabb[:3]), torch.tensor(aabb[3:])
    o = lo + torch.rand(n, 3, generator=g) * (hi - lo)
    boundary = torch.randint(1, res[1], (n,), generator=g).float()
    o[:, 1] = aabb[1] + boundary * (aabb[4] - aabb[1]) / res[1] + (torch.rand(n, generator=g) - 0.5) * 1e-6
    d = torch.randn(n, 3, generator=g)
    d[:, 1] = (torch.rand(n, generator=g) - 0.5) * 1e-5
    o = o - 5 * d  # start outside the box
    ours = march_rays(o, d, grid, step_size=step, backend="cpu")
    ref = march_rays(o, d, grid, step_size=step, backend="torch")
    assert ref.t_starts.numel() > 10000
    _assert_same(ours, ref)

"""CUDA backend against the CPU backend and the reference (skipped without a CUDA device)."""

import pytest
import torch

import cuda_ext
from cuda_ext import HashGridConfig, OccupancyGrid, composite, hash_encode, march_rays
from cuda_ext import _backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def exts():
    return _backend.load("cuda"), _backend.load("cpu")


def test_cuda_extension_loads():
    assert _backend.load("cuda").device == "cuda"
    assert _backend.resolve("auto", CUDA) == "cuda"


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("table_dtype", [torch.float32, torch.float16])
def test_hash_encode_cuda_matches_cpu(dims, table_dtype):
    """Output and grad_x against the CPU kernels in float32 (the same arithmetic); the table gradient, which float
    atomics sum in a different order each run, against a float64 reference with a tolerance relative to the largest
    gradient. float16: the table is read as float16 (table_dtype) and its gradient comes back in float32."""
    cfg = HashGridConfig(dims, 8, 2, 14, 8, 512)
    g = torch.Generator().manual_seed(dims)
    x = torch.rand(20000, dims, generator=g)
    table = (torch.rand(cfg.n_levels, cfg.table_size, 2, generator=g) - 0.5).to(table_dtype).float()  # as read
    grad_out = torch.randn(20000, cfg.out_dim, generator=g)
    results = {}
    for key, backend, device, dtype in (("cuda", "cuda", CUDA, torch.float32), ("cpu", "cpu", "cpu", torch.float32),
                                        ("cpu64", "cpu", "cpu", torch.float64)):
        xb = x.detach().to(device, dtype).requires_grad_()
        tb = table.detach().to(device, dtype).requires_grad_()
        out = hash_encode(xb, tb, cfg, backend=backend, table_dtype=table_dtype)
        out.backward(grad_out.to(device, dtype))
        assert tb.grad.dtype == dtype
        results[key] = (out.detach().cpu(), xb.grad.cpu(), tb.grad.cpu())
    tol = 1e-5 if table_dtype == torch.float32 else 1e-3
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=tol, atol=tol)
    gx, gx_ref = results["cuda"][1], results["cpu"][1]
    assert (gx - gx_ref).abs().max() <= 10 * tol * gx_ref.abs().max()
    # float32 weights put the CPU kernels 6e-6 of the largest gradient from float64 (measured, 3D); atomics' order
    # adds ~1e-7. A float16 round trip of the gradient would add 5e-4.
    gt, gt64 = results["cuda"][2].double(), results["cpu64"][2]
    assert (gt - gt64).abs().max() <= 1e-4 * gt64.abs().max()
    ref = hash_encode(x[:2000].to(CUDA), table.to(table_dtype).to(CUDA), cfg, backend="torch")
    torch.testing.assert_close(ref.cpu().float(), results["cuda"][0][:2000], rtol=tol, atol=tol)
    # a float16 leaf table trains too (autograd returns its gradient in its own dtype)
    if table_dtype == torch.float16:
        half = table.half().to(CUDA).requires_grad_()
        hash_encode(x.to(CUDA), half, cfg, backend="cuda").backward(grad_out.to(CUDA))
        assert half.grad.dtype == torch.float16


def test_hash_encode_cuda_edge_cases():
    cfg = HashGridConfig(3, 4, 2, 10, 4, 64)
    table = cfg.init_table(device=CUDA).requires_grad_()
    out = hash_encode(torch.zeros(0, 3, device=CUDA), table, cfg, backend="cuda")
    assert out.shape == (0, cfg.out_dim)
    out.sum().backward()
    assert torch.count_nonzero(table.grad) == 0


def _scene(n_rays=4000, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], res)
    grid.set_density(torch.rand(grid.n_cells, generator=g), 0.7)
    target = torch.rand(n_rays, 3, generator=g) * 1.6 - 0.8
    origin = target + torch.randn(n_rays, 3, generator=g) * 3
    return grid, origin, target - origin


def test_march_cuda_matches_cpu_exactly():
    grid, o, d = _scene()
    cpu = march_rays(o, d, grid, near=0.5, far=8.0, step_size=0.01, backend="cpu")
    grid_gpu = OccupancyGrid([-1, -1, -1, 1, 1, 1], 32, device=CUDA)
    grid_gpu.bitfield.copy_(grid.bitfield)
    gpu = march_rays(o.to(CUDA), d.to(CUDA), grid_gpu, near=0.5, far=8.0, step_size=0.01, backend="cuda")
    assert cpu.t_starts.numel() > 10000
    for name, a, b in zip(cpu._fields, cpu, gpu):
        assert torch.equal(a, b.cpu()), f"{name} differs between CPU and CUDA"
    ref = march_rays(o[:500].to(CUDA), d[:500].to(CUDA), grid_gpu, near=0.5, far=8.0, step_size=0.01,
                     backend="torch")
    n = int(ref.packed_info[:, 1].sum())
    assert torch.equal(ref.t_starts.cpu(), cpu.t_starts[:n])
    # zero rays and an empty grid
    empty = march_rays(o[:0].to(CUDA), d[:0].to(CUDA), grid_gpu, step_size=0.01, backend="cuda")
    assert empty.packed_info.shape == (0, 2)
    grid_gpu.set_density(torch.zeros(grid_gpu.n_cells, device=CUDA), 0.5, backend="cuda")
    assert march_rays(o.to(CUDA), d.to(CUDA), grid_gpu, step_size=0.01, backend="cuda").t_starts.numel() == 0


def test_pack_bitfield_and_update_cuda():
    density = torch.rand(33 * 33 * 33, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cuda_ext.pack_bitfield(density.to(CUDA), 0.3, backend="cuda").cpu(),
                       cuda_ext.pack_bitfield(density, 0.3, backend="cpu"))
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 32, device=CUDA)
    grid.update(lambda x: (x.norm(dim=-1) < 0.5).float() * 10, step=0)
    assert 0.01 < grid.occupied_fraction() < 0.2


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_composite_cuda_matches_cpu_and_reference(eps):
    grid, o, d = _scene(3000, seed=2)
    s = march_rays(o, d, grid, step_size=0.01, backend="cpu")
    g = torch.Generator().manual_seed(3)
    sigmas = torch.rand(s.t_starts.shape[0], generator=g) * 30
    rgbs = torch.rand(s.t_starts.shape[0], 3, generator=g)
    grads = [torch.randn(3000, 3, generator=g), torch.randn(3000, generator=g), torch.randn(3000, generator=g)]
    results = {}
    for backend, device in (("cuda", CUDA), ("cpu", "cpu"), ("torch", CUDA)):
        sb, cb = sigmas.to(device).clone().requires_grad_(), rgbs.to(device).clone().requires_grad_()
        outs = composite(sb, cb, s.t_starts.to(device), s.t_ends.to(device), s.packed_info.to(device),
                         early_stop_eps=eps, backend=backend)
        torch.autograd.backward(outs, [t.to(device) for t in grads])
        results[backend] = [t.detach().cpu() for t in outs] + [sb.grad.cpu(), cb.grad.cpu()]
    for other in ("cpu", "torch"):
        for a, b in zip(results["cuda"], results[other]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["one-sided", "two-sided", "stretch", "stretch, guides"])
def test_warp_points_cuda_matches_cpu(mode):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20000, 3, generator=g) * 0.02
    ctrl = torch.randn(3, 30, 3, generator=g) * 0.02
    disp = torch.randn(3, 30, 3, generator=g) * 0.004
    rows = torch.randint(0, 3, (20000,), generator=g)
    sides = None if mode == "one-sided" else torch.randint(0, 3, (30,), generator=g)
    box = torch.tensor([-0.03, -0.02, -0.04, 0.03, 0.025, 0.04])
    guides = torch.arange(30) % 3 != 0 if mode == "stretch, guides" else None
    kw = dict(rows=rows, sides=sides, reach_z=4.0, fade=0.011, switch_width=2.5e-4, box=box,
              stretch=mode.startswith("stretch"), guides=guides)
    cpu = cuda_ext.warp_points(x, ctrl, disp, 0.008, backend="cpu", **kw)
    gpu = cuda_ext.warp_points(x.to(CUDA), ctrl.to(CUDA), disp.to(CUDA), 0.008, backend="cuda",
                               **{k: (v.to(CUDA) if torch.is_tensor(v) else v) for k, v in kw.items()})
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-7)


def test_box_weight_cuda_matches_cpu_and_mlp_falls_back_to_the_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10000, 3, generator=g)
    box = torch.tensor([0.2, 0.3, 0.1, 0.7, 0.6, 0.9])
    got = cuda_ext.box_weight(x.to(CUDA), box.to(CUDA), 0.2, backend="cuda").cpu()
    assert torch.allclose(got, cuda_ext.box_weight(x, box, 0.2, backend="cpu"), atol=1e-6)
    w, b = [torch.randn(8, 3, device=CUDA), torch.randn(2, 8, device=CUDA)], [torch.randn(8, device=CUDA),
                                                                              torch.randn(2, device=CUDA)]
    xs = torch.randn(100, 3, device=CUDA)
    out = cuda_ext.mlp_forward(xs, w, b, backend="cuda")  # CPU-only kernel: the reference serves CUDA tensors
    assert out.device.type == "cuda" and out.shape == (100, 2)
    raw = torch.randn(100, device=CUDA)
    dens = cuda_ext.unit_box_density(raw, xs.sigmoid(), 2.0, 15.0, backend="cuda")  # CPU-only kernel, as above
    assert torch.allclose(dens.cpu(), cuda_ext.unit_box_density(raw.cpu(), xs.sigmoid().cpu(), 2.0, 15.0,
                                                                backend="cpu"), rtol=1e-6)


def test_sample_positions_cuda_match_cpu_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    o, d = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    idx = torch.randint(0, 500, (20000,), generator=g)
    t0 = torch.rand(20000, generator=g) * 3
    t1 = t0 + 0.01
    cpu = cuda_ext.sample_positions(o, d, idx, t0, t1, backend="cpu")
    gpu = cuda_ext.sample_positions(o.to(CUDA), d.to(CUDA), idx.to(CUDA), t0.to(CUDA), t1.to(CUDA), backend="cuda")
    assert torch.equal(gpu.cpu(), cpu)


def test_composite_colours_cuda_match_cpu_bit_for_bit():
    g = torch.Generator().manual_seed(6)
    counts = torch.randint(0, 30, (400,), generator=g)
    info = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1)
    w, rgbs = torch.rand(int(counts.sum()), generator=g), torch.rand(int(counts.sum()), 3, generator=g)
    cpu = cuda_ext.composite_colours(w, rgbs, info, backend="cpu")
    gpu = cuda_ext.composite_colours(w.to(CUDA), rgbs.to(CUDA), info.to(CUDA), backend="cuda")
    assert torch.equal(gpu.cpu(), cpu)

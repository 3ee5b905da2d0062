"""Volume compositing: C++ CPU kernels against the reference (forward, autograd), gradcheck, analytic cases."""

import math

import pytest
import torch

from cuda_ext import composite, packed_info_from_ray_indices
from cuda_ext import _backend


@pytest.fixture(scope="module", autouse=True)
def cpu_ext():
    return _backend.load("cpu")


def _packed(n_rays, max_count, dtype=torch.float32, seed=0, sigma_scale=20.0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_count + 1, (n_rays,), generator=g)
    counts[0] = 0  # a ray without samples
    n = int(counts.sum())
    packed_info = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    # increasing t per ray, random step lengths
    deltas = torch.rand(n, generator=g, dtype=dtype) * 0.05 + 0.005
    t_ends = torch.zeros(n, dtype=dtype)
    t_starts = torch.zeros(n, dtype=dtype)
    for r in range(n_rays):
        s, c = packed_info[r].tolist()
        ends = 0.5 + torch.cumsum(deltas[s : s + c], 0)
        t_ends[s : s + c] = ends
        t_starts[s : s + c] = ends - deltas[s : s + c]
    sigmas = torch.rand(n, generator=g, dtype=dtype) * sigma_scale
    rgbs = torch.rand(n, 3, generator=g, dtype=dtype)
    return sigmas, rgbs, t_starts, t_ends, packed_info, ray_indices


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_forward_and_backward_match_reference(eps):
    sigmas, rgbs, t_starts, t_ends, packed_info, _ = _packed(300, 40, seed=1)
    grads_out = [torch.randn(300, 3), torch.randn(300), torch.randn(300)]
    results = {}
    for backend in ("cpu", "torch"):
        s, c = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
        outs = composite(s, c, t_starts, t_ends, packed_info, early_stop_eps=eps, backend=backend)
        torch.autograd.backward(outs, grads_out)
        results[backend] = (outs, s.grad, c.grad)
    for a, b in zip(results["cpu"][0], results["torch"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["cpu"][1], results["torch"][1], rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(results["cpu"][2], results["torch"][2], rtol=1e-5, atol=1e-5)
    if eps > 0:  # the sample set really was cut short somewhere
        assert (results["cpu"][2] == 0).all(dim=1).sum() > (results["cpu"][2].shape[0] * 0.05)


def test_gradcheck_float64():
    sigmas, rgbs, t_starts, t_ends, packed_info, _ = _packed(6, 5, dtype=torch.float64, seed=2, sigma_scale=30.0)
    f = lambda s, c: composite(s, c, t_starts, t_ends, packed_info, early_stop_eps=0.0, backend="cpu")  # noqa
    assert torch.autograd.gradcheck(f, (sigmas.requires_grad_(), rgbs.requires_grad_()), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_analytic_constant_density():
    # one ray, 50 samples of constant density over [0.5, 1.5]: opacity 1 - exp(-sigma L), colour = opacity * c
    n, sigma = 50, 3.0
    t = torch.linspace(0.5, 1.5, n + 1)
    packed_info = torch.tensor([[0, n]])
    rgb, depth, opacity = composite(torch.full((n,), sigma), torch.tensor([[0.2, 0.4, 0.8]]).expand(n, 3),
                                    t[:-1], t[1:], packed_info, early_stop_eps=0.0, backend="cpu")
    expected = 1.0 - math.exp(-sigma * 1.0)
    assert opacity.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(rgb[0], torch.tensor([0.2, 0.4, 0.8]) * expected)
    # expected depth: int t sigma e^{-sigma (t - 0.5)} dt over [0.5, 1.5], with the midpoint rule per step
    w = torch.exp(-sigma * (t[:-1] - 0.5)) * (1 - math.exp(-sigma * 0.02))
    assert depth.item() == pytest.approx(float((w * (t[:-1] + t[1:]) / 2).sum()), rel=1e-5)


def test_single_sample_zero_rays_and_empty_rays():
    s = torch.tensor([2.0], requires_grad=True)
    c = torch.tensor([[1.0, 0.5, 0.25]], requires_grad=True)
    rgb, depth, opacity = composite(s, c, torch.tensor([1.0]), torch.tensor([1.5]), torch.tensor([[0, 1]]),
                                    backend="cpu")
    a = 1.0 - math.exp(-1.0)
    torch.testing.assert_close(rgb, torch.tensor([[1.0, 0.5, 0.25]]) * a)
    assert depth.item() == pytest.approx(1.25 * a) and opacity.item() == pytest.approx(a)
    opacity.sum().backward()
    assert s.grad.item() == pytest.approx(0.5 * math.exp(-1.0))  # d(1 - e^{-0.5 s})/ds at s = 2
    # zero rays
    z = torch.zeros(0)
    rgb0, depth0, op0 = composite(z, torch.zeros(0, 3), z, z, torch.zeros(0, 2, dtype=torch.long), backend="cpu")
    assert rgb0.shape == (0, 3) and depth0.shape == (0,) and op0.shape == (0,)
    # rays without samples: zero colour and opacity, and zero gradient
    sr = torch.zeros(0, requires_grad=True)
    rgb, depth, opacity = composite(sr, torch.zeros(0, 3), z, z, torch.zeros(4, 2, dtype=torch.long),
                                    backend="cpu")
    assert torch.count_nonzero(rgb) == 0 and torch.count_nonzero(opacity) == 0 and rgb.shape == (4, 3)


def test_ray_indices_path_and_errors():
    sigmas, rgbs, t_starts, t_ends, packed_info, ray_indices = _packed(50, 10, seed=3)
    assert torch.equal(packed_info_from_ray_indices(ray_indices, 50), packed_info)
    a = composite(sigmas, rgbs, t_starts, t_ends, packed_info, backend="cpu")
    b = composite(sigmas, rgbs, t_starts, t_ends, ray_indices=ray_indices, n_rays=50, backend="cpu")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="must be sorted"):
        packed_info_from_ray_indices(ray_indices.flip(0), 50)
    with pytest.raises(ValueError, match=r"rgbs must have shape \[\d+, 3\], got"):
        composite(sigmas, rgbs[:, :2], t_starts, t_ends, packed_info, backend="cpu")
    with pytest.raises(ValueError, match="early_stop_eps must be >= 0, is -1"):
        composite(sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps=-1, backend="cpu")
    with pytest.raises(RuntimeError, match=r"packed_info must have shape \[R, 2\], got \[50, 3\]"):
        _backend.load("cpu").composite_forward(sigmas, rgbs, t_starts, t_ends, torch.zeros(50, 3, dtype=torch.long),
                                               0.0)


def test_march_then_composite_renders_a_sphere():
    """End to end on the CPU backend: a constant-density sphere is opaque on rays through its centre."""
    from cuda_ext import OccupancyGrid, march_rays

    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 32)
    # occupancy must be conservative: mark cells by a sphere dilated by a cell diagonal
    grid.update(lambda x: (x.norm(dim=-1) < 0.6 + 0.11).float() * 50.0, step=0, threshold=1.0,
                generator=torch.Generator().manual_seed(0))
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.9, -3.0]]).repeat(2, 1)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]).repeat(2, 1)
    s = march_rays(o, d, grid, step_size=0.005, backend="cpu")
    mid = o[s.ray_indices] + ((s.t_starts + s.t_ends) / 2)[:, None] * d[s.ray_indices]
    sig = (mid.norm(dim=-1) < 0.6).float() * 50.0
    rgb, depth, opacity = composite(sig, torch.ones(sig.shape[0], 3), s.t_starts, s.t_ends, s.packed_info,
                                    backend="cpu")
    assert opacity[0] > 0.999 and opacity[1] == 0.0
    assert depth[0] / opacity[0] == pytest.approx(3.0 - 0.6, abs=0.03)


@pytest.mark.parametrize("eps,budget", [(0.0, 0.0), (1e-2, 0.0), (1e-4, 1e-3), (0.0, 0.05)])
def test_inference_weights_match_reference_and_composite(eps, budget):
    """composite_weights: the C++ kernel against the torch reference; with skip_budget 0 its weights rebuild
    composite's outputs exactly, and with a budget the colour moves by at most the budget while opacity stays exact."""
    from cuda_ext import composite_weights

    sigmas, rgbs, t_starts, t_ends, packed_info, ray_indices = _packed(300, 40, seed=3, sigma_scale=30.0)
    out = {b: composite_weights(sigmas, t_starts, t_ends, packed_info, eps, budget, backend=b) for b in ("cpu", "torch")}
    torch.testing.assert_close(out["cpu"][0], out["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["cpu"][1], out["torch"][1], rtol=1e-5, atol=1e-6)
    weights, opacity = out["cpu"]
    rgb_ref, _, opacity_ref = composite(sigmas, rgbs, t_starts, t_ends, packed_info, early_stop_eps=eps, backend="torch")
    rgb = torch.zeros(300, 3).index_add_(0, ray_indices, weights[:, None] * rgbs)
    torch.testing.assert_close(opacity, opacity_ref, rtol=1e-5, atol=1e-6)
    if budget == 0:
        torch.testing.assert_close(rgb, rgb_ref, rtol=1e-5, atol=1e-6)
    else:
        err = (rgb - rgb_ref).abs().max()
        assert err <= budget + 1e-6
        exact = composite_weights(sigmas, t_starts, t_ends, packed_info, eps, 0.0, backend="cpu")[0]
        assert (weights == 0).sum() > (exact == 0).sum() + 10  # the budget really skipped samples
    if eps > 0:  # the early termination cut samples: they get weight 0
        assert ((weights == 0) & (sigmas > 0)).sum() > 0.05 * len(sigmas)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_colours_are_index_add_in_sample_order_bit_for_bit(dtype):
    """composite_colours: each ray's sum of weight x colour, equal bit for bit to index_add of the products (what the
    renderer did before) on the kernel and the reference; a ray with no samples is black."""
    from cuda_ext import composite_colours, composite_weights

    sigmas, rgbs, t_starts, t_ends, packed_info, ray_indices = _packed(300, 40, seed=4, sigma_scale=30.0)
    sigmas, rgbs, t_starts, t_ends = (t.to(dtype) for t in (sigmas, rgbs, t_starts, t_ends))
    weights, _ = composite_weights(sigmas, t_starts, t_ends, packed_info, 1e-4, backend="cpu")
    expected = torch.zeros(300, 3, dtype=dtype).index_add_(0, ray_indices, weights[:, None] * rgbs)
    for backend in ("cpu", "torch"):
        assert torch.equal(composite_colours(weights, rgbs, packed_info, backend=backend), expected), backend
    assert int(packed_info[1, 1]) > 0
    empty = packed_info.clone()
    empty[1, 1] = 0  # ray 1 loses its samples
    assert torch.equal(composite_colours(weights, rgbs, empty, backend="cpu")[1], torch.zeros(3, dtype=dtype))
    with pytest.raises(ValueError, match="packed_info reaches past the"):
        composite_colours(weights[:-1], rgbs[:-1], packed_info, backend="cpu")

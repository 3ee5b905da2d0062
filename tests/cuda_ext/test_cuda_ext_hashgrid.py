"""Hash-grid encoding: the C++ CPU kernels against the pure-PyTorch reference, gradcheck, edge cases."""

import pytest
import torch

import cuda_ext
from cuda_ext import HashGridConfig, hash_encode
from cuda_ext import _backend

CONFIGS = [
    # dims, levels, features, log2 T, base, finest: mixes dense (coarse) and hashed (fine) levels
    HashGridConfig(3, 6, 2, 10, 4, 128),
    HashGridConfig(2, 5, 4, 9, 4, 256),
    HashGridConfig(3, 3, 1, 12, 2, 8),
    HashGridConfig(2, 1, 8, 6, 16, 16),
    HashGridConfig(3, 3, 3, 8, 4, 32),  # a feature count without a compiled specialisation
    HashGridConfig(3, 12, 2, 16, 16, 512),  # the CPU recipe's head: 24 output columns
    HashGridConfig(2, 6, 2, 12, 16, 512),  # the smoke recipe's torso
]


@pytest.fixture(scope="module", autouse=True)
def cpu_ext():
    return _backend.load("cpu")  # built once per session (and cached on disk across sessions)


def _inputs(cfg, n, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, cfg.dims, generator=g, dtype=dtype)
    table = (torch.rand(cfg.n_levels, cfg.table_size, cfg.n_features_per_level, generator=g, dtype=dtype) - 0.5) * 2
    return x, table


def test_level_params_dense_then_hashed():
    cfg = HashGridConfig(3, 16, 2, 19, 16, 2048)
    scales, res, dense = cfg.level_params()
    assert scales[0] == pytest.approx(15.0) and scales[-1] == pytest.approx(2047.0, rel=1e-5)
    assert all(r1 >= r0 for r0, r1 in zip(res, res[1:]))
    assert dense[0] and not dense[-1]
    assert all(d == (r**3 <= cfg.table_size) for r, d in zip(res, dense))
    assert cfg.out_dim == 32


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_forward_matches_reference(cfg):
    x, table = _inputs(cfg, 3000)
    ours = hash_encode(x, table, cfg, backend="cpu")
    ref = hash_encode(x, table, cfg, backend="torch")
    assert ours.shape == (3000, cfg.out_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.n_features_per_level == 2], ids=str)
def test_every_point_is_encoded_alike_wherever_it_falls_in_a_batch(cfg):
    """On CPUs with AVX-512 the float path encodes groups of 16 points by hand and the rest with the portable loop:
    shifting the batch by 5 moves points between the two, and the rows must stay the same bit for bit."""
    x, table = _inputs(cfg, 1003, seed=2)
    whole = hash_encode(x, table, cfg, backend="cpu")
    assert torch.equal(hash_encode(x[5:], table, cfg, backend="cpu"), whole[5:])
    assert torch.equal(hash_encode(x[:7], table, cfg, backend="cpu"), whole[:7])


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_backward_matches_reference_autograd(cfg):
    x, table = _inputs(cfg, 3000, seed=1)
    grad_out = torch.randn(3000, cfg.out_dim, generator=torch.Generator().manual_seed(2))
    grads = {}
    for backend in ("cpu", "torch"):
        xb, tb = x.clone().requires_grad_(), table.clone().requires_grad_()
        hash_encode(xb, tb, cfg, backend=backend).backward(grad_out)
        grads[backend] = (xb.grad, tb.grad)
    torch.testing.assert_close(grads["cpu"][1], grads["torch"][1], rtol=1e-5, atol=1e-5)
    # d/dx scales with the finest resolution: compare relative to its magnitude
    gx, gx_ref = grads["cpu"][0], grads["torch"][0]
    assert (gx - gx_ref).abs().max() <= 1e-5 * gx_ref.abs().max()


def test_gradcheck_float64():
    cfg = HashGridConfig(3, 2, 2, 6, 2, 5)
    x, table = _inputs(cfg, 7, dtype=torch.float64, seed=3)
    x = (x * 0.8 + 0.1).requires_grad_()
    table.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hash_encode(a, b, cfg, backend="cpu"), (x, table), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)
    cfg2 = HashGridConfig(2, 3, 1, 5, 2, 9)
    x2, table2 = _inputs(cfg2, 6, dtype=torch.float64, seed=4)
    assert torch.autograd.gradcheck(lambda a, b: hash_encode(a, b, cfg2, backend="cpu"),
                                    (x2.requires_grad_(), table2.requires_grad_()), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


def test_vertex_reads_its_table_entry():
    """At a grid vertex of a dense level the encoding is the table entry of that vertex (independent of the ref)."""
    cfg = HashGridConfig(3, 1, 2, 12, 8, 8)  # one dense level, scale 7, resolution 9
    (scale,), (res,), (dense,) = cfg.level_params()
    assert dense and scale == 7.0
    table = torch.randn(1, cfg.table_size, 2, dtype=torch.float64)
    ijk = torch.tensor([[1, 1, 1], [3, 1, 4], [7, 7, 7], [2, 6, 5], [1, 7, 7]])
    x = (ijk.double() - 0.5) / scale  # pos = x * scale + 0.5 = ijk: all the weight on vertex ijk
    out = hash_encode(x, table, cfg, backend="cpu")
    index = ijk[:, 0] + res * ijk[:, 1] + res * res * ijk[:, 2]
    torch.testing.assert_close(out, table[0, index])


def test_float64_and_float32_agree():
    cfg = CONFIGS[0]
    x, table = _inputs(cfg, 500, dtype=torch.float64, seed=5)
    out64 = hash_encode(x, table, cfg, backend="cpu")
    assert out64.dtype == torch.float64
    out32 = hash_encode(x.float(), table.float(), cfg, backend="cpu")
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)


def test_edge_cases_zero_single_outside_batched_flat():
    cfg = CONFIGS[0]
    x, table = _inputs(cfg, 64, seed=6)
    table.requires_grad_()
    # zero points
    x0 = torch.zeros(0, 3, requires_grad=True)
    out0 = hash_encode(x0, table, cfg, backend="cpu")
    assert out0.shape == (0, cfg.out_dim)
    out0.sum().backward()
    assert torch.count_nonzero(table.grad) == 0 and x0.grad.shape == (0, 3)
    # a single point
    torch.testing.assert_close(hash_encode(x[:1], table, cfg, backend="cpu"),
                               hash_encode(x[:1], table, cfg, backend="torch"))
    # points outside [0, 1] are clamped and get no gradient along the clamped axes
    xo = torch.tensor([[-0.5, 0.3, 1.5], [0.2, 2.0, 0.7]], requires_grad=True)
    out = hash_encode(xo, table, cfg, backend="cpu")
    torch.testing.assert_close(out, hash_encode(xo.detach().clamp(0, 1), table, cfg, backend="torch"))
    out.sum().backward()
    assert xo.grad[0, 0] == 0 and xo.grad[0, 2] == 0 and xo.grad[1, 1] == 0
    assert xo.grad[0, 1] != 0
    # leading batch dimensions and a flat table
    xb = x.reshape(4, 16, 3)
    outb = hash_encode(xb, table.detach().reshape(-1), cfg, backend="cpu")
    assert outb.shape == (4, 16, cfg.out_dim)
    torch.testing.assert_close(outb.reshape(64, -1), hash_encode(x, table.detach(), cfg, backend="torch"))


def test_bad_inputs_raise_with_the_bad_value():
    cfg = CONFIGS[0]
    x, table = _inputs(cfg, 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\], got \[4, 2\]"):
        hash_encode(x[:, :2], table, cfg, backend="cpu")
    with pytest.raises(ValueError, match="table must have shape"):
        hash_encode(x, table[:, :10], cfg, backend="cpu")
    with pytest.raises(ValueError, match="dims must be 2 or 3, is 4"):
        HashGridConfig(dims=4)
    with pytest.raises(ValueError, match="n_levels"):
        HashGridConfig(n_levels=40)
    with pytest.raises(ValueError, match="backend must be one of"):
        hash_encode(x, table, cfg, backend="gpu")
    with pytest.raises(ValueError, match="cannot run tensors on cpu"):
        hash_encode(x, table, cfg, backend="cuda")
    with pytest.raises(RuntimeError, match="must be float32 or float64"):
        _backend.load("cpu").hash_encode_forward(x.half(), table.half(), *cfg.level_params())


def test_module_trains_its_table():
    cfg = HashGridConfig(2, 4, 2, 8, 4, 64)
    grid = cuda_ext.HashGrid(cfg, backend="cpu")
    assert grid.table.shape == (4, 256, 2) and grid.table.abs().max() <= 1e-4
    x = torch.rand(256, 2, generator=torch.Generator().manual_seed(7))
    target = torch.sin(6 * x).sum(-1, keepdim=True)
    head = torch.nn.Linear(cfg.out_dim, 1)
    opt = torch.optim.Adam(list(grid.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = ((head(grid(x)) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]

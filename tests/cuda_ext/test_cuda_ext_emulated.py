"""The hash-grid CUDA kernels, run on the host by tests/cuda_ext/cuda_emulation.cpp (threads of a block as
std::threads meeting at __syncthreads, shared memory as an array), against the CPU extension: checks the tiling of
points and levels, the shared-memory staging and the coalesced copies without a GPU."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cuda_ext import HashGridConfig, hash_encode
from cuda_ext import _backend

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "c++")
pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator with hashgrid.cu's kernels (its anonymous namespace) pasted in, compiled with -fopenmp so that
    atomic_add is atomic across the emulated threads."""
    kernels = re.search(r"^namespace \{$.*?^\}  // namespace$", (_backend.CSRC / "hashgrid.cu").read_text(),
                        re.S | re.M).group(0)
    root = tmp_path_factory.mktemp("emulation")
    source = root / "emulation.cpp"
    source.write_text((HERE / "cuda_emulation.cpp").read_text().replace("// KERNELS", kernels))
    binary = root / "emulation"
    r = subprocess.run([CXX, "-std=c++20", "-O1", "-fopenmp", "-pthread", f"-I{_backend.CSRC}", str(source), "-o",
                        str(binary)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return binary


@pytest.mark.parametrize("dims, levels, features, threads", [(3, 16, 2, 64), (2, 5, 3, 96), (3, 24, 8, 128)])
def test_emulated_cuda_hash_grid_matches_the_cpu_kernels(emulator, tmp_path, dims, levels, features, threads):
    """Shapes: the default layout; odd row length and a runtime feature count; a long row (fewer points per tile).
    The point counts leave a partial last tile."""
    cfg = HashGridConfig(dims, levels, features, 12, 4, 256)
    n = 700
    g = torch.Generator().manual_seed(dims * 100 + levels)
    x = torch.rand(n, dims, generator=g)
    x[:5] = torch.tensor([-0.1, 1.2, 0.5])[:dims]  # clamped points
    table = torch.rand(cfg.n_levels, cfg.table_size, features, generator=g) - 0.5
    grad_out = torch.randn(n, cfg.out_dim, generator=g)
    scales, resolutions, dense = cfg.level_params()
    lines = [f"{dims} {levels} {features} {cfg.table_size} {n}"]
    lines += [f"{s!r} {r} {int(d)}" for s, r, d in zip(scales, resolutions, dense)]
    (tmp_path / "params.txt").write_text("\n".join(lines) + "\n")
    for name, t in (("x", x), ("table", table), ("grad_out", grad_out)):
        t.numpy().astype(np.float32).tofile(tmp_path / f"{name}.f32")
    r = subprocess.run([str(emulator), str(tmp_path), str(tmp_path), str(threads)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = torch.from_numpy(np.fromfile(tmp_path / "out.f32", dtype=np.float32)).view(n, cfg.out_dim)
    grad_table = torch.from_numpy(np.fromfile(tmp_path / "grad_table.f32", dtype=np.float32)).view(table.shape)
    grad_x = torch.from_numpy(np.fromfile(tmp_path / "grad_x.f32", dtype=np.float32)).view(n, dims)

    xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
    ref = hash_encode(xr, tr, cfg, backend="cpu")
    ref.backward(grad_out)
    assert torch.equal(out, ref.detach())  # same arithmetic per (point, level): bit for bit
    assert torch.equal(grad_x, xr.grad)
    assert (grad_table - tr.grad).abs().max() <= 1e-5 * tr.grad.abs().max()  # atomics: another summation order

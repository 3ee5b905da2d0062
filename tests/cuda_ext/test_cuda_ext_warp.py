"""The point warp by control points (csrc/warp.h): C++ CPU kernels against the reference, and what it promises."""

import math

import pytest
import torch

from cuda_ext import WarpControls, _backend, warp_points


@pytest.fixture(scope="module", autouse=True)
def cpu_ext():
    return _backend.load("cpu")


def _case(n=3000, n_sets=3, n_ctrl=20, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=dtype) * 0.02
    ctrl = torch.randn(n_sets, n_ctrl, 3, generator=g, dtype=dtype) * 0.02
    disp = torch.randn(n_sets, n_ctrl, 3, generator=g, dtype=dtype) * 0.004
    rows = torch.randint(0, n_sets, (n,), generator=g)
    sides = torch.randint(0, 3, (n_ctrl,), generator=g)
    return x, ctrl, disp, rows, sides


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-15), (torch.float32, 2e-8)])
@pytest.mark.parametrize("mode", ["one-sided", "two-sided", "stretch", "stretch, guides"])
@pytest.mark.parametrize("with_rows", [False, True])
def test_cpu_kernel_matches_reference(dtype, tol, mode, with_rows):
    x, ctrl, disp, rows, sides = _case(dtype=dtype)
    if not with_rows:
        ctrl, disp, rows = ctrl[:1], disp[:1], None
    box = torch.tensor([-0.03, -0.02, -0.04, 0.03, 0.025, 0.04])
    guides = torch.arange(len(sides)) % 3 != 0 if mode == "stretch, guides" else None  # a third give no height
    kw = dict(rows=rows, sides=None if mode == "one-sided" else sides, reach_z=4.0, fade=math.exp(-4.5),
              switch_width=2.5e-4, box=box, stretch=mode.startswith("stretch"), guides=guides)
    out = warp_points(x, ctrl, disp, 0.008, backend="cpu", **kw)
    ref = warp_points(x, ctrl, disp, 0.008, backend="torch", **kw)
    assert out.dtype == dtype
    assert float((ref - x).abs().max()) > 1e-3  # the case moves points
    assert float((out - ref).abs().max()) < tol
    outside = ((x < box[:3]) | (x > box[3:])).any(-1)
    assert outside.any() and torch.equal(out[outside], x[outside])  # outside the box: untouched, bit for bit


def test_a_lone_control_point_moves_its_neighbourhood_and_fades_away():
    ctrl = torch.tensor([[[0.0, 0.0, 0.0]]])
    disp = torch.tensor([[[0.0, 0.01, 0.0]]])
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.03], [0.05, 0.0, 0.0]])
    out = warp_points(x, ctrl, disp, 0.008, reach_z=4.0, fade=math.exp(-4.5), backend="cpu")
    moved = x[:, 1] - out[:, 1]
    assert 0.0098 < float(moved[0]) < 0.01  # at the point: (almost) its whole displacement, back
    assert float(moved[1]) > 0.5 * 0.01  # 3 cm deep is under one depth sigma (4 x 8 mm): still follows
    assert float(moved[2]) < 1e-5  # 5 cm across (6 sigma): nothing


def test_two_sided_points_follow_the_side_they_lie_on():
    """Upper side moved down 8 mm to y = 0 (a closed lid), lower side still at y = 0: a point just above the closed
    line follows the upper side, one below follows the lower side, though both sides are equally near."""
    ctrl = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    disp = torch.tensor([[[0.0, 0.008, 0.0], [0.0, 0.0, 0.0]]])  # +y is down
    sides = torch.tensor([1, 0])
    x = torch.tensor([[0.0, -0.002, 0.0], [0.0, 0.002, 0.0]])  # 8 switch widths either side
    for backend in ("cpu", "torch"):
        out = warp_points(x, ctrl, disp, 0.003, sides=sides, reach_z=4.0, fade=math.exp(-4.5), switch_width=2.5e-4,
                          backend=backend)
        assert float(x[0, 1] - out[0, 1]) > 0.005, backend  # above: looked up where the upper side came from
        assert abs(float(x[1, 1] - out[1, 1])) < 1e-4, backend  # below: the lower side did not move


def test_a_stretched_gap_maps_onto_the_gap_at_rest():
    """Lips 2 mm apart at rest, the lower one moved 4 mm down: with `stretch`, the 6 mm gap between them is looked up
    in the 2 mm rest gap, evenly (a third of each point's height); switched at the middle (over 0.5 mm), a point 1.5 mm
    above the middle follows the upper lip (looked up near where it is) and one below it, the lower."""
    ctrl = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.006, 0.0]]])
    disp = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.004, 0.0]]])  # +y is down
    sides = torch.tensor([1, 0])
    x = torch.tensor([[0.0, y, 0.0] for y in (0.0015, 0.003, 0.0045)])
    for backend in ("cpu", "torch"):
        kw = dict(sides=sides, reach_z=4.0, fade=math.exp(-4.5), switch_width=5e-4, backend=backend)
        out = warp_points(x, ctrl, disp, 0.01, stretch=True, **kw)
        assert torch.allclose(out[:, 1], x[:, 1] / 3, atol=1e-4), backend
        edge = warp_points(x, ctrl, disp, 0.01, **kw)
        assert float(edge[0, 1]) > 0.0012 and float(edge[2, 1]) < 0.0008, backend  # 1.3 and 0.7 mm: not stretched


def test_prepared_controls_move_every_chunk_as_one_call():
    x, ctrl, disp, rows, sides = _case()
    kw = dict(sides=sides, reach_z=4.0, fade=math.exp(-4.5), switch_width=2.5e-4)
    controls = WarpControls.prepare(ctrl, disp, 0.008, backend="cpu", **kw)
    whole = warp_points(x, ctrl, disp, 0.008, rows=rows, backend="cpu", **kw)
    chunks = torch.cat([controls.apply(x[i:i + 700], rows[i:i + 700]) for i in range(0, len(x), 700)])
    assert torch.equal(chunks, whole)
    with pytest.raises(ValueError, match="prepared for torch.float32 points, got torch.float64"):
        controls.apply(x.double(), rows)


def test_bad_inputs_name_the_problem():
    x, ctrl, disp, rows, sides = _case()
    with pytest.raises(ValueError, match="rows are needed"):
        warp_points(x, ctrl, disp, 0.008, backend="cpu")
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 3\)"):
        warp_points(x, ctrl, disp, 0.008, rows=rows + 1, backend="cpu")
    with pytest.raises(ValueError, match="sides must have shape"):
        warp_points(x, ctrl, disp, 0.008, rows=rows, sides=sides[:-1], backend="cpu")
    with pytest.raises(ValueError, match="x must have shape"):
        warp_points(x[:, :2], ctrl, disp, 0.008, rows=rows, backend="cpu")
    with pytest.raises(ValueError, match="the lower side has no guide"):
        warp_points(x, ctrl, disp, 0.008, rows=rows, sides=sides, guides=sides == 1, stretch=True, backend="cpu")
    empty = warp_points(x[:0], ctrl, disp, 0.008, rows=rows[:0], backend="cpu")
    assert empty.shape == (0, 3)

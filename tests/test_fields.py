"""Unit tests of the fields, the renderer and the config system (fast, CPU, tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cuda_ext import OccupancyGrid
from nerf_talk.config import HeadConfig, TorsoConfig, load_config
from nerf_talk.errors import UserError
from nerf_talk.fields import HeadCodes, HeadField, TorsoField, eye_region, head_box, mouth_region, pose_features
from nerf_talk.render import Intrinsics, over_background, pixel_rays, render_rays
from nerf_talk.motion.basis import PersonalMotionBasis
from preprocess.mesh_topology import LEFT_EYE_LOOP, LOWER_FACE, RIGHT_EYE_LOOP

SMALL_HEAD = HeadConfig(n_levels=4, log2_table_size=10, base_resolution=4, finest_resolution=32, hidden=16,
                        motion_code=8, latent_dim=4, geo_features=7)


def _template(seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(478, 3))
    t = t / np.linalg.norm(t, axis=1, keepdims=True) * 0.1
    t[:, 2] = -np.abs(t[:, 2])
    lower = list(LOWER_FACE)  # lips and jaw around the mouth, as on a face
    t[lower] = np.array([0.0, 0.05, -0.085]) + rng.uniform(-0.02, 0.02, size=(len(lower), 3))
    return t


def test_head_box_contains_template_with_padding():
    t = _template()
    box = np.array(head_box(t, padding=0.3, neck_extension=0.5))
    assert (box[:3] < t.min(0)).all() and (box[3:] > t.max(0)).all()
    assert box[4] - t.max(0)[1] > 0.5 * np.ptp(t[:, 1])  # extended downwards for the neck
    with pytest.raises(ValueError):
        head_box(np.zeros((5, 2)), 0.3, 0.5)


def _field(n_motion=3, n_frames=5):
    t = _template()
    torch.manual_seed(0)
    return HeadField(SMALL_HEAD, head_box(t, 0.3, 0.5), n_motion, n_frames, mouth_region(t), backend="torch"), t


def test_head_field_density_and_outputs():
    field, _ = _field()
    x = torch.rand(50, 3) * 0.2 - 0.1
    sigma, geo = field.get_density(x)
    assert sigma.shape == (50,) and geo.shape == (50, SMALL_HEAD.geo_features)
    assert (sigma >= 0).all()
    far = torch.full((2, 3), 5.0)  # outside the box: empty
    assert (field.get_density(far)[0] == 0).all()
    codes = HeadCodes(torch.randn(50, 3), torch.rand(50, 3), torch.randn(50, 4))
    rgb = field.get_outputs(x, geo, codes)
    assert rgb.shape == (50, 3) and (rgb >= 0).all() and (rgb <= 1).all()
    rgb.sum().backward()
    assert field.motion_embed[0].weight.grad is not None and field.grid.table.grad is not None


def test_latent_is_off_in_the_mouth_region():
    field, t = _field()
    torch.nn.init.normal_(field.color_mlp[0].weight)  # make the latent's effect visible
    inside = torch.tensor(t[list(LOWER_FACE)][:4], dtype=torch.float32)
    outside = torch.tensor([[0.0, -0.08, -0.05]] * 4)
    assert field.in_mouth_region(inside).all() and not field.in_mouth_region(outside).any()
    for x, changes in ((inside, False), (outside, True)):
        _, geo = field.get_density(x)
        motion, eyes = torch.zeros(4, 3), torch.ones(4, 3)
        a = field.get_outputs(x, geo, HeadCodes(motion, eyes, torch.ones(4, 4) * 3))
        b = field.get_outputs(x, geo, HeadCodes(motion, eyes, None))
        assert (not torch.allclose(a, b)) == changes


def test_torso_field_starts_undeformed_and_pose_features():
    torch.manual_seed(0)
    f = TorsoField(TorsoConfig(n_levels=4, log2_table_size=10, finest_resolution=32, hidden=16, pose_code=4),
                   backend="torch")
    uv = torch.rand(20, 2)
    poses = torch.eye(4).expand(20, 4, 4).clone()
    poses[:, :3, 3] = torch.tensor([0.0, 0.0, -0.6])
    feats = pose_features(poses, torch.tensor([0.0, 0.0, -0.6]), 0.6)
    assert torch.allclose(feats, torch.zeros(20, 9))  # frontal pose at the mean position
    rgb, alpha = f(uv, feats)
    assert rgb.shape == (20, 3) and alpha.shape == (20,)
    assert f.deform[-1].weight.abs().sum() == 0  # no deformation before training


def test_pixel_rays_follow_opencv_axes():
    intr = Intrinsics(50.0, 50.0, 16.0, 16.0, 32, 32)
    c2h = torch.eye(4)
    c2h[:3, 3] = torch.tensor([0.1, 0.2, -0.6])
    o, d = pixel_rays(c2h[None].expand(3, 4, 4), torch.tensor([[15, 15], [31, 15], [15, 31]]), intr)
    assert torch.allclose(o[0], c2h[:3, 3])
    assert torch.allclose(d.norm(dim=-1), torch.ones(3))
    assert d[0, 2] > 0.999  # the central pixel looks along +z
    assert d[1, 0] > 0 and d[2, 1] > 0  # right is +x, down is +y
    c2h[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.3, 0.1], [0.3, 0.0, -0.2], [-0.1, 0.2, 0.0]]))
    pixels = torch.tensor([[15, 15], [31, 15], [15, 31], [0, 7]])
    one = pixel_rays(c2h, pixels, intr)  # one pose for every ray (a whole frame)
    per_ray = pixel_rays(c2h[None].expand(4, 4, 4), pixels, intr)
    assert torch.equal(one[0], per_ray[0]) and torch.allclose(one[1], per_ray[1], atol=1e-6)


def test_render_rays_sphere_and_layers():
    grid = OccupancyGrid([-0.2] * 3 + [0.2] * 3, 16)
    radius = 0.1

    def radiance(positions, ray_indices):  # an opaque red sphere
        sigma = (positions.norm(dim=-1) < radius).float() * 2000.0
        return sigma, torch.tensor([1.0, 0.0, 0.0]).expand(len(positions), 3)

    o = torch.tensor([[0.0, 0.0, -0.6], [0.15, 0.15, -0.6]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = render_rays(o, d, grid, radiance, step_size=0.004, max_samples=200, backend="torch")
    assert out.opacity[0] > 0.99 and out.opacity[1] < 1e-6
    assert math.isclose(float(out.depth[0] / out.opacity[0]), 0.5, abs_tol=0.01)
    bg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    rgb = over_background(out.rgb, out.opacity, bg)
    assert torch.allclose(rgb[0], torch.tensor([1.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(rgb[1], bg[1])


def test_motion_basis_recovers_a_one_dimensional_motion():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3))
    m = np.sin(np.arange(60) / 3.0)
    motion = m[:, None, None] * a[None] + rng.normal(size=(60, 10, 3)) * 1e-4
    basis = PersonalMotionBasis.fit(motion, 8)
    c = basis.coefficients(motion)
    assert c.shape == (60, 8)
    assert basis.explained(motion) > 0.999
    assert abs(np.corrcoef(c[:, 0].numpy(), m)[0, 1]) > 0.999
    assert c[:, 1:].abs().max() < 0.05  # the noise components stay small (one scale for all)


def test_config_recipe_overrides_and_errors(tmp_path):
    cfg = load_config("recipes/smoke_cpu.toml", ["stages.0.steps=7", "data.scale=0.5", "head.hidden=8"])
    assert cfg.stages[0].steps == 7 and cfg.data.scale == 0.5 and cfg.head.hidden == 8
    assert [s.kind for s in cfg.stages] == ["head", "mouth", "torso"]
    i, stage, local = cfg.stage_at(8)
    assert (i, stage.kind, local) == (1, "mouth", 1)
    for recipe in ("head", "torso"):
        load_config(f"recipes/{recipe}.toml")
    with pytest.raises(UserError, match="unknown setting"):
        load_config(None, ["head.no_such_thing=1"])
    with pytest.raises(UserError, match="kind"):
        load_config(None, ["stages.0.kind=lips"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nscale = 'big'\n")
    with pytest.raises(UserError, match="data.scale"):
        load_config(bad)


def test_motion_shapes_density_only_in_the_mouth_region():
    field, t = _field()
    inside = torch.tensor(t[list(LOWER_FACE)][:6], dtype=torch.float32)
    outside = torch.tensor([[0.0, -0.08, -0.05]] * 6)
    x = torch.cat([inside, outside])
    m_a, m_b = torch.zeros(12, 3), torch.full((12, 3), 2.0)
    # Untrained: the residual's last layer is 0, so the field starts as the motion-free one.
    assert torch.equal(field.get_density(x, m_b)[0], field.get_density(x)[0])
    torch.nn.init.normal_(field.mouth_mlp[-1].weight)
    torch.nn.init.normal_(field.mouth_mlp[-1].bias)
    (sa, ga), (sb, gb) = field.get_density(x, m_a), field.get_density(x, m_b)
    # The box's core (the lip landmarks, well inside its feathered faces) changes with the motion, outside not at all.
    w = field.mouth_weight(inside)
    assert (w > 0).all()
    assert not torch.allclose(sa[:6], sb[:6]) and not torch.allclose(ga[:6], gb[:6])
    assert torch.equal(sa[6:], sb[6:]) and torch.equal(ga[6:], gb[6:])
    # The residual reaches the motion through autograd (it is trained by the photometric loss).
    sb.sum().backward()
    assert field.mouth_mlp[0].weight.grad.abs().sum() > 0


def test_mouth_weight_feathers_to_zero_at_the_box_faces():
    field, _ = _field()
    lo, hi = field.mouth_box[:3], field.mouth_box[3:]
    centre = (lo + hi) / 2
    assert float(field.mouth_weight(centre[None])) == 1.0
    on_face = centre.clone()
    on_face[0] = lo[0]
    assert float(field.mouth_weight(on_face[None])) == 0.0
    near = centre.clone()
    near[1] = hi[1] - 0.5 * 0.2 * (hi[1] - lo[1])  # half-way through the feathered band
    assert 0.4 < float(field.mouth_weight(near[None])) < 0.6


def test_occupancy_density_keeps_what_some_motion_fills_in_the_mouth_region():
    field, t = _field()
    inside = torch.tensor(t[list(LOWER_FACE)][:4], dtype=torch.float32)
    far = torch.tensor([[0.0, -0.08, -0.05]])
    with torch.no_grad():
        field.density_mlp[-1].bias[0] = -30.0  # a field that is empty everywhere without motion ...
        # ... whose mouth residual is 100 relu(m0) on the density: it fills the mouth when the first coefficient is 2
        for layer in (field.mouth_mlp[0], field.mouth_mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        field.mouth_mlp[0].weight[0, -3] = 1.0
        field.mouth_mlp[-1].weight[0, 0] = 100.0
    probes = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with torch.no_grad():
        assert (field.density_fn(inside) < 1e-3).all()  # no probes: the motion-free field
        assert (field.density_fn(inside, probes[:1]) < 1e-3).all()  # a closed mouth fills nothing
        assert (field.mouth_weight(inside) > 0.3).all()
        assert (field.density_fn(inside, probes) > 100.0).all()  # the open one does: the grid must keep those cells
        assert float(field.density_fn(far, probes)) < 1e-3  # outside the box the motion has no say
        grid = OccupancyGrid(field.aabb.tolist(), 8)
        grid.update(lambda x: field.density_fn(x, probes), 0, threshold=1.0, warmup_steps=1, backend="torch")
        assert 0 < grid.occupied_fraction() < 0.5
        empty = OccupancyGrid(field.aabb.tolist(), 8)
        empty.update(lambda x: field.density_fn(x, probes[:1]), 0, threshold=1.0, warmup_steps=1, backend="torch")
        assert empty.occupied_fraction() == 0


def test_motion_changes_colour_only_in_the_mouth_region():
    field, t = _field()
    torch.nn.init.normal_(field.color_mlp[0].weight)  # make the motion's effect visible
    inside = torch.tensor(t[list(LOWER_FACE)][:4], dtype=torch.float32)
    outside = torch.tensor([[0.0, -0.08, -0.05]] * 4)
    eyes = torch.ones(4, 3)
    for x, changes in ((inside, True), (outside, False)):
        _, geo = field.get_density(x)
        a = field.get_outputs(x, geo, HeadCodes(torch.zeros(4, 3), eyes, None))
        b = field.get_outputs(x, geo, HeadCodes(torch.full((4, 3), 3.0), eyes, None))
        assert (not torch.allclose(a, b)) == changes


def test_motion_code_in_a_batch_mixing_mouth_and_face_samples():
    # The motion branch runs only on the samples the mouth box weighs: in a mixed batch each sample gets the colour
    # it gets on its own, and the motion embedding and attention still get their gradient.
    field, t = _field()
    torch.nn.init.normal_(field.color_mlp[0].weight)
    inside = torch.tensor(t[list(LOWER_FACE)][:4], dtype=torch.float32)
    x = torch.cat([inside, torch.tensor([[0.0, -0.08, -0.05]] * 4)])[[0, 4, 1, 5, 2, 6, 3, 7]]
    motion, eyes = torch.randn(8, 3), torch.ones(8, 3)
    _, geo = field.get_density(x)
    rgb = field.get_outputs(x, geo, HeadCodes(motion, eyes, None))
    for k in range(8):
        alone = field.get_outputs(x[k:k + 1], geo[k:k + 1], HeadCodes(motion[k:k + 1], eyes[k:k + 1], None))
        assert torch.allclose(rgb[k], alone[0], atol=1e-6)
    rgb.sum().backward()
    assert field.motion_embed[0].weight.grad.abs().sum() > 0 and field.attention.weight.grad.abs().sum() > 0


def test_eye_code_changes_colour_only_in_the_eye_region():
    t = _template()
    eyes = list(LEFT_EYE_LOOP + RIGHT_EYE_LOOP)  # two eye contours above the mouth, as on a face
    jitter = np.random.default_rng(1).uniform(-0.03, 0.03, (len(eyes), 3)) * [1, 0.2, 0.2]
    t[eyes] = np.array([0.0, -0.03, -0.09]) + jitter
    torch.manual_seed(0)
    field = HeadField(SMALL_HEAD, head_box(t, 0.3, 0.5), 3, 5, mouth_region(t), backend="torch", eye_box=eye_region(t))
    torch.nn.init.normal_(field.color_mlp[0].weight)  # make the eye code's effect visible
    inside = torch.tensor(t[list(LEFT_EYE_LOOP[:2] + RIGHT_EYE_LOOP[:2])], dtype=torch.float32)
    outside = torch.tensor(t[list(LOWER_FACE)][:4], dtype=torch.float32)  # the mouth: far below the eyes
    assert (field.eye_weight(inside) > 0.5).all() and (field.eye_weight(outside) == 0).all()
    for x, changes in ((inside, True), (outside, False)):
        _, geo = field.get_density(x)
        motion = torch.zeros(4, 3)
        a = field.get_outputs(x, geo, HeadCodes(motion, torch.tensor([[1.0, 1.0, 0.0]] * 4), None))
        b = field.get_outputs(x, geo, HeadCodes(motion, torch.tensor([[0.1, 0.1, 1.0]] * 4), None))
        assert (not torch.allclose(a, b)) == changes
    # Built without a box (as _field is) the eye code acts everywhere, and the box is part of the state dict: a stored
    # avatar's own box is what a loaded field uses.
    plain, _ = _field()
    assert (plain.eye_weight(outside) == 1).all() and "eye_box" in plain.state_dict()

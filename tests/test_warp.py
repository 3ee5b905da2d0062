"""The landmark warp (nerf_talk/fields/warp.py): the drive moves the neutral face's lips, jaw and lids."""

import numpy as np
import pytest
import torch

from nerf_talk.fields.warp import EYE_POINTS, LOWER_SIGMA, MOUTH_CONTEXT, FaceWarp
from nerf_talk.motion.basis import PersonalMotionBasis
from preprocess.mesh_topology import (JAW, LEFT_EYE_LOOP, LIPS_INNER_LOOP, LIPS_OUTER_LOOP, LOWER_FACE,
                                     LOWER_LIP_INNER, UPPER_LIP_INNER)


def _face(seed=0):
    """A neutral face of 478 points spread 2 cm apart around a 10 cm head (rest positions only matter locally)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.05, 0.05, (478, 3))


def _warp(n_frames=60, seed=0):
    """A FaceWarp from a fake tracking: the lower face moves along one random direction (the 'jaw'), the left upper
    lid points move down 8 mm as the left eye closes."""
    rng = np.random.default_rng(seed)
    neutral = _face(seed)
    # metres at unit opening: neighbouring landmarks move alike (5 mm down), with a little of their own (0.5 mm)
    jaw = np.array([0.0, 0.005, 0.0]) + rng.normal(size=(len(LOWER_FACE), 3)) * 0.0005
    opening = rng.uniform(0, 1, n_frames)
    face_size = 0.1
    motion = opening[:, None, None] * jaw[None] / face_size  # face-size units, as face_motion writes it
    basis = PersonalMotionBasis.fit(motion.astype(np.float32), 4)
    openness = np.stack([rng.uniform(0, 1.2, n_frames), np.ones(n_frames)], 1)
    head = np.repeat(neutral[None], n_frames, 0)
    head[:, list(LOWER_FACE)] += opening[:, None, None] * jaw[None]
    left = [EYE_POINTS.index(p) for p in LEFT_EYE_LOOP]
    head[:, [EYE_POINTS[j] for j in left], 1] += (1 - openness[:, :1]) * 0.008
    w = FaceWarp(len(basis.components))
    for k, v in FaceWarp.tracking_tensors(neutral, face_size, basis, basis.coefficients(motion).numpy(), head,
                                             openness, list(range(n_frames))).items():
        getattr(w, k).copy_(v)
    return w, neutral, jaw, basis, face_size


def test_the_zero_warp_is_the_identity():
    x = torch.rand(100, 3) * 0.1
    w = FaceWarp(4)
    assert torch.equal(w(x, torch.randn(100, 4), torch.rand(100, 3)), x)


def test_displaced_landmarks_map_back_to_their_neutral_positions():
    w, neutral, travel, open_, rest_motion = _mouth_warp()
    lf = list(LOWER_FACE)
    moved = torch.tensor(neutral[lf] + travel[lf], dtype=torch.float32)
    back = w(moved, open_, None)
    rest = torch.tensor(neutral[lf], dtype=torch.float32)
    # Interpolation with the neighbours and the fade keep it from being exact (the points move 0.5-8 mm, 5.8 on
    # average): 0.29 mm on average, 1.5 mm at most (the upper lip beside a corner, which moves 3 mm).
    err = (back - rest).norm(dim=-1)
    assert float(err.mean()) < 0.0004 and float(err.max()) < 0.002
    # The neutral motion (the tracked coefficients of the neutral face) leaves the face where it is.
    assert float((w(rest, rest_motion, None) - rest).abs().max()) < 1e-4


def test_far_points_do_not_move_and_shared_codes_equal_per_sample_codes():
    w, neutral, jaw, basis, face_size = _warp()
    motion = torch.as_tensor(basis.coefficients((jaw / face_size)[None].astype(np.float32)))
    lo = torch.tensor(neutral[list(LOWER_FACE)].min(0) - 6 * LOWER_SIGMA, dtype=torch.float32)
    far = lo[None] - torch.rand(50, 3) * 0.05
    assert torch.equal(w(far, motion, None), far)
    x = torch.tensor(neutral[list(LOWER_FACE)], dtype=torch.float32) + torch.randn(len(LOWER_FACE), 3) * 0.003
    shared = w(x, motion, None)
    per_sample = w(x, motion.expand(len(x), -1).contiguous(), None)
    assert torch.allclose(shared, per_sample, atol=1e-6)
    # Two frames in one batch: each sample follows its own frame.
    two = torch.cat([motion, motion * 0])
    rows = torch.arange(len(x)) % 2
    mixed = w(x, two[rows], None)
    assert torch.allclose(mixed[rows == 0], shared[rows == 0], atol=1e-6)
    assert torch.allclose(mixed[rows == 1], w(x[rows == 1], motion * 0, None), atol=1e-6)


def test_a_frames_prepared_warp_follows_its_codes_and_its_buffers():
    """Shared codes are prepared once and reused for the next chunk of the frame's samples (FaceWarp._plan): the
    reuse must follow the codes' values (not the tensors), in-place changes to them and to the warp's buffers."""
    w, neutral, jaw, basis, face_size = _warp()
    motion = torch.as_tensor(basis.coefficients((jaw / face_size)[None].astype(np.float32)))
    x = torch.tensor(neutral[list(LOWER_FACE)], dtype=torch.float32) + torch.randn(len(LOWER_FACE), 3) * 0.003
    full, half = w(x, motion, None), w(x, motion * 0.5, None)
    assert float((full - half).abs().max()) > 1e-3
    assert torch.equal(w(x[:30], motion.clone(), None), full[:30])  # same values, another tensor: the same warp
    m = motion.clone()
    assert torch.equal(w(x, m, None), full)
    m.mul_(0.5)  # changed in place
    assert torch.equal(w(x, m, None), half)
    w.lower_basis.mul_(2.0)  # the buffers changed (e.g. load_state_dict)
    assert not torch.allclose(w(x, motion, None), full, atol=1e-4)


def _mouth_warp(lift=0.0005, philtrum=False):
    """A FaceWarp of one closed mouth 5 cm wide: the inner lips 1 mm apart, the outer lip line 8 mm above and below,
    the jaw points 2-4 cm below. Opening (0 -> 1) drops the lower lip and the jaw 8 mm, the corners 3 mm, and lifts
    the upper lip `lift` (0.5 mm): the inner lips then lie 9.5 mm apart, about the lip landmarks' spacing (8 mm).
    `philtrum`: the philtrum (a row of the warp's context points, 164 in the middle) lies 5 mm above the upper lip
    and rises a quarter as far (on obama's tracking the philtrum moves 1.0 mm on average, the outer lips 4.4)."""
    n = 40
    neutral = np.zeros((478, 3))
    neutral[:] = [0.0, -0.06, 0.0]  # every other point far above the mouth
    k = np.arange(20)  # each loop: top middle (0), corner (5), bottom middle (10), corner (15)
    for loop, half_height in ((LIPS_INNER_LOOP, 0.0005), (LIPS_OUTER_LOOP, 0.008)):
        neutral[list(loop), 0] = -0.025 * np.sin(2 * np.pi * k / 20)
        neutral[list(loop), 1] = -half_height * np.cos(2 * np.pi * k / 20)  # +y is down
    jaw = list(JAW)
    neutral[jaw, 0] = np.linspace(-0.04, 0.04, len(jaw))
    neutral[jaw, 1] = 0.02 + 0.02 * (1 - (neutral[jaw, 0] / 0.04) ** 2)
    travel = np.zeros((478, 3))
    for loop in (LIPS_INNER_LOOP, LIPS_OUTER_LOOP):
        travel[list(loop), 1] = np.where((k > 5) & (k < 15), 0.008, np.where((k == 5) | (k == 15), 0.003, -lift))
    if philtrum:  # a row of context points, as the mesh has above the lip, rising a quarter as far as the lip
        for x, i in zip((-0.01, -0.007, -0.004, 0.0, 0.004, 0.007, 0.01), (92, 167, 165, 164, 391, 393, 322)):
            neutral[i] = [x, -0.013, 0.0]
            travel[i, 1] = -lift / 4
    travel[jaw, 1] = 0.008
    opening = np.linspace(0, 1, n)
    head = neutral[None] + opening[:, None, None] * travel[None]
    face_size = 0.12
    motion = ((head - neutral)[:, list(LOWER_FACE)] / face_size).astype(np.float32)
    basis = PersonalMotionBasis.fit(motion, 2)
    w = FaceWarp(2)
    for key, v in FaceWarp.tracking_tensors(neutral, face_size, basis, basis.coefficients(motion).numpy(), head,
                                               np.ones((n, 2)), list(range(n))).items():
        getattr(w, key).copy_(v)
    return (w, neutral, travel, torch.as_tensor(basis.coefficients(motion[-1:])),
            torch.as_tensor(basis.coefficients(motion[:1])))


def test_the_lips_part_each_following_its_own_side():
    """An open mouth's lips are each looked up on their own neutral lip: the lower lip is not dragged halfway back up
    by the upper lip's points 9.5 mm above it (a blended warp opened real mouths by 0.02-0.13x of the tracked gap)."""
    w, neutral, travel, open_, _ = _mouth_warp()
    for point in (UPPER_LIP_INNER, LOWER_LIP_INNER, LIPS_OUTER_LOOP[10]):
        moved = torch.tensor(neutral[point] + travel[point], dtype=torch.float32)[None]
        back = w(moved, open_, None)[0]
        assert float((back - torch.tensor(neutral[point], dtype=torch.float32)).norm()) < 0.001, point
    # In front of the lips, points level with the gap 1 mm from either parted lip are looked up within 1 mm of the
    # closed mouth's lip line (the blended warp looked them up 1.6 and 2.2 mm away, on the lips' skin).
    front = torch.tensor([[0.0, -0.0001, -0.01], [0.0, 0.0075, -0.01]])
    assert float(w(front, open_, None)[:, 1].abs().max()) < 0.001


def test_the_gap_between_parted_lips_looks_into_the_mouth():
    """Inside the gap of an open mouth (the lips 9.5 mm apart at the middle), a sample is looked up in the interior's
    own slab, GAP_DEPTH further in, its height across the gap spread over GAP_HEIGHT below the neutral upper lip: the
    upper teeth near the upper lip, the lower teeth near the lower one. Nothing moves there for a closed mouth, and
    the lips themselves are not in the gap."""
    from nerf_talk.fields.warp import GAP_DEPTH, GAP_HEIGHT

    w, neutral, travel, open_, closed = _mouth_warp()
    top, bottom = -0.001, 0.0085  # the parted inner lips at the middle (0.5 mm apart at rest: one rises 0.5, one falls 8)
    gap = torch.tensor([[0.0, top + 0.001, 0.001], [0.0, 0.003, 0.0], [0.0, bottom - 0.001, 0.02]])
    inside = w(gap, open_, None)
    u = (gap[:, 1] - top) / (bottom - top)
    assert torch.allclose(inside[:, 2], gap[:, 2] + GAP_DEPTH, atol=1e-6)
    assert torch.allclose(inside[:, 1], float(neutral[UPPER_LIP_INNER, 1]) + u * GAP_HEIGHT, atol=3e-4)
    assert float((inside[:, 0] - gap[:, 0]).abs().max()) < 1e-6
    # The same points with the mouth closed, and the parted lips' own inner edges, stay on the face.
    assert float((w(gap, closed, None) - gap)[:, 2].abs().max()) < 1e-6
    for point in (UPPER_LIP_INNER, LOWER_LIP_INNER):
        moved = torch.tensor(neutral[point] + travel[point], dtype=torch.float32)[None]
        assert float(w(moved, open_, None)[0, 2] - moved[0, 2]) == 0.0
    # Whole frames (one shared code) and training batches (a code per sample) agree.
    batch = w(gap, open_.expand(len(gap), -1).contiguous(), None)
    assert torch.allclose(batch, inside, atol=1e-6)


def test_the_skin_around_the_lips_follows_its_own_motion():
    """The philtrum 5 mm above an upper lip that rises 3 mm rises 0.75 mm itself: the warp's context points (fitted on
    the tracking) carry that, where the lips' own displacement spread over it would take most of the lip's rise. The
    lips themselves still map back near rest."""
    assert 164 in MOUTH_CONTEXT
    w, neutral, travel, open_, _ = _mouth_warp(lift=0.003, philtrum=True)
    there = torch.tensor(neutral[164] + travel[164], dtype=torch.float32)[None]  # the risen philtrum, mapped back
    rest = torch.tensor(neutral[164], dtype=torch.float32)[None]
    held = float((w(there, open_, None) - rest).norm())
    w0, *_ = _mouth_warp(lift=0.003, philtrum=False)  # the same lips, no philtrum points near them
    spread = float((w0(there, open_, None) - rest).norm())
    # With the points 0.70 mm off, without them 2.2 mm (it is looked up where the lip's rise says).
    assert held < 0.0008 and spread > 0.0015
    top = LIPS_OUTER_LOOP[0]
    moved = torch.tensor(neutral[top] + travel[top], dtype=torch.float32)[None]
    # 1.3 mm: the kernel blends each point with its neighbours (it does not pin them), so a 3 mm rise beside a
    # philtrum that rises 0.75 mm is partly averaged away. Real lips pay less: 0.53 -> 0.56 mm (reagan), 0.65 -> 0.78
    # (obama) for the outer loop mapped through the warp, as the philtrum's error fell 1.46 -> 0.16, 2.25 -> 0.68.
    assert float((w(moved, open_, None)[0] - torch.tensor(neutral[top], dtype=torch.float32)).norm()) < 0.0015


def _eye_warp():
    """A FaceWarp of one left eye: corners 15 mm either side, lids 5 mm above and below the centre line; as the eye
    closes (openness 1 -> 0) the upper lid comes down 8 mm and the lower goes up 2 mm (at the middle), so the closed
    lid line lies 3 mm below the centre."""
    n = 40
    neutral = np.zeros((478, 3))
    neutral[:] = [0.0, -0.05, 0.0]  # every other point far above the eye
    loop = list(LEFT_EYE_LOOP)
    xs = np.concatenate([np.linspace(0.015, -0.015, 9), np.linspace(-0.015, 0.015, 9)[1:-1]])
    shape = 1 - (xs / 0.015) ** 2
    lower = np.arange(16) < 9
    neutral[loop, 0] = xs
    neutral[loop, 1] = np.where(lower, 0.005, -0.005) * shape
    openness = np.stack([np.linspace(0, 1.2, n), np.ones(n)], 1)
    head = np.repeat(neutral[None], n, 0)
    travel = np.where(lower, -0.002, 0.008) * shape  # +y is down
    head[:, loop, 1] += (1 - openness[:, :1]) * travel
    motion = np.random.default_rng(0).normal(size=(n, len(LOWER_FACE), 3)).astype(np.float32)
    basis = PersonalMotionBasis.fit(motion, 2)
    w = FaceWarp(2)
    for k, v in FaceWarp.tracking_tensors(neutral, 0.1, basis, basis.coefficients(motion).numpy(), head, openness,
                                          list(range(n))).items():
        getattr(w, k).copy_(v)
    w.lower_basis.zero_()
    w.lower_offset.zero_()
    return w


def test_a_closing_eye_is_covered_by_its_upper_lid():
    w = _eye_warp()
    closed, open_ = torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # The fit recovered the travel (down = +y as openness falls): -8 mm per unit at the upper lid's middle, +2 mm
    # at the lower's.
    assert abs(float(w.eye_slope[EYE_POINTS.index(LEFT_EYE_LOOP[12]), 1]) + 0.008) < 1e-4
    assert abs(float(w.eye_slope[EYE_POINTS.index(LEFT_EYE_LOOP[4]), 1]) - 0.002) < 1e-4
    # The open eye stays where it is.
    eye = torch.tensor([[0.0, y, 0.0] for y in (-0.004, -0.001, 0.002, 0.004)])
    assert float((w(eye, None, open_) - eye).abs().max()) < 1e-4
    # Closed: a point of the open eye above the closed lid line (y < 3 mm) is looked up on the upper lid's skin,
    # above where the open lid's edge was (y < -5 mm); one below the line follows the lower lid (looked up lower).
    above = torch.tensor([[0.0, -0.001, 0.0], [0.0, 0.002, 0.0]])
    assert (w(above, None, closed)[:, 1] < -0.005).all()
    below = torch.tensor([[0.0, 0.0045, 0.0]])
    assert float(w(below, None, closed)[0, 1]) > 0.0055
    # Far from the eye (4 cm below), nothing moves; the other eye's openness moves nothing of this one.
    far = torch.tensor([[0.0, 0.04, 0.0]])
    assert torch.equal(w(far, None, closed), far)
    assert float((w(eye, None, torch.tensor([[1.0, 0.0, 1.0]])) - eye).abs().max()) < 1e-4


@pytest.mark.parametrize("n", [1, 3])
def test_the_head_field_looks_the_warped_point_up(n):
    from nerf_talk.config import HeadConfig
    from nerf_talk.fields import HeadField

    w, neutral, jaw, basis, face_size = _warp()
    cfg = HeadConfig(n_levels=4, log2_table_size=10, base_resolution=4, finest_resolution=32, hidden=8,
                     motion_code=4, latent_dim=0)
    field = HeadField(cfg, [-0.1, -0.1, -0.1, 0.1, 0.1, 0.1], len(basis.components), 5, backend="torch")
    field.warp.load_state_dict(w.state_dict())
    torch.nn.init.uniform_(field.grid.table, -1, 1)
    x = torch.tensor(neutral[list(LOWER_FACE)][:n] + jaw[:n], dtype=torch.float32)
    motion = torch.as_tensor(basis.coefficients((jaw / face_size)[None].astype(np.float32)))
    sigma, _ = field.get_density(x, motion)
    assert torch.allclose(sigma, field.get_density(w(x, motion, None))[0], rtol=1e-5)
    assert not torch.allclose(sigma, field.get_density(x)[0])

"""The face_motion step: synthetic faces whose jaw or eyelids alone move, and blinks on the shared real clips."""

from __future__ import annotations

import numpy as np
import pytest
from test_pose import rotation, synthetic_face

from preprocess import face_motion as fm
from preprocess import mesh_topology as mt

LOWER = list(mt.LOWER_FACE)


def jaw_clip(n=120, seed=0):
    """A face whose lower lip and jaw drop by a known amount per frame (everything else still), seen from varying
    poses and distances: [N, 478, 3] landmarks (orthographic, pixels), the template, the drop (metres)."""
    rng = np.random.default_rng(seed)
    template = synthetic_face(rng)
    drop = 0.012 * np.clip(np.sin(np.arange(n) / 5), 0, None)  # mouth closed half the time
    moving = [i for i in LOWER if i != mt.UPPER_LIP_INNER and template[i, 1] > template[mt.UPPER_LIP_INNER, 1]]
    frames = np.repeat(template[None], n, 0)
    frames[:, moving, 1] += drop[:, None]
    rots = np.stack([rotation(15 * np.sin(k / 9), 5 * np.cos(k / 13), 3 * np.sin(k / 7)) for k in range(n)])
    scale = 2000 + 500 * np.sin(np.arange(n) / 11)  # pixels per metre: the head comes closer and goes away
    lm = scale[:, None, None] * np.einsum("nij,npj->npi", rots, frames) + np.array([256, 256, 0])
    return lm, template, drop, moving


def test_only_the_jaw_moves():
    lm, template, drop, moving = jaw_clip()
    out = fm.face_motion(lm, template)
    still = [i for i in range(468) if i not in set(LOWER)]
    # Non-lower-face points stay on the neutral face: head pose and distance are removed exactly.
    assert np.abs(out["head"][:, still] - out["neutral_face"][still]).max() < 1e-4
    # The lips that did not move have no motion; the ones that did move by drop / face size.
    fixed_lower = [k for k, i in enumerate(LOWER) if i not in set(moving)]
    assert np.abs(out["lower_face_motion"][:, fixed_lower]).max() < 1e-3
    moved = [k for k, i in enumerate(LOWER) if i in set(moving)]
    np.testing.assert_allclose(out["lower_face_motion"][:, moved, 1],
                               np.repeat((drop / out["face_size"])[:, None], len(moved), 1), atol=2e-3)
    # Mouth opening grows in proportion to the jaw drop.
    gap0 = np.linalg.norm(template[mt.UPPER_LIP_INNER] - template[mt.LOWER_LIP_INNER])
    expected = np.abs(template[mt.LOWER_LIP_INNER, 1] + drop - template[mt.UPPER_LIP_INNER, 1]) / out["face_size"]
    assert gap0 > 0
    np.testing.assert_allclose(out["mouth_opening"], expected, atol=2e-3)
    assert np.corrcoef(out["mouth_opening"], drop)[0, 1] > 0.99


def test_scaling_the_face_leaves_motion_unchanged():
    lm, template, *_ = jaw_clip()
    a = fm.face_motion(lm, template)
    closer = (lm - 256) * 1.7 + 256  # the same face 1.7x bigger in the image
    b = fm.face_motion(closer, template)
    np.testing.assert_allclose(a["lower_face_motion"], b["lower_face_motion"], atol=1e-5)
    np.testing.assert_allclose(a["mouth_opening"], b["mouth_opening"], atol=1e-5)


def test_blinks_are_found():
    rng = np.random.default_rng(3)
    template = synthetic_face(rng)
    # Eyelid points around each eye's corner line, open by 30% of the eye width.
    for lids, corners in ((mt.LEFT_EYE_LIDS, mt.LEFT_EYE_CORNERS), (mt.RIGHT_EYE_LIDS, mt.RIGHT_EYE_CORNERS)):
        c = template[list(corners)].mean(0)
        width = np.linalg.norm(template[corners[0]] - template[corners[1]])
        for k, (up, down) in enumerate(lids):
            template[up] = c + [(k - 1) * 0.005, -0.15 * width, 0]
            template[down] = c + [(k - 1) * 0.005, 0.15 * width, 0]
    n = 250
    closed = np.zeros(n)
    starts = [20, 90, 160, 220]
    for s in starts:
        closed[s : s + 4] = [0.5, 1, 1, 0.5]
    frames = np.repeat(template[None], n, 0)
    for lids, corners in ((mt.LEFT_EYE_LIDS, mt.LEFT_EYE_CORNERS), (mt.RIGHT_EYE_LIDS, mt.RIGHT_EYE_CORNERS)):
        c = template[list(corners)].mean(0)
        for up, down in lids:
            for p in (up, down):
                frames[:, p, 1] = c[1] + (template[p, 1] - c[1]) * (1 - 0.95 * closed)
    lm = 2000 * frames + rng.normal(0, 0.2, frames.shape) + [256, 256, 0]
    out = fm.face_motion(lm, template)
    assert out["eye_openness"].shape == (n, 2)
    assert 0 <= out["eye_openness"].min() and out["eye_openness"].max() <= 1.5
    assert fm.count_events(out["blink"], fm.BLINK_EVENT, fm.BLINK_EVENT / 2) == len(starts)
    assert out["blink"][closed == 1].min() > 0.9 and out["blink"][closed == 0].max() < 0.1


def test_lower_face_and_rigid_sets_are_disjoint():
    # Speech must never tilt the pose: no lip or jaw point is in the rigid set. (That the lower face lies below the
    # nose on real templates is checked in test_real_clip_motion.)
    assert not set(mt.LOWER_FACE) & set(mt.RIGID)
    assert set(mt.LIPS_INNER_LOOP) <= set(mt.LOWER_FACE)


@pytest.mark.parametrize("name", ["obama", "reagan"])
def test_real_clip_motion(preprocessed, name):
    ds = preprocessed(name)
    r = ds.step_result("face_motion")
    # Measured: obama 30 blinks/min, lieu 41, reagan 18; people blink 10-40 times a minute, more when speaking.
    assert 5 <= r["blink_rate_per_min"] <= 60, r["blink_rate_per_min"]
    assert 0.3 < r["mouth_open_fraction"] < 0.99  # these are speeches
    assert 0.09 < r["face_size_m"] < 0.16
    template = ds.load_array("head_template", expect_rows=False)
    assert (template[list(mt.LOWER_FACE), 1] > template[2, 1]).all()  # lips and jaw lie below the subnasale
    motion = ds.load_array("lower_face_motion")
    assert motion.shape == (ds.n_frames, len(mt.LOWER_FACE), 3) and motion.dtype == np.float32
    assert 0.005 < r["lower_face_motion_rms"] < 0.1

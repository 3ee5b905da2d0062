"""The pose step: synthetic faces seen by a known pinhole camera, and the shared real clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess import pose
from preprocess.dataset import FORMAT_VERSION, KIND, Dataset

SIZE = 512


def synthetic_face(rng: np.random.Generator) -> np.ndarray:
    """A random but face-like [478, 3] template in metres (x right, y down, z into the head): points on a curved
    shell, with the named points mediapipe's topology relies on (eye corners, forehead, subnasale, chin) in place."""
    x = rng.uniform(-0.07, 0.07, 478)
    y = rng.uniform(-0.06, 0.12, 478)
    z = -0.1 + 2.5 * x**2 + 0.8 * (y - 0.03) ** 2 + rng.normal(0, 0.004, 478)  # a bulging front, cheeks set back
    pts = np.stack([x, y, z], 1)
    named = {33: (-0.045, 0, -0.085), 133: (-0.018, 0, -0.09), 362: (0.018, 0, -0.09), 263: (0.045, 0, -0.085),
             151: (0, -0.05, -0.095), 2: (0, 0.05, -0.115), 1: (0, 0.04, -0.125), 168: (0, -0.005, -0.1),
             152: (0, 0.12, -0.09), 13: (0, 0.075, -0.105), 14: (0, 0.08, -0.105)}
    for i, p in named.items():
        pts[i] = p
    return pts


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation for angles in degrees (yaw about y, pitch about x, roll about z)."""
    a, b, c = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


def render_landmarks(template, rots, trans, focal, noise_px, rng):
    """mediapipe-like [N, 478, 3] landmarks: perspective pixels, and a z in pixels relative to the face's centroid
    scaled like x at the centroid's depth (a weak-perspective depth, as mediapipe gives)."""
    cam = np.einsum("nij,pj->npi", rots, template) + trans[:, None]
    uv = focal * cam[..., :2] / cam[..., 2:3] + SIZE / 2
    zc = cam[:, list(mt.RIGID), 2].mean(1, keepdims=True)
    z = (cam[..., 2] - zc) * focal / zc
    lm = np.concatenate([uv, z[..., None]], -1)
    return lm + rng.normal(0, noise_px, lm.shape)


def synthetic_clip(n=300, focal=800.0, yaw_amp=25.0, noise_px=0.3, seed=0):
    rng = np.random.default_rng(seed)
    template = synthetic_face(rng)
    k = np.arange(n)
    yaw = yaw_amp * np.sin(2 * np.pi * k / 150)
    pitch = 8 * np.sin(2 * np.pi * k / 97 + 1)
    roll = 5 * np.sin(2 * np.pi * k / 211)
    rots = np.stack([rotation(*a) for a in zip(yaw, pitch, roll)])
    trans = np.stack([0.03 * np.sin(k / 40), 0.02 * np.cos(k / 55), 0.5 + 0.08 * np.sin(k / 70)], 1)
    lm = render_landmarks(template, rots, trans, focal, noise_px, rng)
    return lm, rots, trans, template, yaw


def rotation_errors_deg(poses_est: np.ndarray, rots_true: np.ndarray) -> np.ndarray:
    """Per-frame angle (degrees) between estimated and true head rotations, after removing the one fixed rotation
    between the estimated head frame (canonical axes) and the synthetic template's frame."""
    r_est = poses_est[:, :3, :3]  # camera-to-head
    r_true = np.transpose(rots_true, (0, 2, 1))
    g = np.einsum("nij,nkj->ik", r_est, r_true)  # sum of R_est R_true^T: its polar factor is the frame change
    u, _, vt = np.linalg.svd(g)
    g = u @ vt
    d = np.einsum("ij,njk,nlk->nil", g.T, r_est, r_true)
    return np.degrees(np.arccos(np.clip((np.trace(d, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def test_synthetic_poses_and_focal_recovered():
    lm, rots, trans, _, yaw = synthetic_clip()
    fit = pose.fit_poses(lm, lm[..., :2], (SIZE, SIZE))
    err_deg = rotation_errors_deg(fit["poses"], rots)
    assert err_deg.mean() < 0.5 and err_deg.max() < 2.0, (err_deg.mean(), err_deg.max())
    assert abs(fit["focal"] / 800.0 - 1) < 0.1, fit["focal"]
    assert fit["error_px"].mean() < 0.8, fit["error_px"].mean()
    # Camera centres in the head frame, up to the one similarity between the two head frames (scale: the eye
    # distance convention against the synthetic face's true size).
    c_true = -np.einsum("nji,nj->ni", rots, trans)
    c_est = fit["poses"][:, :3, 3]
    s, r, t = pose.similarity(c_true[None], c_est[None])
    resid = np.linalg.norm(pose.apply_similarity(s, r, t, c_true[None])[0] - c_est, axis=1)
    assert resid.mean() / np.linalg.norm(c_est, axis=1).mean() < 0.02
    # The yaw curve follows the turning head.
    yaw_est = pose.euler_yxz_degrees(fit["poses"])[:, 0]
    assert np.corrcoef(yaw_est, yaw)[0, 1] > 0.995
    assert abs(np.ptp(yaw_est) / np.ptp(yaw) - 1) < 0.1


def test_canonical_frame_is_metric_and_centred():
    lm, *_ = synthetic_clip(n=60, noise_px=0.0)
    template, _, _ = pose.build_template(lm, mt.RIGID)
    right, left = pose.eye_centres(template)
    assert np.linalg.norm(left - right) == pytest.approx(pose.EYE_DISTANCE, rel=1e-6)
    assert left[0] > right[0]  # x towards the person's left
    assert template[mt.CHIN, 1] > template[151, 1]  # y down
    assert template[mt.NOSE_TIP, 2] < -0.05  # the face is in front of the origin (towards the camera, -z)
    assert np.abs(template).max() < 0.15  # the head box


def test_fixed_focal_is_kept():
    lm, rots, *_ = synthetic_clip(n=100)
    fit = pose.fit_poses(lm, lm[..., :2], (SIZE, SIZE), focal=800.0)
    assert fit["focal"] == pytest.approx(800.0)
    assert rotation_errors_deg(fit["poses"], rots).mean() < 0.5


def test_draw_pose_marks_the_face():
    lm, *_ = synthetic_clip(n=20)
    fit = pose.fit_poses(lm, lm[..., :2], (SIZE, SIZE))
    intr = {"fx": fit["focal"], "fy": fit["focal"], "cx": SIZE / 2, "cy": SIZE / 2, "width": SIZE, "height": SIZE}
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    out = pose.draw_pose(img, fit["poses"][0], intr, fit["template"])
    assert out.shape == img.shape and img.max() == 0  # drawn on a copy
    drawn = np.argwhere(out.any(-1))
    # The drawing lies where the landmarks are.
    lo, hi = lm[0, :, :2].min(0) - 40, lm[0, :, :2].max(0) + 40
    assert ((drawn[:, ::-1] >= lo) & (drawn[:, ::-1] <= hi)).all(1).mean() > 0.95


def _dataset(tmp_path, lm: np.ndarray) -> Dataset:
    """A minimal dataset holding only what the pose step reads."""
    ds = Dataset(tmp_path)
    n = len(lm)
    ds.save_manifest({"kind": KIND, "format_version": FORMAT_VERSION, "fps": 25.0, "size": SIZE, "source": {},
                      "steps": {"ingest": {"result": {"n_frames": n}}, "landmarks": {"result": {}}}})
    ds.save_array("landmarks_3d", lm.astype(np.float32))
    ds.save_array("landmarks_2d", lm[..., :2].astype(np.float32))
    ds.save_array("landmark_flags", np.zeros(n, np.uint8))
    return ds


def test_step_writes_outputs(tmp_path):
    from preprocess.config import PreprocessConfig

    lm, *_ = synthetic_clip(n=80)
    ds = _dataset(tmp_path, lm)
    result = pose.STEP.run(ds, PreprocessConfig())
    json.dumps(result)
    assert set(result["intrinsics"]) == {"fx", "fy", "cx", "cy", "width", "height"}
    assert result["reprojection_error_px"] < 1.0
    assert ds.load_array("poses").shape == (80, 4, 4)
    assert ds.load_array("head_template", expect_rows=False).shape == (478, 3)
    assert ds.load_array("pose_error").shape == (80,)


def test_garbage_landmarks_fail_loudly(tmp_path):
    from preprocess.config import PreprocessConfig

    rng = np.random.default_rng(1)
    lm = rng.uniform(0, SIZE, (60, 478, 3))  # no face at all
    with pytest.raises(UserError, match="pose fit failed|focal length"):
        pose.STEP.run(_dataset(tmp_path, lm), PreprocessConfig())


# -- real clips ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["obama", "reagan"])
def test_real_clip_reprojection_error(preprocessed, name):
    ds = preprocessed(name)
    r = ds.step_result("pose")
    # Measured at 512 px: obama 0.54 px, lieu 0.64, reagan 0.65 (p95 0.85-1.10); mediapipe's own jitter is ~0.5 px.
    assert r["reprojection_error_px"] < 1.5, r["reprojection_error_px"]
    assert r["reprojection_error_p95_px"] < 2.5
    assert 0.3 < r["camera_distance_m"]["median"] < 3.0
    poses = ds.load_array("poses")
    # The head barely moves in a frame-to-frame step of these addresses: no jumps in the pose track.
    step_deg = np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", poses[1:, :3, :3], poses[:-1, :3, :3]) - 1) / 2,
                                            -1, 1)))
    assert np.percentile(step_deg, 99) < 3.0

"""Step 3: head pose per frame and one pinhole camera for the clip, from the person's own rigid landmark template.

No morphable model. mediapipe's 3D landmarks (x, y in crop pixels, z relative depth in the same scale) are aligned
to each other by generalized Procrustes on the rigid points (mesh_topology.RIGID) to give the person's own template;
each frame is then fitted by a similarity (Procrustes) to initialize, and all poses plus one focal length are refined
together by minimizing the robust reprojection error of the rigid points with a temporal smoothness term.

The head frame (all of nerf_talk's "head" coordinates):
  * metres, approximately: the distance between the two eye centres (mean of each eye's two corners) is EYE_DISTANCE;
  * OpenCV-like axes: x towards the person's left (image right in a frontal view), y down, z into the head (away from
    a camera that faces the person), so a frontal view has the identity rotation;
  * "frontal" means the eye line is along x and the forehead (151) to subnasale (2) line lies in the y-z plane along y;
  * the origin is the head's centre, taken HEAD_CENTRE_BEHIND_EYES behind the midpoint of the eye centres, so the whole
    head (hair, ears, chin) fits in the box [-0.15, 0.15]^3.
poses.npy holds camera-to-head 4x4 matrices (the head is fixed, the camera moves), OpenCV camera axes.
"""

from __future__ import annotations

import logging
from typing import Callable

import cv2
import numpy as np
import torch

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, LandmarkFlag
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")

EYE_DISTANCE = 0.065  # metres between the eye centres: sets the head frame's scale
HEAD_CENTRE_BEHIND_EYES = 0.085  # metres from the eyes' midpoint back to the head's centre (origin of the frame)
MAX_ERROR_FRACTION = 0.05  # refuse a fit whose mean reprojection error exceeds this fraction of the image side
HUBER_PX = 1.5  # the robust loss is quadratic below this residual (pixels) and linear above
SMOOTH_WEIGHT = 0.5  # weight of the pose acceleration (in pixel-equivalents) against one point's reprojection error
# The focal length's prior: centred on FOCAL_PRIOR_SIDES image sides (~28 deg field of view: the crop is ~2.6 face
# sizes, so this is a camera about 1 m away). FOCAL_PRIOR_WEIGHT is in px^2 of mean squared reprojection error per
# squared log-ratio: small against the real clips' profiles (obama: 0.20 px^2 at 1024 px against 0.47 at 3400 and
# 0.79 at 308) and the synthetic turning head's (0.35 px^2 deeper at the truth, 20% off the prior), so it only keeps
# a flat profile (a still head gives no perspective evidence) from wandering to an extreme.
FOCAL_PRIOR_SIDES = 2.0
FOCAL_PRIOR_WEIGHT = 0.2
FOCAL_SCAN_SPAN = 1.2  # candidates from exp(-span) to exp(span) times the prior's centre
FOCAL_SCAN_STEPS = 9
FOCAL_SCAN_FRAMES = 200  # frames of the subsample on which candidate focal lengths are compared
FOCAL_SCAN_ITERS = 40
REFINE_ITERS = 150
NOISE_FLOOR = 0.003  # relative to the eye distance: keeps the per-point weights finite for the stillest points
FOCAL_RANGE = (0.3, 30.0)  # focal length in image sides; outside it the fit has failed (about 170 deg to 2 deg FOV)


# -- small geometry -----------------------------------------------------------------------------------------------
def similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """Weighted least-squares similarity dst ~ s R src + t (Umeyama), batched over frames.

    src, dst: [B, P, 3]; w: [P] point weights. Returns s [B], R [B, 3, 3], t [B, 3].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(src.shape[-2]) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
    ms = np.einsum("p,bpk->bk", w, src)
    md = np.einsum("p,bpk->bk", w, dst)
    a, b = src - ms[:, None], dst - md[:, None]
    cov = np.einsum("p,bpi,bpj->bij", w, b, a)
    u, sv, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))  # a reflection is never a head pose
    sv[:, 2] *= d
    u[:, :, 2] *= d[:, None]
    r = u @ vt
    s = sv.sum(1) / np.einsum("p,bpk->b", w, a * a)
    t = md - s[:, None] * np.einsum("bij,bj->bi", r, ms)
    return s, r, t


def apply_similarity(s, r, t, pts):
    """s [B], r [B, 3, 3], t [B, 3] applied to pts [B, P, 3]."""
    return s[:, None, None] * np.einsum("bij,bpj->bpi", r, pts) + t[:, None]


def eye_centres(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(person's right, person's left) eye centres, the mean of each eye's two corners: [..., 3] each."""
    right = pts[..., list(mt.RIGHT_EYE_CORNERS), :].mean(-2)
    left = pts[..., list(mt.LEFT_EYE_CORNERS), :].mean(-2)
    return right, left


def canonical_frame(mean_shape: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) taking a [478, 3] face shape into the head frame described in the module doc."""
    right, left = eye_centres(mean_shape)
    x = left - right
    scale = EYE_DISTANCE / np.linalg.norm(x)
    x /= np.linalg.norm(x)
    down = mean_shape[2] - mean_shape[151]  # forehead -> subnasale: the face's own vertical
    y = down - x * (down @ x)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)  # right-handed: x right, y down -> z into the head
    rot = np.stack([x, y, z])  # rows: the new axes, so rot @ v expresses v in them
    centre = (right + left) / 2
    # The eyes are in front of the head's centre, i.e. towards -z (the camera of a frontal view).
    t = -scale * rot @ centre - np.array([0.0, 0.0, HEAD_CENTRE_BEHIND_EYES])
    return scale, rot, t


def build_template(lm3d: np.ndarray, rigid: tuple[int, ...], iters: int = 4):
    """The person's rigid template by generalized Procrustes on the rigid points, in the head frame.

    lm3d: [N, 478, 3] mediapipe landmarks. Returns (template [478, 3], per-frame similarity (s, R, t) mapping each
    frame's landmarks into the head frame, rigid-point weights [R]). The weights are the inverse variance of each
    rigid point around the template over the clip, so that points mediapipe places unsteadily (or that this person
    moves, e.g. a forehead under raised brows) count less in every fit.
    """
    idx = list(rigid)
    ref = lm3d[len(lm3d) // 2, idx].astype(np.float64)
    w = np.ones(len(idx))
    for _ in range(iters):
        s, r, t = similarity(lm3d[:, idx], np.broadcast_to(ref, (len(lm3d),) + ref.shape), w)
        aligned = apply_similarity(s, r, t, lm3d[:, idx].astype(np.float64))
        ref = np.median(aligned, 0)  # median: frames with a wrong mesh do not drag the template
        dev = np.linalg.norm(aligned - ref, axis=2)  # [N, R]
        scale = np.linalg.norm(ref[idx.index(33)] - ref[idx.index(263)])  # outer eye corners: a face size
        sigma = np.sqrt(np.mean(dev**2, 0)) / scale
        w = 1.0 / (sigma**2 + NOISE_FLOOR**2)
    w = w / w.mean()
    # Map every frame's full mesh with its rigid-point similarity, then move the mean shape into the head frame.
    s, r, t = similarity(lm3d[:, idx], np.broadcast_to(ref, (len(lm3d),) + ref.shape), w)
    mean_shape = apply_similarity(s, r, t, lm3d.astype(np.float64)).mean(0)
    cs, cr, ct = canonical_frame(mean_shape)
    # Compose: head = cs cr (s r x + t) + ct.
    s_h = cs * s
    r_h = np.einsum("ij,bjk->bik", cr, r)
    t_h = cs * np.einsum("ij,bj->bi", cr, t) + ct
    template = cs * mean_shape @ cr.T + ct
    return template, (s_h, r_h, t_h), w


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, [N, 3] -> [N, 3, 3]. Written out (rather than kornia's, which branches per element for small
    angles) because it is evaluated a few hundred times per fit; the epsilon keeps the gradient finite at zero."""
    th = torch.sqrt((v * v).sum(-1, keepdim=True) + 1e-20)
    kx, ky, kz = (v / th).unbind(-1)
    z = torch.zeros_like(kx)
    k = torch.stack([z, -kz, ky, kz, z, -kx, -ky, kx, z], -1).view(-1, 3, 3)
    s, c = torch.sin(th)[..., None], torch.cos(th)[..., None]
    return torch.eye(3, dtype=v.dtype) + s * k + (1 - c) * (k @ k)


def _matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    return np.stack([cv2.Rodrigues(np.ascontiguousarray(m))[0][:, 0] for m in r])


# -- perspective template ----------------------------------------------------------------------------------------
def lift(lm3d: np.ndarray, scale: np.ndarray, focal: float, centre: np.ndarray, rigid: list[int]) -> np.ndarray:
    """Camera-space points [N, 478, 3] (metres) from mediapipe landmarks under a pinhole camera of focal `focal`.

    mediapipe's z is a weak-perspective depth in pixels: it is converted to metres with the frame's image scale
    `scale` [N] (pixels per metre, from the similarity fit), and placed around the depth f / scale at which that scale
    holds, taken as the rigid points' mean depth. x and y are then unprojected along their rays, so that points nearer
    the camera (the nose) shrink back to their true size.
    """
    zc = focal / scale  # [N] depth of the rigid points' centroid
    rel = (lm3d[..., 2] - lm3d[:, rigid, 2].mean(1, keepdims=True)) / scale[:, None]
    depth = zc[:, None] + rel  # [N, 478]
    xy = (lm3d[..., :2] - centre) * (depth / focal)[..., None]
    return np.concatenate([xy, depth[..., None]], -1)


def perspective_fit(lm3d: np.ndarray, focal: float, size: tuple[int, int], rigid: tuple[int, ...],
                    template: np.ndarray, weights: np.ndarray, scale: np.ndarray, iters: int = 2):
    """Template and poses for a given focal length, by Procrustes on the perspective-lifted landmarks.

    Starting from the weak-perspective template and image scales, each round lifts every frame, aligns it rigidly
    (a similarity whose scale corrects the frame's depth) to the template, and takes the template as the median of
    the aligned frames, put back into the canonical head frame. Returns (template [478, 3], head-to-camera rotations
    [N, 3, 3], translations [N, 3]) with the camera's points scaled so that the similarity becomes a rigid motion.
    """
    idx = list(rigid)
    centre = np.array([size[1] / 2.0, size[0] / 2.0])
    n = len(lm3d)
    for _ in range(iters):
        cam = lift(lm3d, scale, focal, centre, idx)
        s, r, t = similarity(cam[:, idx], np.broadcast_to(template[idx], (n, len(idx), 3)), weights)
        # head = s R cam + t = R (s cam) + t: scaling the camera-space points by s keeps their projections, so the
        # frame's depth (and image scale) is corrected by s and the pose is the rigid (R, t).
        scale = scale / s
        aligned = apply_similarity(s, r, t, cam)
        cs, cr, ct = canonical_frame(np.median(aligned, 0))
        template = cs * np.median(aligned, 0) @ cr.T + ct
    cam = lift(lm3d, scale, focal, centre, idx)
    s, r, t = similarity(cam[:, idx], np.broadcast_to(template[idx], (n, len(idx), 3)), weights)
    rot = np.transpose(r, (0, 2, 1))  # head-to-camera
    trans = -np.einsum("nij,nj->ni", rot, t) / s[:, None]  # camera position of the head origin, rescaled depth
    return template, rot, trans


# -- the joint refinement -----------------------------------------------------------------------------------------
def project(rot: torch.Tensor, t: torch.Tensor, f: torch.Tensor, c: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of head-frame points pts [P, 3] by head-to-camera rot [N, 3, 3], t [N, 3]: [N, P, 2]."""
    cam = pts @ rot.transpose(1, 2) + t[:, None]
    return f * cam[..., :2] / cam[..., 2:3] + c


def refine(lm2d: np.ndarray, template_rigid: np.ndarray, weights: np.ndarray, frame_weight: np.ndarray,
           rot0: np.ndarray, t0: np.ndarray, focal0: float, size: tuple[int, int], refine_focal: bool = True,
           iters: int = 100, smooth_weight: float = SMOOTH_WEIGHT) -> dict:
    """Refine all poses (and, with `refine_focal`, the one focal length) together by LBFGS.

    The data term is a pseudo-Huber loss of the reprojection residuals (pixels) of the rigid points, weighted per
    point and per frame; the smoothness term penalizes the second difference (acceleration) of rotation, image
    position and scale, converted to pixels at the face's radius so that one weight serves every clip size. Each
    frame's pose is parametrized by its axis-angle, the pixel where the head's origin projects, and its image scale
    (f / depth): a change of focal length then trades only against perspective strength, not against the whole
    solution, which keeps the problem well conditioned.

    lm2d [N, P, 2] pixels of the rigid points; template_rigid [P, 3] head frame; weights [P]; frame_weight [N];
    rot0 [N, 3, 3], t0 [N, 3] head-to-camera; size (height, width). Returns rot, t, focal, error [N, P] (pixels).
    """
    dt = torch.float64
    h, w = size
    c = torch.tensor([w / 2.0, h / 2.0], dtype=dt)
    obs = torch.as_tensor(lm2d, dtype=dt)
    pw = torch.as_tensor(weights, dtype=dt)[None, :] * torch.as_tensor(frame_weight, dtype=dt)[:, None]
    tmpl = torch.as_tensor(template_rigid, dtype=dt)
    radius = float(np.sqrt(((template_rigid - template_rigid.mean(0)) ** 2).sum(1).mean()))  # metres

    rvec = torch.tensor(_matrix_to_axis_angle(rot0), dtype=dt, requires_grad=True)
    uv = torch.tensor(focal0 * t0[:, :2] / t0[:, 2:3] + c.numpy(), dtype=dt, requires_grad=True)
    # A head behind the camera (only from garbage landmarks) is put in front, so the fit runs and its error tells.
    log_s = torch.tensor(np.log(focal0 / np.maximum(t0[:, 2], 1e-3)), dtype=dt, requires_grad=True)
    log_f = torch.tensor(np.log(focal0), dtype=dt, requires_grad=refine_focal)
    params = [rvec, uv, log_s] + ([log_f] if refine_focal else [])
    n_pts = len(weights)

    def unpack():
        f = torch.exp(log_f)
        z = f / torch.exp(log_s)  # depth of the origin: the image scale is f / z
        t = torch.cat([(uv - c) * z[:, None] / f, z[:, None]], 1)
        return axis_angle_to_matrix(rvec), t, f

    def loss_fn():
        rot, t, f = unpack()
        r2 = ((project(rot, t, f, c, tmpl) - obs) ** 2).sum(-1)
        data = (pw * HUBER_PX**2 * (torch.sqrt(1 + r2 / HUBER_PX**2) - 1)).sum()
        px = torch.exp(log_s).detach().mean() * radius  # pixels per radian of rotation at the face's radius
        acc = torch.cat([
            (rvec[2:] - 2 * rvec[1:-1] + rvec[:-2]) * px,
            uv[2:] - 2 * uv[1:-1] + uv[:-2],
            ((log_s[2:] - 2 * log_s[1:-1] + log_s[:-2]) * px)[:, None],
        ], 1)
        smooth = smooth_weight * n_pts * (acc**2).sum()
        loss = (data + smooth) / len(obs)
        return loss

    opt = torch.optim.LBFGS(params, lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    # The tensors are small (frames x ~70 points): thread start-up and spinning cost more than they save, and on a
    # busy machine far more (measured: 10x slower with 2 threads when the cores are shared).
    torch.set_num_threads(1)
    try:
        if iters > 0:
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        rot, t, f = unpack()
        err = (project(rot, t, f, c, tmpl) - obs).norm(dim=-1)  # [N, P]
    return {"rot": rot.numpy(), "t": t.numpy(), "focal": float(f), "error": err.numpy()}


def scan_grid(objective: Callable[[float], float], grid: np.ndarray) -> np.ndarray:
    """objective(g) at the grid points needed to find its minimum over `grid` and the minimum's two neighbours; NaN at
    the points not evaluated.

    Every other point first, then the two neighbours of the best of those, then the remaining neighbour of the best
    overall if it is missing: for a profile with one minimum (the focal profiles are), the same minimum and neighbours
    as evaluating every point, with 7 of 9 evaluations (each is a pose fit on the subsample).
    """
    obj = np.full(len(grid), np.nan)

    def at(i: int) -> None:
        if 0 <= i < len(grid) and np.isnan(obj[i]):
            obj[i] = objective(float(grid[i]))

    for i in range(0, len(grid), 2):
        at(i)
    if len(grid) % 2 == 0:
        at(len(grid) - 1)  # the last point is a candidate too
    k = int(np.nanargmin(obj))
    at(k - 1)
    at(k + 1)
    k = int(np.clip(np.nanargmin(obj), 1, len(grid) - 2))  # the parabola's centre, as the caller chooses it
    at(k - 1)
    at(k + 1)
    return obj


def fit_poses(lm3d: np.ndarray, lm2d: np.ndarray, size: tuple[int, int], rigid: tuple[int, ...] = mt.RIGID,
              frame_weight: np.ndarray | None = None, focal: float | None = None) -> dict:
    """Template, per-frame camera-to-head poses and one focal length from landmarks.

    lm3d [N, 478, 3], lm2d [N, 478, 2] in pixels of an image of `size` (height, width). `focal` given: keep it fixed.
    The focal length is chosen by profile: for each candidate on a log grid around the prior's centre, a perspective
    template and the poses are fitted (on a subsample of frames), and the candidate minimizing mean squared
    reprojection error + FOCAL_PRIOR_WEIGHT * log(f / f_prior)^2 wins, refined by a parabola through its neighbours;
    all poses are then refined at that focal length. (A focal length inside one LBFGS with a fixed template cannot
    move: the template, lifted at the starting focal length, absorbs the perspective.) The evidence is how well one
    rigid template explains the views as the head turns: clear on the shared clips (minima at 1100-1400 px at 512),
    absent for a head that never turns, where the prior decides.
    Returns dict(poses [N, 4, 4] camera-to-head, focal, template [478, 3], rigid_weights [R], error_px [N, R],
    focal_scan [(focal, objective)]).
    """
    idx = list(rigid)
    n = len(lm3d)
    fw = np.ones(n) if frame_weight is None else np.asarray(frame_weight, np.float64)
    weak, (s, _, _), weights = build_template(lm3d, rigid)
    f_prior = FOCAL_PRIOR_SIDES * max(size)

    def fit_at(f: float, frames: np.ndarray, iters: int, smooth_weight: float):
        template, rot, trans = perspective_fit(lm3d[frames], f, size, rigid, weak, weights, 1.0 / s[frames])
        out = refine(lm2d[frames][:, idx], template[idx], weights, fw[frames], rot, trans, f, size,
                     refine_focal=False, iters=iters, smooth_weight=smooth_weight)
        return template, out

    scan = []
    if focal is None:
        sub = np.arange(0, n, max(1, n // FOCAL_SCAN_FRAMES))
        grid = f_prior * np.exp(np.linspace(-FOCAL_SCAN_SPAN, FOCAL_SCAN_SPAN, FOCAL_SCAN_STEPS))

        def objective(f: float) -> float:
            _, out = fit_at(f, sub, FOCAL_SCAN_ITERS, 0.0)  # the subsample's frames are not neighbours: no smoothing
            mse = float(((out["error"] ** 2) * weights).mean() / weights.mean())
            return mse + FOCAL_PRIOR_WEIGHT * np.log(f / f_prior) ** 2

        obj = scan_grid(objective, grid)
        scan = [(float(f), float(o)) for f, o in zip(grid, obj) if np.isfinite(o)]
        k = int(np.clip(np.nanargmin(obj), 1, len(grid) - 2))
        y = obj[k - 1 : k + 2]
        den = y[0] - 2 * y[1] + y[2]
        step = float(np.clip(0.5 * (y[0] - y[2]) / den, -1, 1)) if den > 0 else 0.0
        dx = np.log(grid[1] / grid[0])
        focal = float(np.exp(np.log(grid[k]) + step * dx))
    template, out = fit_at(float(focal), np.arange(n), REFINE_ITERS, SMOOTH_WEIGHT)
    h2c = np.tile(np.eye(4), (n, 1, 1))
    h2c[:, :3, :3] = out["rot"]
    h2c[:, :3, 3] = out["t"]
    return {
        "poses": np.linalg.inv(h2c),
        "focal": out["focal"],
        "template": template,
        "rigid_weights": weights,
        "error_px": out["error"],
        "focal_scan": scan,
    }


def intrinsics_matrix(intr: dict) -> np.ndarray:
    return np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]], np.float64)


def project_points(pose: np.ndarray, intr: dict, pts: np.ndarray) -> np.ndarray:
    """Pixels [P, 2] of head-frame points [P, 3] seen by a camera-to-head `pose` [4, 4]."""
    h2c = np.linalg.inv(pose)
    cam = pts @ h2c[:3, :3].T + h2c[:3, 3]
    return cam[:, :2] / cam[:, 2:3] * [intr["fx"], intr["fy"]] + [intr["cx"], intr["cy"]]


def draw_pose(img: np.ndarray, pose: np.ndarray, intrinsics: dict, template: np.ndarray,
              axis_length: float = 0.08) -> np.ndarray:
    """The head's axes (x red, y green, z blue, from the head's origin) and the reprojected template points on a copy
    of the RGB uint8 `img`; the rigid points are drawn larger, in yellow."""
    out = np.ascontiguousarray(img.copy())
    pts = project_points(pose, intrinsics, np.asarray(template, np.float64))
    for i, (x, y) in enumerate(pts):
        if np.isfinite(x) and np.isfinite(y):
            rigid = i in _RIGID_SET
            cv2.circle(out, (int(round(x)), int(round(y))), 2 if rigid else 1,
                       (255, 230, 0) if rigid else (0, 255, 255), -1, cv2.LINE_AA)
    axes = project_points(pose, intrinsics, np.array([[0, 0, 0], [axis_length, 0, 0], [0, axis_length, 0],
                                                     [0, 0, axis_length]], np.float64))
    o = tuple(int(round(v)) for v in axes[0])
    for k, colour in zip(range(1, 4), [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        cv2.line(out, o, tuple(int(round(v)) for v in axes[k]), colour, 2, cv2.LINE_AA)
    return out


_RIGID_SET = frozenset(mt.RIGID)


def euler_yxz_degrees(pose: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of the head as seen by the camera, for reports and tests: [N, 3].

    yaw: about the head's y (down) axis, positive when the person turns to their right (the nose moves to the image's
    left); pitch: about x, positive when the chin goes down... towards the camera's -y; roll: about z, in the image.
    """
    h2c = np.linalg.inv(pose)[..., :3, :3]
    yaw = np.degrees(np.arctan2(h2c[..., 0, 2], h2c[..., 2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-h2c[..., 1, 2], -1, 1)))
    roll = np.degrees(np.arctan2(h2c[..., 1, 0], h2c[..., 1, 1]))
    return np.stack([yaw, pitch, roll], -1)


# -- the step -----------------------------------------------------------------------------------------------------
def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    lm3d = ds.load_array("landmarks_3d").astype(np.float64)
    lm2d = ds.load_array("landmarks_2d").astype(np.float64)
    flags = ds.load_array("landmark_flags")
    size = ds.size
    # Filled-in frames carry interpolated landmarks: let the smoothness term decide more of their pose.
    frame_weight = np.where(flags == LandmarkFlag.TRACKED, 1.0, 0.2)
    fit = fit_poses(lm3d, lm2d, (size, size), frame_weight=frame_weight)
    per_frame = fit["error_px"].mean(1)
    mean_err = float(per_frame.mean())
    if not np.isfinite(mean_err) or mean_err > MAX_ERROR_FRACTION * size:
        raise UserError(
            f"the head pose fit failed: mean reprojection error {mean_err:.1f} px on a {size} px image "
            f"(at most {MAX_ERROR_FRACTION * size:.0f} px is plausible)",
            "the face landmarks are unreliable on this clip: use a video with one clearly visible, well lit face "
            "that does not leave the frame.",
        )
    f = fit["focal"]
    if not FOCAL_RANGE[0] * size <= f <= FOCAL_RANGE[1] * size:
        raise UserError(
            f"the fitted focal length {f:.0f} px is implausible for a {size} px image",
            "the clip may be a heavily cropped or stitched video; use an unedited recording of one person.",
        )
    ds.save_array("poses", fit["poses"].astype(np.float32))
    ds.save_array("head_template", fit["template"].astype(np.float32), )
    ds.save_array("pose_error", per_frame.astype(np.float32))
    angles = euler_yxz_degrees(fit["poses"])
    cam_dist = np.linalg.norm(fit["poses"][:, :3, 3], axis=1)
    return {
        "intrinsics": {"fx": f, "fy": f, "cx": size / 2.0, "cy": size / 2.0, "width": size, "height": size},
        "reprojection_error_px": mean_err,
        "reprojection_error_p95_px": float(np.percentile(per_frame, 95)),
        "fov_deg": float(np.degrees(2 * np.arctan(size / 2 / f))),
        "camera_distance_m": {"median": float(np.median(cam_dist)), "min": float(cam_dist.min()),
                              "max": float(cam_dist.max())},
        "yaw_pitch_roll_deg_range": {k: [float(angles[:, j].min()), float(angles[:, j].max())]
                                     for j, k in enumerate(["yaw", "pitch", "roll"])},
        "focal_scan": [[round(f, 1), round(o, 4)] for f, o in fit["focal_scan"]],
        "rigid_points": list(mt.RIGID),
        "rigid_weights": [round(float(v), 4) for v in fit["rigid_weights"]],
        "head_frame": {"units": "metres (eye-centre distance = %.3f)" % EYE_DISTANCE,
                       "origin": "%.3f m behind the midpoint of the eye centres" % HEAD_CENTRE_BEHIND_EYES,
                       "axes": "x person's left, y down, z into the head (OpenCV camera axes when frontal)"},
    }


STEP = Step(
    name="pose",
    version=1,  # scan_grid evaluates fewer focal lengths, and finds the same one as the full scan
    requires=("landmarks",),
    outputs=("poses.npy", "head_template.npy", "pose_error.npy"),
    run=run,
    describe="head pose and focal length from the person's own rigid landmark template",
)

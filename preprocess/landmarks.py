"""Step 2: mediapipe's 478 face landmarks (with iris) on every frame; gaps filled and flagged."""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from nerf_talk.errors import UserError
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, LandmarkFlag
from preprocess.mesh_topology import N_LANDMARKS
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")


def face_mesh(static: bool = False):
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(
        static_image_mode=static,
        max_num_faces=1,
        refine_landmarks=True,  # the iris points 468-477
        min_detection_confidence=0.5,
        min_tracking_confidence=0.5,
    )


def detect_landmarks(mesh, img: np.ndarray) -> np.ndarray | None:
    """[478, 3] landmarks in pixels of `img` (z in the same scale as x), or None when no face is found."""
    h, w = img.shape[:2]
    res = mesh.process(img)
    if not res.multi_face_landmarks:
        return None
    lm = res.multi_face_landmarks[0].landmark
    return np.array([(p.x * w, p.y * h, p.z * w) for p in lm], dtype=np.float32)


def fill_gaps(points: np.ndarray, tracked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill untracked frames: interpolate between tracked neighbours, hold the nearest one at the ends.

    points: [N, ...] with garbage where not tracked; tracked: [N] bool. Returns (filled points, [N] uint8 flags).
    """
    n = len(points)
    idx = np.flatnonzero(tracked)
    flags = np.full(n, LandmarkFlag.TRACKED, np.uint8)
    out = points.copy()
    flat = out.reshape(n, -1)
    src = points.reshape(n, -1)[idx]
    for i in np.flatnonzero(~tracked):
        j = np.searchsorted(idx, i)
        if j == 0 or j == len(idx):
            k = idx[0] if j == 0 else idx[-1]
            flat[i] = points.reshape(n, -1)[k]
            flags[i] = LandmarkFlag.HELD
        else:
            a, b = idx[j - 1], idx[j]
            w = (i - a) / (b - a)
            flat[i] = (1 - w) * src[j - 1] + w * src[j]
            flags[i] = LandmarkFlag.INTERPOLATED
    return out, flags


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    n = ds.n_frames
    pts = np.zeros((n, N_LANDMARKS, 3), np.float32)
    tracked = np.zeros(n, bool)
    mesh = face_mesh()
    for i in tqdm(range(n), desc="landmarks"):
        lm = detect_landmarks(mesh, ds.read_frame(i))
        if lm is not None:
            pts[i], tracked[i] = lm, True
    mesh.close()
    missing = 1.0 - tracked.mean()
    if missing > cfg.max_missing_face:
        raise UserError(
            f"face landmarks were found in only {tracked.mean():.0%} of the frames",
            "use a video where the face is visible, frontal and well lit for most of the clip.",
        )
    if missing > 0:
        log.warning("landmarks missing in %d of %d frames; filled by interpolation", (~tracked).sum(), n)
    pts, flags = fill_gaps(pts, tracked)
    ds.save_array("landmarks_3d", pts)
    ds.save_array("landmarks_2d", pts[..., :2])
    ds.save_array("landmark_flags", flags)
    return {
        "tracked_fraction": float(tracked.mean()),
        "interpolated_frames": int((flags == LandmarkFlag.INTERPOLATED).sum()),
        "held_frames": int((flags == LandmarkFlag.HELD).sum()),
    }


STEP = Step(
    name="landmarks",
    version=1,
    requires=("ingest",),
    outputs=("landmarks_2d.npy", "landmarks_3d.npy", "landmark_flags.npy"),
    run=run,
    describe="478 face landmarks per frame",
    uses=("max_missing_face",),
)

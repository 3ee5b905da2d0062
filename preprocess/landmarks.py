"""Step 2: mediapipe's 478 face landmarks (with iris) on every frame; gaps filled and flagged.

The clip is tracked in preprocess.parallel's segments on two cores. Tracking mode finds the face once and then
follows it from the previous frame's landmarks, so the second segment starts WARM_UP frames early (those frames are
tracked but not kept): by its first kept frame the tracker follows the face as it would in one unbroken stream.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from nerf_talk.errors import UserError
from preprocess import parallel
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, LandmarkFlag
from preprocess.mesh_topology import N_LANDMARKS
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")

WARM_UP = 10  # frames a later segment is tracked ahead of its start (detection, then the tracker settles)


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


def track_segment(ds: Dataset, start: int, stop: int, warm_up: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [stop - start, 478, 3] and tracked [stop - start] bool of frames start..stop-1, tracking from
    frame start - warm_up (runs in either process: see preprocess.parallel)."""
    pts = np.zeros((stop - start, N_LANDMARKS, 3), np.float32)
    tracked = np.zeros(stop - start, bool)
    mesh = face_mesh()
    try:
        first = max(0, start - warm_up)
        for i in tqdm(range(first, stop), desc="landmarks", disable=not progress):
            lm = detect_landmarks(mesh, ds.read_frame(i))
            if lm is not None and i >= start:
                pts[i - start], tracked[i - start] = lm, True
    finally:
        mesh.close()
    return pts, tracked


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    n = ds.n_frames
    parts = parallel.map_segments(track_segment, [(ds, a, b, WARM_UP, k == 0)
                                                  for k, (a, b) in enumerate(parallel.segments(n))])
    pts = np.concatenate([p for p, _ in parts])
    tracked = np.concatenate([t for _, t in parts])
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
    version=2,
    requires=("ingest",),
    outputs=("landmarks_2d.npy", "landmarks_3d.npy", "landmark_flags.npy"),
    run=run,
    describe="478 face landmarks per frame",
    uses=("max_missing_face",),
    parallel=True,
)

"""Face detection over a whole clip, to choose the crop and to catch clips with no face or several faces."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nerf_talk.errors import UserError

log = logging.getLogger("nerf_talk.preprocess")


@dataclass
class FaceScan:
    """Face boxes found in sampled frames: boxes[i] is [x0, y0, x1, y1] of the dominant face or NaN."""

    boxes: np.ndarray  # [S, 4] float, pixels of the scanned (possibly downscaled) frames
    n_faces: np.ndarray  # [S] int, faces found per sampled frame
    second_ratio: np.ndarray  # [S] float, area of the second-largest face over the largest (0 when alone)
    scale: float  # scanned frame pixels -> source pixels


def detector():
    import mediapipe as mp

    # The full-range model also finds the small faces of wide 4K shots.
    return mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)


def detect(det, img: np.ndarray) -> list[np.ndarray]:
    """Face boxes [x0, y0, x1, y1] in pixels, largest first."""
    h, w = img.shape[:2]
    res = det.process(img)
    boxes = []
    for d in res.detections or []:
        b = d.location_data.relative_bounding_box
        boxes.append(np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]))
    boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    return boxes


def judge(scan: FaceScan, max_missing: float) -> str | None:
    """Refuse clips without a usable dominant face; return a warning for clips with extra faces."""
    n = len(scan.n_faces)
    missing = float(np.mean(scan.n_faces == 0)) if n else 1.0
    if missing > max_missing:
        raise UserError(
            f"no face found in {missing:.0%} of the sampled frames",
            "give a video where one person faces the camera for most of the clip (frontal, well lit).",
        )
    multi = scan.n_faces >= 2
    # Two faces of similar size: we cannot tell whose avatar the user wants.
    ambiguous = multi & (scan.second_ratio > 0.5)
    if np.mean(ambiguous) > 0.2:
        raise UserError(
            f"two or more faces of similar size in {np.mean(ambiguous):.0%} of the sampled frames",
            "crop or trim the video so that one person is clearly the main subject.",
        )
    if multi.any():
        msg = f"a second, smaller face appears in {np.mean(multi):.0%} of the sampled frames; using the largest face"
        log.warning(msg)
        return msg
    return None

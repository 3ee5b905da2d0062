"""Step 4: what the face does, in the head's own frame: eye openness and blinks, mouth opening, lower-face motion.

Every frame's 478 mediapipe landmarks are mapped into the head frame by the similarity that best aligns its rigid
points (mesh_topology.RIGID, weighted as the pose step weighted them) with the head template. The similarity removes
head pose and the face's size in the image, so a head that turns or comes closer does not register as motion.

Face size (the unit of every motion figure): the neutral face's nasion (168) to chin (152) distance, the
morphological face height, ~0.11-0.12 m. Dividing by it makes the motion comparable across people, which the generic
audio-to-motion model needs.
"""

from __future__ import annotations

import numpy as np

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset
from preprocess.pose import apply_similarity, similarity
from preprocess.step import Step

NASION = 168
OPEN_PERCENTILE = 90  # the person's typical open eye: this percentile of the eyelid gap / eye width over the clip
EYE_OPEN, EYE_CLOSED = 0.8, 0.3  # openness (relative to typical) at which blink is 0 and 1
BLINK_EVENT = 0.5  # blink above this marks a frame of a blink event (for the rate)
NEUTRAL_PERCENTILE = 15  # frames with mouth opening below this percentile make up the neutral face
MOUTH_OPEN = 0.03  # mouth opening (inner-lip gap / face size) above which the mouth counts as open (~3.5 mm)


def to_head_frame(lm3d: np.ndarray, template: np.ndarray, rigid, weights=None) -> np.ndarray:
    """[N, 478, 3] landmarks mapped into the head frame by the weighted rigid-point similarity to `template`."""
    idx = list(rigid)
    n = len(lm3d)
    s, r, t = similarity(lm3d[:, idx], np.broadcast_to(template[idx], (n, len(idx), 3)), weights)
    return apply_similarity(s, r, t, lm3d.astype(np.float64))


def eye_openness_raw(head: np.ndarray) -> np.ndarray:
    """[N, 2] (left, right) mean eyelid gap over the eye's width (corner to corner), in the head frame."""
    out = []
    for lids, corners in ((mt.LEFT_EYE_LIDS, mt.LEFT_EYE_CORNERS), (mt.RIGHT_EYE_LIDS, mt.RIGHT_EYE_CORNERS)):
        gap = np.mean([np.linalg.norm(head[:, a] - head[:, b], axis=-1) for a, b in lids], 0)
        width = np.linalg.norm(head[:, corners[0]] - head[:, corners[1]], axis=-1)
        out.append(gap / width)
    return np.stack(out, -1)


def blink_from_openness(openness: np.ndarray) -> np.ndarray:
    """[N] in [0, 1], 1 = closed, from the mean of both eyes' relative openness [N, 2] (blinks are bilateral; the
    mean halves the noise of one eye's three lid points)."""
    o = openness.mean(-1)
    return np.clip((EYE_OPEN - o) / (EYE_OPEN - EYE_CLOSED), 0.0, 1.0).astype(np.float32)


def count_events(signal: np.ndarray, on: float, off: float) -> int:
    """Number of events in a [N] signal with hysteresis: an event starts above `on` and ends below `off`, so that
    landmark jitter around one threshold during a slow blink does not count as several blinks."""
    count, active = 0, False
    for v in np.asarray(signal):
        if not active and v > on:
            count, active = count + 1, True
        elif active and v < off:
            active = False
    return count


def face_motion(lm3d: np.ndarray, template: np.ndarray, rigid=mt.RIGID, weights=None) -> dict:
    """All of this step's signals from landmarks [N, 478, 3] and the head template [478, 3]."""
    head = to_head_frame(lm3d, template, rigid, weights)
    lip_gap = np.linalg.norm(head[:, mt.UPPER_LIP_INNER] - head[:, mt.LOWER_LIP_INNER], axis=-1)
    raw_eye = eye_openness_raw(head)
    typical_open = np.percentile(raw_eye, OPEN_PERCENTILE, axis=0)  # [2]
    openness = np.clip(raw_eye / typical_open, 0.0, 1.5).astype(np.float32)
    blink = blink_from_openness(openness)
    # Neutral face: the frames with the least open mouth (a talking clip has few truly closed-mouth frames, and the
    # median of those is robust to the odd bad mesh); eyes open, so blinks do not shape the neutral eyelids.
    calm = lip_gap <= np.percentile(lip_gap, NEUTRAL_PERCENTILE)
    calm_eyes = calm & (blink < 0.5)
    neutral = np.median(head[calm_eyes if calm_eyes.sum() >= 3 else calm], 0)
    face_size = float(np.linalg.norm(neutral[NASION] - neutral[mt.CHIN]))
    if not np.isfinite(face_size) or face_size <= 0:
        raise UserError(f"the neutral face has a degenerate size ({face_size})", "preprocess the video again.")
    lower = list(mt.LOWER_FACE)
    motion = ((head[:, lower] - neutral[lower]) / face_size).astype(np.float32)
    return {
        "head": head,
        "eye_openness": openness,
        "blink": blink,
        "mouth_opening": (lip_gap / face_size).astype(np.float32),
        "lower_face_motion": motion,
        "neutral_face": neutral.astype(np.float32),
        "face_size": face_size,
        "typical_open": typical_open,
    }


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    lm3d = ds.load_array("landmarks_3d").astype(np.float64)
    template = ds.load_array("head_template", expect_rows=False).astype(np.float64)
    pose_result = ds.step_result("pose")
    rigid = tuple(pose_result.get("rigid_points", mt.RIGID))
    weights = pose_result.get("rigid_weights")
    out = face_motion(lm3d, template, rigid, None if weights is None else np.asarray(weights))
    for name in ("eye_openness", "blink", "mouth_opening", "lower_face_motion", "neutral_face"):
        ds.save_array(name, out[name])
    minutes = len(lm3d) / ds.fps / 60.0
    blinks = count_events(out["blink"], BLINK_EVENT, BLINK_EVENT / 2)
    motion = out["lower_face_motion"]
    return {
        "face_size_m": out["face_size"],
        "face_size_definition": "neutral nasion (168) to chin (152) distance in the head frame (metres)",
        "lower_face_points": list(mt.LOWER_FACE),
        "blinks": blinks,
        "blink_rate_per_min": blinks / minutes,
        "blink_fraction": float(np.mean(out["blink"] > BLINK_EVENT)),
        "typical_open_eye_ratio": [float(v) for v in out["typical_open"]],
        "mouth_open_fraction": float(np.mean(out["mouth_opening"] > MOUTH_OPEN)),
        "mouth_opening_p95": float(np.percentile(out["mouth_opening"], 95)),
        "lower_face_motion_rms": float(np.sqrt(np.mean(motion**2))),
    }


STEP = Step(
    name="face_motion",
    version=1,
    requires=("pose",),
    outputs=("eye_openness.npy", "blink.npy", "mouth_opening.npy", "lower_face_motion.npy", "neutral_face.npy"),
    run=run,
    describe="eye openness, blinks, mouth opening and lower-face motion in the head frame",
)

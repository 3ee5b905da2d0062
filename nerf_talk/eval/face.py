"""Landmarks re-detected on frames (real or rendered) and what the face does in them, measured as preprocessing
measures it: mediapipe's face mesh (preprocess.landmarks), mapped into the person's head frame by the similarity of
the rigid points to the dataset's head template (preprocess.face_motion.to_head_frame), in units of the dataset's
face size (neutral nasion-chin distance). The same detector and the same mapping run on real and rendered frames, so
a difference between the two is the render's, not the measuring's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from preprocess import mesh_topology as mt

DETECT_MIN_SIDE = 256  # frames smaller than this are upscaled (bicubic) before detection: mediapipe's face
                       # detector misses faces much under ~100 px, which a 128 px smoke_cpu frame holds
MOUTH_POINTS = tuple(sorted(set(mt.LIPS_OUTER_LOOP) | set(mt.LIPS_INNER_LOOP)))
NASION, CHIN = 168, mt.CHIN


@dataclass
class FaceGeometry:
    """What maps a frame's landmarks into the person's head frame, from the dataset's preprocessing."""

    template: np.ndarray  # [478, 3] head template (head frame)
    rigid: tuple  # mesh indices the alignment uses
    weights: np.ndarray | None  # their weights (as the pose step weighted them)
    face_size: float  # neutral nasion-chin distance in head-frame units
    typical_open: np.ndarray  # [2] the person's typical open-eye ratio (left, right)

    @classmethod
    def from_dataset(cls, ds) -> "FaceGeometry | None":
        """None for a dataset without landmark tracking (the synthetic test dataset): the landmark figures are then
        reported as not measured."""
        from nerf_talk.errors import UserError

        try:
            pose, fm = ds.step_result("pose"), ds.step_result("face_motion")
            template = ds.load_array("head_template", expect_rows=False).astype(np.float64)
        except UserError:
            return None
        if "face_size_m" not in fm or "typical_open_eye_ratio" not in fm:
            return None
        w = pose.get("rigid_weights")
        return cls(template, tuple(pose.get("rigid_points", mt.RIGID)), None if w is None else np.asarray(w),
                   float(fm["face_size_m"]), np.asarray(fm["typical_open_eye_ratio"], np.float64))


def detect_sequence(frames, min_side: int = DETECT_MIN_SIDE, progress: str | None = None) -> np.ndarray:
    """[N, 478, 3] mediapipe landmarks (pixels of the given frames, z scaled like x) of a frame sequence, nan rows
    where no face is found. One tracker per sequence (video mode, as preprocessing tracks), so each sequence is
    measured the same way whatever was detected before it."""
    from tqdm.auto import tqdm

    from preprocess.landmarks import detect_landmarks, face_mesh

    frames = list(frames)
    out = np.full((len(frames), mt.N_LANDMARKS, 3), np.nan, np.float32)
    mesh = face_mesh(static=False)
    try:
        it = tqdm(frames, desc=progress, unit="frame", leave=False) if progress else frames
        for i, img in enumerate(it):
            h, w = img.shape[:2]
            f = max(1.0, min_side / min(h, w))
            big = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC) if f > 1 else img
            lm = detect_landmarks(mesh, np.ascontiguousarray(big))
            if lm is not None:
                out[i] = lm * np.float32(w / big.shape[1])  # back to the frame's pixels (z scales like x)
    finally:
        mesh.close()
    return out


# A static scene filmed twice differs by sensor noise and compression: Gaussian noise of this many grey levels, then
# JPEG at this quality (what a phone's H.264/HEVC keyframe leaves of fine detail, roughly).
STATIC_NOISE_GREY, STATIC_JPEG_QUALITY = 2.0, 90


def static_copies(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, H, W, 3] uint8 -> the same frames as a second shot of the same still scene (sensor noise, re-encoding):
    the landmarks re-detected on them differ from the originals' by the tracker's own noise, the floor under any
    landmark figure of a render."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        noisy = np.clip(f.astype(np.float32) + rng.normal(0, STATIC_NOISE_GREY, f.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, STATIC_JPEG_QUALITY])
        out[i] = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else noisy
    return out


# The real frames blurred by a Gaussian of these many pixels (at the compare size): the landmark figures of a face that
# sits exactly where the real one does but is only as sharp as a render. The tracker reads blur as shape: on lieu's
# held-out frames at 256 px, mouth LMD 0.22 (noise and JPEG) -> 0.40 % of face size at 1 px (face PSNR 38.6 dB) and
# 0.72 at 1.5 px (34.6 dB), while the CPU recipe's renders stand at 31.2 dB.
BLUR_REFERENCE_PX = (1.0, 1.5)


def blurred_copies(frames: np.ndarray, sigma: float) -> np.ndarray:
    """[N, H, W, 3] uint8 -> the same frames blurred by a Gaussian of `sigma` pixels."""
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def face_signals(lm: np.ndarray, geo: FaceGeometry) -> dict:
    """From landmarks [N, 478, 3] (nan rows: not found): head-frame landmarks in face-size units `head` [N, 478, 3],
    `mouth_opening` [N] (inner-lip gap over face size, as the dataset's mouth_opening.npy), `eye_openness` [N, 2]
    (relative to the person's typical open eye) and `blink` [N] (1 = closed), nan where no face was found."""
    from preprocess.face_motion import blink_from_openness, eye_openness_raw, to_head_frame

    lm = np.asarray(lm, np.float64)
    n = len(lm)
    ok = np.isfinite(lm).all((1, 2))
    head = np.full((n, mt.N_LANDMARKS, 3), np.nan)
    if ok.any():
        head[ok] = to_head_frame(lm[ok], geo.template, geo.rigid, geo.weights) / geo.face_size
    opening = np.linalg.norm(head[:, mt.UPPER_LIP_INNER] - head[:, mt.LOWER_LIP_INNER], axis=-1)
    eyes = np.full((n, 2), np.nan)
    blink = np.full(n, np.nan)
    if ok.any():
        eyes[ok] = np.clip(eye_openness_raw(head[ok]) / geo.typical_open, 0.0, 1.5)
        blink[ok] = blink_from_openness(eyes[ok])
    return {"head": head, "mouth_opening": opening, "eye_openness": eyes, "blink": blink, "found": ok}


def face_size_pixels(lm: np.ndarray) -> float:
    """Median nasion-chin distance in the image over the frames with a face (nan when none): the unit of the
    image-space figures (mouth distance in the image, head jitter)."""
    lm = np.asarray(lm, np.float64)
    d = np.linalg.norm(lm[:, NASION, :2] - lm[:, CHIN, :2], axis=-1)
    d = d[np.isfinite(d)]
    return float(np.median(d)) if d.size else math.nan

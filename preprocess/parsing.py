"""Step: a per-frame label map (preprocess.labels.Label) without a parsing network.

Where each label comes from:
- person vs background: mediapipe selfie segmentation, its soft mask smoothed over time (EMA) so that the boundary
  does not flicker from frame to frame;
- face skin, brows, eyes, lips, mouth interior: the face mesh's polygons (mesh_topology loops), which are far more
  precise than any colour heuristic; teeth: the bright, unsaturated pixels inside the inner lip loop;
- hair: person pixels in a zone around and above the face oval (the oval dilated and extended upward), above the jaw
  line, that are not face; skin-coloured (rg chromaticity) patches of that zone beside the oval, between the brows'
  line and the jaw line and touching the oval, are face (ears, cheek past the mesh's silhouette);
- neck: person pixels in a band below the jaw contour, within the jaw's width, down to the base of the neck (found
  from the pose model's shoulder landmarks on every k-th frame, interpolated and smoothed; a fixed fraction of the face
  height below the chin where the shoulders are not visible);
- torso: every other person pixel.
Figures: flicker (mean fraction of pixels whose label changes between consecutive frames), face coverage, how much of
the face oval the person segmentation agrees with, and the fraction of frames whose person mask is nearly empty.

The frames are labelled in preprocess.parallel's segments on two cores (the shoulder pass too). The person mask and
the skin score are smoothed over time, so the second segment starts WARM_UP frames early: the weight left on the
state it started from is at most max(1 - PERSON_EMA, 1 - SKIN_EMA) ** WARM_UP (~2e-5), far below what could move a
label.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess import parallel
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, frame_name, write_image_file
from preprocess.labels import HEAD_LABELS, PALETTE, Label
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")

PERSON_EMA = 0.6  # weight of the current frame's soft person mask; the rest is the running mean (less flicker)
PERSON_THRESHOLD = 0.5
EMPTY_PERSON = 0.25  # a person mask smaller than this fraction of the face oval's area counts as "not segmented"
MAX_EMPTY_FRACTION = 0.5  # refuse when more frames than this are not segmented
POSE_EVERY = 10  # run the (slower) pose model on every k-th frame for the shoulder line
NECK_DEFAULT = 0.45  # neck length (chin to base) as a fraction of the face height when the shoulders are not seen
NECK_SHADOW = 0.08  # face heights under the chin that are neck whatever their colour (the chin's shadow)
NECK_RANGE = (0.15, 0.7)  # clamp of the neck length, in face heights
HAIR_ZONE_SCALE = (1.6, 1.45)  # the hair zone is the face oval scaled by this (x, y) about its centre ...
HAIR_ZONE_UP = 0.45  # ... swept upward by this many face heights
BROW_OUTER = (70, 300)  # the brows' outer ends: above the line between them, skin outside the oval is hair's
JAW_ANGLES = (172, 397)  # face-oval points at the angles of the jaw: the line between them separates head from neck
# Teeth: inside the inner lip loop, saturation below this fraction of the face skin's and brightness above this
# fraction of the skin's (tongue and lips are saturated red, the mouth cavity is dark; teeth are neither).
TEETH_SAT, TEETH_VAL = 0.75, 0.8
# Skin: a Gaussian over the face skin's rg chromaticity (R/(R+G+B), G/(R+G+B)), fitted per frame on the face oval minus
# its features. Chromaticity, not Lab's a/b, because it does not change with brightness: the neck under the chin is in
# shadow (much darker, same hue), while Lab's a/b shrink towards grey in the dark and the shadowed neck fails a Lab
# test. Brightness only rules out the near-black (hair, dark clothes: below SKIN_DARK of the face's median brightness,
# where chromaticity is noise) and the near-white (a shirt collar: above SKIN_BRIGHT of it).
SKIN_SCALE = 0.5  # the skin score is computed (and smoothed over time) at this fraction of the frame size
SKIN_SIGMA = 3.0  # Mahalanobis radius (in chromaticity standard deviations) where the score falls to exp(-4.5)
SKIN_DARK, SKIN_BRIGHT = 0.3, 1.6  # brightness (R+G+B) bounds as fractions of the face skin's median
SKIN_THRESHOLD = 0.25  # on the spatially and temporally smoothed score
SKIN_EMA = 0.5
# The neck label, smoothed over time like the skin score: weight of the current frame's neck mask in a running mean,
# and the mean's hysteresis (a pixel becomes neck above the first, stops being neck below the second). Per frame, the
# skin test and its closing changed 14 % of the neck's area from one frame to the next on a phone clip
# (corpus/validation/phone_vertical_hevc_10s), with notches coming and going; a plain threshold at 0.5 still passes
# a patch that flips every other frame (its mean swings 0.39-0.61).
NECK_EMA = 0.35
NECK_ON, NECK_OFF = 0.65, 0.35
WARM_UP = 16  # frames a later segment is labelled ahead of its start, to settle the smoothed masks (not written)
SEGMENT_SIDE = 256  # the selfie model's input side: frames are shrunk to it here (area-averaged) rather than by mediapipe


# -- drawing helpers -------------------------------------------------------------------------------------------------
def _fill(mask: np.ndarray, pts: np.ndarray, value: int) -> None:
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], int(value))


def loop_mask(shape: tuple[int, int], lm: np.ndarray, loop) -> np.ndarray:
    """bool [H, W]: inside the closed polygon of landmark indices `loop`."""
    m = np.zeros(shape, np.uint8)
    _fill(m, mt.polygon(lm, loop), 1)
    return m.astype(bool)


def face_height(lm: np.ndarray) -> float:
    """Forehead (10) to chin (152) distance in pixels."""
    return float(np.linalg.norm(lm[mt.FOREHEAD, :2] - lm[mt.CHIN, :2]))


def hair_zone_polygon(lm: np.ndarray) -> np.ndarray:
    """Convex hull of the face oval scaled about its centre and swept upward: where hair can be."""
    oval = mt.polygon(lm, mt.FACE_OVAL_LOOP).astype(np.float32)
    c = oval.mean(0)
    big = c + (oval - c) * np.array(HAIR_ZONE_SCALE, np.float32)
    # "Up" is from chin to forehead, so a tilted head gets a tilted zone.
    up = (lm[mt.FOREHEAD, :2] - lm[mt.CHIN, :2]).astype(np.float32)
    pts = np.concatenate([big, big + up * HAIR_ZONE_UP])
    return cv2.convexHull(pts).reshape(-1, 2)


def below_line(shape: tuple[int, int], a: np.ndarray, b: np.ndarray, down: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels on the `down` side of the line through a and b."""
    h, w = shape
    n = np.array([-(b[1] - a[1]), b[0] - a[0]], np.float32)
    if n @ down < 0:
        n = -n
    ys, xs = np.ogrid[:h, :w]
    # x_term + y_term > 0 compared as x_term > -y_term: the same test (a float sum is positive exactly when the exact
    # sum is), without a full-frame array of sums.
    return (xs - a[0]) * n[0] > -((ys - a[1]) * n[1])


def neck_polygon(lm: np.ndarray, neck_len: float, widen: float = 1.0) -> np.ndarray:
    """The jaw contour from angle to angle through the chin, closed by a base `neck_len` pixels below the chin.

    The base is as wide as the jaw angles; it follows the chin-to-forehead axis so that a tilted head tilts the neck.
    """
    loop = list(mt.FACE_OVAL_LOOP)
    i0, i1 = loop.index(JAW_ANGLES[1]), loop.index(JAW_ANGLES[0])  # 397 ... 152 ... 172 in loop order
    jaw = mt.polygon(lm, loop[i0 : i1 + 1]).astype(np.float32)
    down = (lm[mt.CHIN, :2] - lm[mt.FOREHEAD, :2]).astype(np.float32)
    down /= max(np.linalg.norm(down), 1e-6)
    chin = lm[mt.CHIN, :2].astype(np.float32)
    # Base corners: below the jaw angles, at the depth of the chin + neck_len along "down".
    corners = []
    mid = (jaw[0] + jaw[-1]) / 2
    for p in (jaw[-1], jaw[0]):
        depth = (chin - p) @ down + neck_len
        corners.append(mid + (p - mid) * widen + down * depth)
    return np.concatenate([jaw, np.array(corners)])


def skin_reference(hsv: np.ndarray, face: np.ndarray) -> tuple[float, float]:
    """Median saturation and value of the face skin (HSV, 0-255)."""
    px = hsv[face]
    if len(px) == 0:
        return 128.0, 128.0
    return float(np.median(px[:, 1])), float(np.median(px[:, 2]))


def skin_score(img: np.ndarray, lm: np.ndarray, scale: float = SKIN_SCALE, small: np.ndarray | None = None) -> np.ndarray:
    """float32 [h, w] in [0, 1] at `scale` of the frame: how much each pixel looks like this frame's face skin.

    small: the frame already shrunk to that size with INTER_AREA (the person mask's input, at 512 px), to reuse.
    """
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if small is None or small.shape[:2] != (size[1], size[0]):
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    # JPEG stores colour in 8x8 blocks at half resolution: average a few pixels so block edges do not show as noise.
    small = cv2.blur(small, (3, 3))
    total = small[..., 0] + small[..., 1] + small[..., 2] + 1.0  # [h, w] brightness (sum(-1), added in the same order)
    chroma = small[..., :2] / total[..., None]  # [h, w, 2] r, g chromaticity
    pts = np.asarray(lm, np.float32)[:, :2] * scale
    face = np.zeros(small.shape[:2], np.uint8)
    _fill(face, mt.polygon(pts, mt.FACE_OVAL_LOOP), 1)
    for loop in (mt.LEFT_BROW_LOOP, mt.RIGHT_BROW_LOOP, mt.LEFT_EYE_LOOP, mt.RIGHT_EYE_LOOP, mt.LIPS_OUTER_LOOP):
        _fill(face, mt.polygon(pts, loop), 0)
    face = face.astype(bool)
    px = chroma[face]
    if len(px) < 20:
        return np.zeros(small.shape[:2], np.float32)
    mu = px.mean(0)
    cov = np.cov(px.T) + np.eye(2) * 1e-5  # floor: a flat synthetic face has no spread
    icov = np.linalg.inv(cov).astype(np.float32)
    dr, dg = chroma[..., 0] - mu[0], chroma[..., 1] - mu[1]
    d2 = icov[0, 0] * dr * dr + 2 * icov[0, 1] * dr * dg + icov[1, 1] * dg * dg
    score = np.exp(-0.5 * d2 * (3.0 / SKIN_SIGMA) ** 2)
    lum = float(np.median(total[face]))
    score[(total < SKIN_DARK * lum) | (total > SKIN_BRIGHT * lum)] = 0.0
    # A little blur: single pixels of skin colour in the hair, or of shadow on the neck, are noise.
    return cv2.GaussianBlur(score.astype(np.float32), (0, 0), 1.5)


class NeckSmoother:
    """The neck label over a sequence: a running mean of each frame's neck mask with hysteresis (NECK_EMA, NECK_ON,
    NECK_OFF), started from the first frame's mask."""

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.state: np.ndarray | None = None

    def __call__(self, neck: np.ndarray) -> np.ndarray:  # [H, W] bool -> [H, W] bool
        if self.mean is None or self.mean.shape != neck.shape:
            self.mean, self.state = neck.astype(np.float32), neck.copy()
            return neck
        self.mean *= 1 - NECK_EMA
        self.mean += NECK_EMA * neck
        self.state = (self.mean > NECK_ON) | (self.state & (self.mean > NECK_OFF))
        return self.state


def label_frame(img: np.ndarray, person: np.ndarray, lm: np.ndarray, neck_len: float | None = None,
                skin: np.ndarray | None = None, smoother: NeckSmoother | None = None) -> np.ndarray:
    """uint8 [H, W] label map of one frame.

    img: [H, W, 3] RGB uint8; person: [H, W] bool person mask; lm: [478, >=2] landmarks in pixels;
    neck_len: chin-to-neck-base distance in pixels (None: NECK_DEFAULT face heights);
    skin: the skin score (skin_score, any size; None: computed from this frame alone);
    smoother: the sequence's NeckSmoother (None: this frame's neck alone).
    """
    shape = img.shape[:2]
    lm = np.asarray(lm, np.float32)[:, :2]
    if neck_len is None:
        neck_len = NECK_DEFAULT * face_height(lm)
    labels = np.zeros(shape, np.uint8)
    oval = loop_mask(shape, lm, mt.FACE_OVAL_LOOP)
    up = (lm[mt.FOREHEAD, :2] - lm[mt.CHIN, :2]).astype(np.float32)

    # Body: everything the segmentation calls person, split below into hair / neck / torso.
    labels[person] = Label.TORSO
    jaw_a, jaw_b = lm[JAW_ANGLES[0], :2], lm[JAW_ANGLES[1], :2]
    above_jaw = ~below_line(shape, jaw_a, jaw_b, -up)  # "down" = -up
    zone = np.zeros(shape, np.uint8)
    _fill(zone, hair_zone_polygon(lm), 1)
    if skin is None:
        skin = skin_score(img, lm)
    if skin.shape != shape:
        skin = cv2.resize(skin, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    is_skin = skin > SKIN_THRESHOLD
    head_zone = person & zone.astype(bool) & above_jaw
    labels[head_zone] = Label.HAIR
    # Skin beside the oval (ears, the cheek beyond the mesh's silhouette) is face, not hair. Only between the brows'
    # line and the jaw line, and only where it touches the oval: above the brows, brown or grey hair has much the
    # chromaticity of skin, and patches of it inside the hair would be called face.
    brow_line = below_line(shape, lm[BROW_OUTER[0], :2], lm[BROW_OUTER[1], :2], -up)
    side_skin = (head_zone & is_skin & brow_line & ~oval).astype(np.uint8)
    if side_skin.any():
        # Components and the oval's neighbourhood on the box of the side skin only: the same components, less frame.
        ys, xs = np.nonzero(side_skin.any(1))[0], np.nonzero(side_skin.any(0))[0]
        box = np.s_[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        touching = cv2.dilate(oval.astype(np.uint8), np.ones((5, 5), np.uint8))[box].astype(bool)
        n_cc, cc = cv2.connectedComponents(np.ascontiguousarray(side_skin[box]), connectivity=4)
        keep = np.zeros(n_cc, bool)
        keep[np.unique(cc[touching & (side_skin[box] > 0)])] = True
        keep[0] = False
        labels[box][keep[cc]] = Label.FACE
    # Neck: in a band below the jaw, the skin (its gaps closed), plus everything just under the jaw, where the chin's
    # shadow hides the skin colour; a collar and shirt lower in the band are torso (a shirt's white is not neck).
    band = np.zeros(shape, np.uint8)
    _fill(band, neck_polygon(lm, neck_len), 1)
    band = person & band.astype(bool)
    fh = face_height(lm)
    neck = (band & is_skin).astype(np.uint8)
    k = max(3, int(0.08 * fh) | 1)
    neck = _close_in_box(neck, band, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
    under_jaw = np.zeros(shape, np.uint8)
    _fill(under_jaw, neck_polygon(lm, NECK_SHADOW * fh), 1)
    neck = band & (neck | under_jaw.astype(bool))
    if smoother is not None:
        neck = band & smoother(neck)
    labels[band & fill_spans(neck | (band & under_jaw.astype(bool)))] = Label.NECK

    # Head from the mesh, which wins over the segmentation inside the face (a mesh polygon is the better evidence).
    labels[oval] = Label.FACE
    _fill(labels, mt.polygon(lm, mt.LEFT_BROW_LOOP), Label.BROWS)
    _fill(labels, mt.polygon(lm, mt.RIGHT_BROW_LOOP), Label.BROWS)
    _fill(labels, mt.polygon(lm, mt.LEFT_EYE_LOOP), Label.EYES)
    _fill(labels, mt.polygon(lm, mt.RIGHT_EYE_LOOP), Label.EYES)
    _fill(labels, mt.polygon(lm, mt.LIPS_OUTER_LOOP), Label.LIPS)
    inner = mt.polygon(lm, mt.LIPS_INNER_LOOP)
    _fill(labels, inner, Label.MOUTH)

    # Teeth: classify the mouth interior's pixels by colour, on the mouth's bounding box only (cheap).
    x0, y0 = np.floor(inner.min(0)).astype(int)
    x1, y1 = np.ceil(inner.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, shape[1]), min(y1, shape[0])
    if x1 > x0 and y1 > y0:
        box = labels[y0:y1, x0:x1]
        mouth = box == Label.MOUTH
        if mouth.any():
            # Skin reference from the cheeks/forehead: the oval minus the features, sampled on a coarse grid.
            skin = (labels[::4, ::4] == Label.FACE)
            hsv_small = cv2.cvtColor(np.ascontiguousarray(img[::4, ::4]), cv2.COLOR_RGB2HSV)
            s_ref, v_ref = skin_reference(hsv_small, skin)
            hsv = cv2.cvtColor(np.ascontiguousarray(img[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
            teeth = mouth & (hsv[..., 1] < TEETH_SAT * s_ref) & (hsv[..., 2] > TEETH_VAL * v_ref)
            box[teeth] = Label.TEETH
    return labels


def _fill_rows(mask: np.ndarray) -> np.ndarray:  # each row filled between its leftmost and rightmost pixel
    rows = np.nonzero(mask.any(1))[0]
    if not len(rows):
        return mask
    sub = mask[rows]
    left = sub.argmax(1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(1)
    cols = np.arange(mask.shape[1])
    out = mask.copy()
    out[rows] = (cols >= left[:, None]) & (cols <= right[:, None])
    return out


def fill_spans(mask: np.ndarray) -> np.ndarray:
    """The mask's sizeable pieces filled along rows, then along columns: a neck is one column of skin under the jaw,
    so a patch of collar, shadow or hair inside it (enclosed, or cutting in from one side between neck pixels of the
    same row or column) is neck, not an island of torso."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(ys):
        return mask
    box = np.s_[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]  # the neck's box only: a small part of the frame
    _, cc, stats, _ = cv2.connectedComponentsWithStats(mask[box].astype(np.uint8), connectivity=8)
    # Specks (under a tenth of the largest piece) would draw whole rows across the band.
    area = stats[1:, cv2.CC_STAT_AREA]
    out = np.zeros_like(mask)
    out[box] = _fill_rows(_fill_rows(np.isin(cc, 1 + np.nonzero(area >= 0.1 * area.max())[0])).T).T
    return out


def _close_in_box(mask: np.ndarray, support: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Morphological closing of `mask` (uint8, zero outside the bool `support`), computed on the support's bounding box
    grown by the kernel's size only: the same result as on the whole frame (a closing never reaches past the box of
    what it closes, and every pixel of the box depends only on pixels within one kernel size), at a fraction of the
    cost, since the neck band is a small part of the frame."""
    ys, xs = np.nonzero(support.any(1))[0], np.nonzero(support.any(0))[0]
    if len(ys) == 0:
        return mask
    m = max(kernel.shape)
    y0, y1 = max(ys[0] - m, 0), min(ys[-1] + 1 + m, mask.shape[0])
    x0, x1 = max(xs[0] - m, 0), min(xs[-1] + 1 + m, mask.shape[1])
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = cv2.morphologyEx(np.ascontiguousarray(mask[y0:y1, x0:x1]), cv2.MORPH_CLOSE, kernel)
    return out


# -- the person mask and the shoulder line over the clip --------------------------------------------------------------
def shoulder_depths(ds: Dataset, lm: np.ndarray, frames: np.ndarray, progress: bool = False) -> np.ndarray:
    """[len(frames)] depth of the shoulder line below the chin along the chin-to-forehead axis, in face heights, from
    the pose model's shoulder landmarks (11/12); NaN where they are not seen. lm: [len(frames), 478, 2]."""
    import mediapipe as mp

    measured = np.full(len(frames), np.nan, np.float32)
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False) as pose:
        for k, i in enumerate(tqdm(frames, desc="parsing (shoulders)", leave=False, disable=not progress)):
            res = pose.process(ds.read_frame(int(i)))
            if res.pose_landmarks is None:
                continue
            pl = res.pose_landmarks.landmark
            s11, s12 = pl[11], pl[12]
            if min(s11.visibility, s12.visibility) < 0.5:
                continue
            size = ds.size
            shoulder = np.array([(s11.x + s12.x) / 2 * size, (s11.y + s12.y) / 2 * size], np.float32)
            down = lm[k, mt.CHIN] - lm[k, mt.FOREHEAD]
            down = down / max(np.linalg.norm(down), 1e-6)
            measured[k] = float((shoulder - lm[k, mt.CHIN]) @ down) / face_height(lm[k])
    return measured


def shoulder_samples(n: int, every: int = POSE_EVERY) -> np.ndarray:
    """The frames the pose model looks at: every `every`-th, and the last."""
    return np.unique(np.r_[np.arange(0, n, every), n - 1])


def _ahead_key(ds: Dataset, n: int, every: int) -> tuple:
    return ("parsing.shoulders", str(ds.root), n, every)


def prefetch(ds: Dataset, cfg: PreprocessConfig) -> None:
    """Start the shoulder pass in the helper process as soon as the landmarks are there: it needs nothing else, and
    the pose fit that runs next uses one core, so it runs beside the fit instead of inside this step."""
    lm = ds.load_array("landmarks_2d")
    sample = shoulder_samples(len(lm))
    parallel.submit_ahead(_ahead_key(ds, len(lm), POSE_EVERY), shoulder_depths, (ds, lm[sample], sample, False))


def neck_lengths(ds: Dataset, lm: np.ndarray, every: int = POSE_EVERY) -> tuple[np.ndarray, float]:
    """[N] chin-to-neck-base distance per frame in pixels, and the fraction of sampled frames with visible shoulders.

    The base of the neck sits at about the height of the shoulder joints (pose landmarks 11/12); the neck length is
    measured along the chin-to-forehead axis on every `every`-th frame, interpolated in between and median-smoothed,
    since the body moves slowly and a jittering neck base would make the neck/torso seam flicker. The pose model runs
    on each frame alone, so the sampled frames are simply shared between the two processes.
    """
    n = len(lm)
    fh = np.array([face_height(p) for p in lm], np.float32)
    sample = shoulder_samples(n, every)
    measured = parallel.take_ahead(_ahead_key(ds, n, every))
    if measured is None:  # not sent ahead (run outside the pipeline): share the frames between the two processes
        jobs = [(ds, lm[sample[a:b]], sample[a:b], k == 0) for k, (a, b) in enumerate(parallel.segments(len(sample)))]
        measured = np.concatenate(parallel.map_segments(shoulder_depths, jobs))
    seen = np.isfinite(measured)
    if seen.sum() >= 1:
        rel = np.interp(np.arange(n), sample[seen], measured[seen])
        rel = _median_filter(rel, 9)
    else:
        rel = np.full(n, NECK_DEFAULT, np.float32)
    rel = np.clip(rel, *NECK_RANGE)
    return (rel * fh).astype(np.float32), float(seen.mean())


def _median_filter(x: np.ndarray, k: int) -> np.ndarray:
    pad = np.pad(x, k // 2, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(pad, k), axis=-1)


def model_input(img: np.ndarray) -> np.ndarray:
    """The frame at the selfie model's input size (area-averaged when shrinking)."""
    h, w = img.shape[:2]
    if (h, w) == (SEGMENT_SIDE, SEGMENT_SIDE):
        return img
    interp = cv2.INTER_AREA if min(h, w) > SEGMENT_SIDE else cv2.INTER_LINEAR
    return cv2.resize(img, (SEGMENT_SIDE, SEGMENT_SIDE), interpolation=interp)


class PersonMask:
    """Soft person mask per frame from selfie segmentation, smoothed over time by an exponential moving average.

    The model sees SEGMENT_SIDE pixels whatever the frame's size; the frame is shrunk to that here, with area
    averaging, instead of inside mediapipe, and the running mean is kept at that size and enlarged (bilinear) once per
    frame: the mask is as the model saw it, for a fraction of the copying and resizing.
    """

    def __init__(self, ema: float = PERSON_EMA):
        import mediapipe as mp

        # model 0 (the "general" 256x256 model) follows hair and shoulders better than the landscape model.
        self.seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.ema = ema
        self.state: np.ndarray | None = None

    def __call__(self, img: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The smoothed mask [H, W] float32 of frame `img`; or, with `shape` = (H, W), of the frame that `img` is
        model_input() of."""
        h, w = shape or img.shape[:2]
        m = self.seg.process(model_input(img)).segmentation_mask.astype(np.float32)
        self.state = m if self.state is None else self.ema * m + (1 - self.ema) * self.state
        if self.state.shape == (h, w):
            return self.state
        return cv2.resize(self.state, (w, h), interpolation=cv2.INTER_LINEAR)

    def close(self) -> None:
        self.seg.close()


# -- visualisation -----------------------------------------------------------------------------------------------------
def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a label map, colours from labels.PALETTE."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(PALETTE)] = np.array(PALETTE, np.uint8)
    return lut[np.asarray(labels, np.uint8)]


def overlay_labels(img: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the colorized labels blended over it (background pixels left as they are)."""
    col = colorize(labels).astype(np.float32)
    out = img[..., :3].astype(np.float32)
    a = np.where(labels[..., None] > 0, alpha, 0.0)
    return np.clip(out * (1 - a) + col * a, 0, 255).astype(np.uint8)


# -- the step ----------------------------------------------------------------------------------------------------------
def read_ahead(pool: ThreadPoolExecutor, read: Callable[[int], np.ndarray], indices: Sequence[int],
               depth: int = 8) -> Iterator[np.ndarray]:
    """read(i) for i in indices, in order, at most `depth` reads ahead of the consumer (pool.map would read the whole
    clip into memory as fast as it can: gigabytes for a long clip)."""
    pending: deque = deque()
    for i in indices:
        pending.append(pool.submit(read, i))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def label_segment(ds: Dataset, lm: np.ndarray, neck_len: np.ndarray, start: int, stop: int, warm_up: int,
                  out_dir: str, progress: bool) -> dict:
    """Label frames start..stop-1 (writing out_dir/NNNNNN.png), starting the smoothed masks at start - warm_up.

    lm, neck_len: the whole clip's. Returns per-frame figures of the written frames: changed (fraction of pixels
    whose label differs from the previous frame's; NaN for the clip's first frame), coverage, agreement, empty.
    """
    first = max(0, start - warm_up)
    m = stop - start
    figures = {"changed": np.full(m, np.nan), "neck_changed": np.full(m, np.nan), "neck_area": np.zeros(m),
               "coverage": np.zeros(m), "agreement": np.zeros(m), "empty": np.zeros(m, bool)}
    head_lut = np.zeros(256, bool)
    head_lut[np.array([int(x) for x in HEAD_LABELS], np.uint8)] = True
    person_model = PersonMask()
    prev = None
    skin = None  # the skin score, smoothed over time like the person mask
    smoother = NeckSmoother()  # the neck mask, smoothed over time
    # Reading (JPEG decode) and writing (PNG encode) release the GIL: overlap them with the per-frame work.
    try:
        with ThreadPoolExecutor(2) as pool:
            reads = read_ahead(pool, ds.read_frame, range(first, stop))
            writes = []
            for i, img in zip(tqdm(range(first, stop), desc="parsing", disable=not progress), reads):
                small = model_input(img)  # shrunk once: the person mask's input, and the skin score's at 512 px
                soft = person_model(small, img.shape[:2])
                person = soft > PERSON_THRESHOLD
                sk = skin_score(img, lm[i], small=small)
                skin = sk if skin is None else SKIN_EMA * sk + (1 - SKIN_EMA) * skin
                labels = label_frame(img, person, lm[i], float(neck_len[i]), skin, smoother)
                if i >= start:
                    k = i - start
                    oval = loop_mask(labels.shape, lm[i], mt.FACE_OVAL_LOOP)
                    oval_px = max(int(oval.sum()), 1)
                    figures["coverage"][k] = head_lut[labels[oval]].mean() if oval.any() else 0.0
                    figures["agreement"][k] = person[oval].sum() / oval_px
                    figures["empty"][k] = person.sum() < EMPTY_PERSON * oval_px
                    neck = labels == Label.NECK
                    figures["neck_area"][k] = np.count_nonzero(neck)
                    if prev is not None:
                        figures["changed"][k] = np.count_nonzero(labels != prev) / labels.size
                        figures["neck_changed"][k] = np.count_nonzero(neck != (prev == Label.NECK))
                    writes.append(pool.submit(write_image_file, Path(out_dir) / frame_name(i, "png"), labels))
                prev = labels
            for w in writes:
                w.result()  # re-raise a failed write here
    finally:
        person_model.close()
    return figures


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    n = ds.n_frames
    lm = ds.load_array("landmarks_2d")
    neck_len, shoulders_seen = neck_lengths(ds, lm)
    with ds.staged_dir("parsing") as d:
        jobs = [(ds, lm, neck_len, a, b, WARM_UP, str(d), k == 0) for k, (a, b) in enumerate(parallel.segments(n))]
        parts = parallel.map_segments(label_segment, jobs)
        fig = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        empty_fraction = float(fig["empty"].mean())
        if empty_fraction > MAX_EMPTY_FRACTION:  # raised inside: the label maps of a refused clip are not kept
            raise UserError(
                f"the person was not segmented from the background in {empty_fraction:.0%} of the frames",
                "use a video with the person's head and shoulders clearly in front of the background, well lit, "
                "with the camera steady.",
            )
    changed = fig["changed"][np.isfinite(fig["changed"])]
    neck_changed = fig["neck_changed"][np.isfinite(fig["neck_changed"])]
    neck_area = float(np.mean(fig["neck_area"]))
    if empty_fraction > 0.05:
        log.warning("person mask nearly empty in %.0f%% of the frames", 100 * empty_fraction)
    return {
        "flicker": float(np.mean(changed)) if len(changed) else 0.0,
        # pixels whose neck label changes from one frame to the next, in % of the mean neck area
        "neck_flicker_percent": 100 * float(np.mean(neck_changed)) / neck_area if len(neck_changed) and neck_area
        else 0.0,
        "face_coverage": float(np.mean(fig["coverage"])),
        "segmentation_face_agreement": float(np.mean(fig["agreement"])),
        "empty_person_fraction": empty_fraction,
        "shoulders_seen_fraction": shoulders_seen,
        "neck_length_face_heights": float(np.median(neck_len / np.array([face_height(p) for p in lm]))),
    }


STEP = Step(
    name="parsing",
    version=4,
    requires=("landmarks",),
    outputs=("parsing/",),
    run=run,
    describe="per-frame label maps (segmentation + face mesh polygons)",
    parallel=True,
    prefetch=prefetch,
)

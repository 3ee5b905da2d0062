"""The embedded sample clip: a talking portrait made from a public-domain photo, with per-frame ground truth.

No user file and no download: the portrait is scikit-image's `astronaut` (NASA photo of Eileen Collins, public domain,
shipped inside the scikit-image wheel), the speech is espeak-ng (`nerf_talk.speech`), and the face is animated by a
mesh warp driven by that speech's own phoneme timings. Because every motion is generated, it is known exactly, so tests
can check preprocessing against it.

How a frame is made (everything per-image is computed once, each frame is two remaps and a composite):
1. once: the photo's 478 mediapipe landmarks; the person's mask (selfie segmentation); the background behind them
   filled in (cv2.inpaint) so that a swaying person uncovers plausible background, not a hole;
2. per frame, the face: landmark displacements (jaw, chin and lower lip down by the mouth opening, upper lip a little
   up, lip corners half; upper eyelids onto the lower lids for blinks) interpolated piecewise-affinely over a fixed
   Delaunay triangulation of the landmarks plus a ring of fixed points, applied as a dense backward map (cv2.remap);
   then a dark mouth interior with a band of upper teeth drawn inside the inner-lip polygon;
3. per frame, the head sway: a similarity (roll about the neck, small translation and scale) applied to the person,
   fully on the head and fading down the body (the shoulders move less than the head, as in a real sitter); the moved
   person is composited over the static background plate.

Ground truth (`truth.npz`, one row per video frame):
  mouth_open [N]    inner-lip gap (landmark 13 to 14) in output pixels; 0 = lips closed
  mouth_target [N]  the smoothed phoneme-driven opening in [0, 1] that produced it
  blink [N]         eyelid closure in [0, 1]; 1 = closed
  pose2d [N, 4]     (tx_px, ty_px, roll_deg, scale) of the head: the face centre c (mean of the 4 eye corners) moves
                    to c + (tx, ty), and any head point x goes to c + t + scale * R(roll) (x - c), with R rotating in
                    image coordinates (y down), so the angle atan2(dy, dx) of the eye line grows by roll
  landmarks [N, 478, 2]  where each of the photo's landmarks is drawn in the frame (irises follow the pose only)
  fps, audio_rate, phoneme_start / phoneme_end (s) / phoneme_label (IPA), text, params (JSON, for reuse checks)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from nerf_talk import speech
from nerf_talk.media import atomic_output, write_video
from preprocess import mesh_topology as mt

VERSION = 3  # bump when the rendering changes, so that cached clips are remade
SIZE = 512

# Sentences written for this project; the clip speaks as many as fit, with pauses between them.
SENTENCES = (
    "Hello, I am an astronaut, and today I will talk about our mission to space.",
    "Every morning we check the ship, open the hatch, and look back at the bright blue planet.",
    "Papa Bob bought a map of the moon.",
    "It is a quiet and peaceful place, far above the clouds.",
    "Many hands made this journey possible.",
)
VOICE, RATE_WPM, PITCH = "en-us", 160, 55
LEAD_SILENCE_S, PAUSE_RANGE_S, TAIL_MIN_S = 0.4, (0.6, 1.0), 0.3

MAX_GAP_FRAC = 0.38  # widest inner-lip gap, as a fraction of the mouth width (open vowels in real speech: ~0.3-0.5)
ROLL_DEG, SHIFT_PX, SCALE_AMP = 4.0, (3.0, 2.0), 0.012
BLINK_EVERY_S, BLINK_LEN_S = (2.0, 5.0), (0.15, 0.25)


class SampleClip(NamedTuple):
    video: Path
    truth: Path


# ------------------------------------------------------------------------------------------------ the portrait
@dataclass
class _Portrait:
    image: np.ndarray  # [H, W, 3] uint8
    landmarks: np.ndarray  # [478, 2] float64, pixels
    alpha: np.ndarray  # [H, W] float32, the person (soft edge)
    plate: np.ndarray  # [H, W, 3] uint8, the background with the person filled in


def _detect_landmarks(image: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        res = fm.process(image)
    if not res.multi_face_landmarks:
        raise RuntimeError("mediapipe found no face in the sample portrait (the scikit-image astronaut)")
    h, w = image.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float64)


def _segment_person(image: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as ss:
        m = ss.process(image).segmentation_mask.astype(np.float32)
    # Keep the largest blob (the sitter): stray speckles in the background would otherwise sway with her.
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0.5).astype(np.uint8))
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = cv2.dilate((labels == keep).astype(np.uint8), np.ones((5, 5), np.uint8))
    # Sharpen the network's soft edge a little (it is blurry over ~10 px) but keep it anti-aliased.
    return np.clip((m - 0.3) / 0.4, 0, 1) * blob


def _background_plate(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The background with the person removed. Sway uncovers a band of up to ~25 px around the person, so the fill
    only needs to be plausible near the silhouette; Telea inpainting at quarter resolution does that in ~0.1 s where
    full resolution would take seconds for a hole this large."""
    hole = cv2.dilate((alpha > 0.05).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    small = cv2.resize(image, (SIZE // 4, SIZE // 4), interpolation=cv2.INTER_AREA)
    small_hole = (cv2.resize(hole.astype(np.float32), (SIZE // 4, SIZE // 4)) > 0.01).astype(np.uint8)
    filled = cv2.inpaint(small, small_hole, 5, cv2.INPAINT_TELEA)
    up = cv2.resize(filled, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    soft = cv2.GaussianBlur(hole.astype(np.float32), (0, 0), 2.0)[..., None]
    return (image * (1 - soft) + up * soft).astype(np.uint8)


def _close_photo_mouth(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The photo smiles with parted lips and teeth showing, and mediapipe's inner-lip loop runs a little inside the
    visible opening (most at the dark mouth corners). Fill the opening, dilated by a few pixels, with the surrounding
    lip colour: closing the mouth then gives lips that meet instead of a squeezed line of teeth with dark specks at
    the corners, and when it opens, `_draw_mouth` paints the interior anyway."""
    hole = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(hole, [np.round(lm[list(mt.LIPS_INNER_LOOP)] * 4).astype(np.int32)], 1, cv2.LINE_8, shift=2)
    hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 5)))
    # Dark pixels just beyond it inside the outer lip (the shadowed corners of the smile) go too.
    outer = np.zeros_like(hole)
    cv2.fillPoly(outer, [np.round(lm[list(mt.LIPS_OUTER_LOOP)] * 4).astype(np.int32)], 1, cv2.LINE_8, shift=2)
    near = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    hole |= (near & outer & (luma < np.percentile(luma[outer > 0], 25))).astype(np.uint8)
    return cv2.inpaint(image, hole, 3, cv2.INPAINT_TELEA)


def _portrait() -> _Portrait:
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[..., :3])
    if image.shape[:2] != (SIZE, SIZE):
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    alpha = _segment_person(image)
    lm = _detect_landmarks(image)
    return _Portrait(_close_photo_mouth(image, lm), lm, alpha, _background_plate(image, alpha))


# ------------------------------------------------------------------------------------------------ face geometry
class _FaceFrame:
    """The face's own axes (from the eye corners) and the measurements the animation is scaled by."""

    def __init__(self, lm: np.ndarray):
        r_out, l_out = lm[mt.RIGHT_EYE_CORNERS[0]], lm[mt.LEFT_EYE_CORNERS[1]]
        self.right = (l_out - r_out) / np.linalg.norm(l_out - r_out)  # person's right eye -> left eye
        self.down = np.array([-self.right[1], self.right[0]])  # image "down" for an upright face
        self.centre = lm[[*mt.RIGHT_EYE_CORNERS, *mt.LEFT_EYE_CORNERS]].mean(0)
        self.mouth_width = float(np.linalg.norm(lm[mt.MOUTH_CORNERS[0]] - lm[mt.MOUTH_CORNERS[1]]))
        self.half_width = float(np.linalg.norm(lm[454] - lm[234])) / 2
        self.rest_gap = float((lm[mt.LOWER_LIP_INNER] - lm[mt.UPPER_LIP_INNER]) @ self.down)


def _split_loop(loop: tuple[int, ...], corner_a: int, corner_b: int) -> tuple[list[int], list[int]]:
    """A closed lip/eye loop -> its two halves from corner_a to corner_b (both include the corners)."""
    loop = list(loop)
    i = loop.index(corner_a)
    rolled = loop[i:] + loop[:i]
    k = rolled.index(corner_b)
    return rolled[: k + 1], rolled[k:] + [rolled[0]]


def _lower_upper(loop, corner_a, corner_b, lm, down) -> tuple[list[int], list[int]]:
    h1, h2 = _split_loop(loop, corner_a, corner_b)
    below = lambda h: np.mean(lm[h] @ down)  # noqa: E731
    return (h1, h2) if below(h1) > below(h2) else (h2, h1)


def _interp(x, xp, fp):
    """np.interp for unsorted sample points (a curve given as landmarks in loop order), flat beyond the ends."""
    o = np.argsort(xp)
    return np.interp(x, np.asarray(xp)[o], np.asarray(fp)[o])


class _Rig:
    """Landmark displacements for a mouth opening and a blink, as [478, 2] arrays (computed from weights made once)."""

    # Skin rings above each upper eyelid (mediapipe's eye contour rings 2 and 3, inner to outer): they follow the lid
    # partly so that the lid skin stretches smoothly instead of tearing at the lid margin.
    RIGHT_RINGS = ((247, 30, 29, 27, 28, 56, 190), (113, 225, 224, 223, 222, 221, 189))
    LEFT_RINGS = ((467, 260, 259, 257, 258, 286, 414), (342, 445, 444, 443, 442, 441, 413))
    RING_FOLLOW = (0.45, 0.15)

    def __init__(self, lm: np.ndarray):
        self.lm = lm
        f = self.frame = _FaceFrame(lm)
        n = len(lm)
        c0, c1 = mt.MOUTH_CORNERS
        in_lo, in_up = _lower_upper(mt.LIPS_INNER_LOOP, 78, 308, lm, f.down)
        out_lo, out_up = _lower_upper(mt.LIPS_OUTER_LOOP, c0, c1, lm, f.down)
        corners = {c0, c1, 78, 308}

        # Lower weight: how much of the jaw drop a point follows. Explicit for the lips; for other points by height
        # relative to the mouth line (the inner-lip midline, extended flat beyond the corners), fading sideways
        # because the jaw hinges near the ears: its sides move less than the chin.
        mid_h = lm[in_lo] @ f.right
        mid_v = (lm[in_lo] @ f.down + _interp(mid_h, lm[in_up] @ f.right, lm[in_up] @ f.down)) / 2
        h = (lm - lm[[c0, c1]].mean(0)) @ f.right
        v = lm @ f.down - _interp(lm @ f.right, mid_h, mid_v)
        scale = max(f.mouth_width * 0.08, 1.0)
        w_low = np.clip((v + scale) / (2 * scale), 0, 1)
        w_low = w_low * w_low * (3 - 2 * w_low)
        lateral = np.clip(1 - 0.75 * np.clip((np.abs(h) - 0.35 * f.half_width) / (0.65 * f.half_width), 0, 1), 0, 1)
        w_low = w_low * lateral
        w_up = np.zeros(n)
        # Along the lips the opening tapers from the middle to the corners (the mouth opens as an oval; moving the
        # whole lower lip equally would fold the lip over itself at the corners when the lips close).
        taper = 0.5 + 0.5 * np.clip(1 - (h / (0.5 * f.mouth_width)) ** 2, 0, 1)
        for i in in_lo + out_lo:
            w_low[i] = taper[i]
        for i in in_up:
            w_low[i], w_up[i] = 0.0, taper[i] * 2 - 1
        for i in out_up:
            w_low[i], w_up[i] = 0.0, 0.6 * (taper[i] * 2 - 1)
        for i in corners:
            w_low[i], w_up[i] = 0.5, 0.0
        w_low[468:], w_up[468:] = 0.0, 0.0  # irises are not part of the warp mesh
        self.w_low, self.w_up = w_low, w_up

        # Blink: each upper-lid point travels to the lower lid below it; the skin rings above follow partly.
        self.lid_pts, self.lid_travel = [], []
        for loop, (ca, cb), rings in ((mt.RIGHT_EYE_LOOP, mt.RIGHT_EYE_CORNERS, self.RIGHT_RINGS),
                                      (mt.LEFT_EYE_LOOP, mt.LEFT_EYE_CORNERS, self.LEFT_RINGS)):
            lower, upper = _lower_upper(loop, ca, cb, lm, f.down)
            lo_h, lo_v = lm[lower] @ f.right, lm[lower] @ f.down
            travel = {}
            for i in upper[1:-1]:  # not the corners
                travel[i] = max(0.0, float(_interp(lm[i] @ f.right, lo_h, lo_v) - lm[i] @ f.down)) * 0.97
            up_h = np.array([lm[i] @ f.right for i in travel])
            up_t = np.array(list(travel.values()))
            for ring, follow in zip(rings, self.RING_FOLLOW):
                for i in ring:
                    travel[i] = follow * float(_interp(lm[i] @ f.right, up_h, up_t))
            self.lid_pts += list(travel)
            self.lid_travel += list(travel.values())
        self.lid_pts = np.array(self.lid_pts)
        self.lid_travel = np.array(self.lid_travel)

    def max_gap(self) -> float:
        return MAX_GAP_FRAC * self.frame.mouth_width

    def displaced(self, gap_px: float, blink: float) -> np.ndarray:
        """[478, 2] landmarks with the inner-lip gap set to `gap_px` (>= 0) and the lids closed by `blink`."""
        f = self.frame
        delta = gap_px - f.rest_gap  # negative closes the photo's (slightly parted, smiling) lips
        lift = 0.12 * max(delta, 0.0)  # the upper lip rises a little on wide openings
        d = np.outer(self.w_low * (delta + lift) - self.w_up * lift, f.down)
        d[self.lid_pts] += np.outer(blink * self.lid_travel, f.down)
        return self.lm + d


# ------------------------------------------------------------------------------------------------ the warps
class _MeshWarp:
    """Piecewise-affine backward warp over a fixed triangulation: the landmarks (without irises) plus a ring of fixed
    points around the face and the corners of a face box. Per frame: rasterise the moved triangles' ids, then map each
    pixel of the box back through its triangle's affine. Outside the box nothing moves."""

    def __init__(self, lm: np.ndarray, frame: _FaceFrame, size: int):
        from scipy.spatial import Delaunay

        self.n_mesh = 468
        oval = lm[list(mt.FACE_OVAL_LOOP)]
        ring = frame.centre + (oval - frame.centre) * 1.45
        ring2 = frame.centre + (oval - frame.centre) * 1.9
        lo, hi = np.floor(ring2.min(0)) - 4, np.ceil(ring2.max(0)) + 4
        lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
        box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        self.fixed = np.concatenate([ring, ring2, box])
        self.src = np.concatenate([lm[: self.n_mesh], self.fixed])
        self.tris = Delaunay(self.src).simplices.astype(np.int64)  # [T, 3]
        self.x0, self.y0 = int(lo[0]), int(lo[1])
        self.x1, self.y1 = int(hi[0]) + 1, int(hi[1]) + 1
        gy, gx = np.mgrid[self.y0 : self.y1, self.x0 : self.x1]
        self.grid = np.stack([gx, gy, np.ones_like(gx)], -1).astype(np.float64)  # [h, w, 3] homogeneous pixels
        self.ids = np.empty(gx.shape, np.int32)

    def apply(self, image: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """`image` with its face moved so that the landmarks lie at `moved` [478, 2]; only the face box is resampled."""
        mx, my = self.maps(moved)
        out = image.copy()
        out[self.y0 : self.y1, self.x0 : self.x1] = cv2.remap(image, mx, my, cv2.INTER_LINEAR,
                                                              borderMode=cv2.BORDER_REFLECT)
        return out

    def maps(self, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps (map_x, map_y) [h, w] float32 over the face box for landmarks moved to `moved` [478, 2]."""
        dst = np.concatenate([moved[: self.n_mesh], self.fixed])
        D, S = dst[self.tris], self.src[self.tris]  # [T, 3, 2]
        Dh = np.concatenate([D, np.ones((len(D), 3, 1))], -1)  # [T, 3, 3]
        det = np.linalg.det(Dh)
        ok = np.abs(det) > 1e-6  # collapsed triangles (a closed lid) cover no pixels; keep them out of the solve
        A = np.zeros((len(D), 3, 2))
        A[ok] = np.linalg.solve(Dh[ok], S[ok])  # [x y 1] @ A = source point
        self.ids.fill(-1)
        off = np.array([self.x0, self.y0])
        pts = np.round((D - off) * 4).astype(np.int32)  # 2 bits of sub-pixel precision
        for t in np.nonzero(ok)[0]:
            cv2.fillConvexPoly(self.ids, pts[t], int(t), lineType=cv2.LINE_8, shift=2)
        src = np.einsum("hwk,hwkj->hwj", self.grid, A[np.maximum(self.ids, 0)])
        miss = self.ids < 0
        src[miss] = self.grid[miss][:, :2]
        return src[..., 0].astype(np.float32), src[..., 1].astype(np.float32)


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


class _Sway:
    """The person's motion: roll about a pivot in the neck, translation and scale, at full strength above the chin and
    fading to `BODY_FOLLOW` down the body. Backward map per output pixel, with the strength taken at the output row
    (it varies slowly, so this is the exact inverse on the head, where it is constant)."""

    BODY_FOLLOW = 0.25

    def __init__(self, lm: np.ndarray, frame: _FaceFrame, size: int):
        face_h = float(np.linalg.norm(lm[mt.CHIN] - lm[mt.FOREHEAD]))
        chin_y = float(lm[mt.CHIN][1])
        self.pivot = lm[mt.CHIN] + frame.down * 0.35 * face_h
        y = np.arange(size, dtype=np.float64)
        t = np.clip((y - (chin_y + 0.25 * face_h)) / (1.5 * face_h), 0, 1)
        self.strength = 1 - (1 - self.BODY_FOLLOW) * t * t * (3 - 2 * t)  # [H]
        gy, gx = np.mgrid[0:size, 0:size].astype(np.float64)
        self.gx, self.gy = gx, gy
        self.centre = frame.centre

    def forward(self, pts: np.ndarray, roll: float, shift: np.ndarray, scale: float) -> np.ndarray:
        """Where head points [K, 2] go: pivot + shift + scale * R(roll) (x - pivot)."""
        return self.pivot + shift + scale * (pts - self.pivot) @ _rotation(roll).T

    def maps(self, roll: float, shift: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        w = self.strength[:, None]
        a = np.deg2rad(roll) * w
        s = 1 + (scale - 1) * w
        qx = self.gx - self.pivot[0] - shift[0] * w
        qy = self.gy - self.pivot[1] - shift[1] * w
        c, sn = np.cos(a), np.sin(a)  # inverse rotation: R(-a)
        return ((c * qx + sn * qy) / s + self.pivot[0]).astype(np.float32), (
            (-sn * qx + c * qy) / s + self.pivot[1]
        ).astype(np.float32)


# ------------------------------------------------------------------------------------------------ mouth interior
_MOUTH_DARK = np.array([38, 14, 18], np.float32)
_MOUTH_EDGE = np.array([95, 38, 42], np.float32)
_TEETH = np.array([214, 206, 192], np.float32)


def _draw_mouth(img: np.ndarray, moved: np.ndarray, frame: _FaceFrame, gap_px: float) -> None:
    """Paint the mouth interior inside the moved inner-lip polygon, in place: dark throat, lighter near the lips, and
    the upper teeth as a band under the upper lip (about a third of the opening, at most ~10% of the mouth width)."""
    poly = moved[list(mt.LIPS_INNER_LOOP)]
    x0, y0 = np.floor(poly.min(0)).astype(int) - 3
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = y1 - y0, x1 - x0
    ss = 4  # draw 4x supersampled for anti-aliased edges
    mask = np.zeros((h * ss, w * ss), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - [x0, y0]) * ss * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    inner = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
    # Throat darkness: darkest in the middle of the opening.
    dist = cv2.distanceTransform((inner[..., 0] > 0.5).astype(np.uint8), cv2.DIST_L2, 3)[..., None]
    depth = np.clip(dist / max(gap_px * 0.35, 1.0), 0, 1)
    colour = _MOUTH_EDGE * (1 - depth) + _MOUTH_DARK * depth
    # Teeth: the upper inner-lip edge shifted down, only in the middle 70% of the mouth.
    in_lo, in_up = _lower_upper(mt.LIPS_INNER_LOOP, 78, 308, moved, frame.down)
    upper = moved[in_up]
    teeth_h = min(0.35 * gap_px, 0.1 * frame.mouth_width)
    centre = moved[[78, 308]].mean(0)
    half = 0.35 * frame.mouth_width
    edge = [p for p in upper if abs((p - centre) @ frame.right) <= half]
    if len(edge) >= 2 and teeth_h > 0.6:
        edge = np.array(edge)
        band = np.concatenate([edge - frame.down * 2, (edge + frame.down * teeth_h)[::-1]])
        tmask = np.zeros((h * ss, w * ss), np.uint8)
        cv2.fillPoly(tmask, [np.round((band - [x0, y0]) * ss * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        teeth = cv2.resize(tmask, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
        # Shade the band: teeth turn away from the camera towards the corners and sit in the mouth's shadow, so a
        # flat white bar would look pasted on.
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        side = np.abs((gx - centre[0]) * frame.right[0] + (gy - centre[1]) * frame.right[1]) / half
        shade = (1 - 0.35 * np.clip(side, 0, 1) ** 2)[..., None]
        colour = colour * (1 - teeth) + _TEETH * shade * teeth
    # The line where the lips meet: a soft dark seam, strongest when the lips are closed (no interior to show).
    seam = np.zeros((h * ss, w * ss), np.uint8)
    cv2.polylines(seam, [np.round((poly - [x0, y0]) * ss * 4).astype(np.int32)], True, 255, ss, cv2.LINE_AA, shift=2)
    seam = cv2.resize(seam, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255 * 0.55
    roi = img[y0:y1, x0:x1].astype(np.float32)
    roi = roi * (1 - seam) + _MOUTH_EDGE * seam
    img[y0:y1, x0:x1] = np.clip(roi * (1 - inner) + colour * inner, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ the motion
_CHILD = """
import json, sys
import numpy as np
from nerf_talk import speech
job = json.loads(sys.stdin.read())
out = {}
for i, sentence in enumerate(job["sentences"]):
    sp = speech.synthesize(sentence, voice=job["voice"], rate_wpm=job["rate"], pitch=job["pitch"])
    out[f"audio{i}"] = sp.audio
    out[f"phonemes{i}"] = np.array(json.dumps(sp.phonemes))
    out[f"rate{i}"] = np.array(sp.sample_rate)
np.savez(job["out"], **out)
"""


def _synthesize_fresh(sentences: list[str]) -> list[speech.Speech]:
    """Speak each sentence, in a fresh process. libespeak-ng carries state from one utterance to the next (the same
    sentence comes out a few hundred samples longer on a second call) and cannot be re-initialised in a process, so a
    clip made after other speech in the same process would differ; a child process always starts from the same state,
    which keeps the clip deterministic for its seed."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = {"sentences": sentences, "voice": VOICE, "rate": RATE_WPM, "pitch": PITCH, "out": f"{tmp}/speech.npz"}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(job), text=True, capture_output=True,
                             env=env, timeout=300)
        if res.returncode != 0:
            # Re-raise the child's error in this process, with its message (a missing library is a UserError).
            speech.synthesize(sentences[0], voice=VOICE, rate_wpm=RATE_WPM, pitch=PITCH)
            raise RuntimeError(f"speech synthesis in a child process failed:\n{res.stderr[-2000:]}")
        with np.load(job["out"]) as z:
            return [speech.Speech(z[f"audio{i}"], int(z[f"rate{i}"]),
                                  [tuple(p) for p in json.loads(str(z[f"phonemes{i}"]))])
                    for i in range(len(sentences))]


def _speech(text: str | None, seconds: float, rng: np.random.Generator):
    """(audio [S] float32, rate, phonemes, duration_s, text): sentences with pauses of silence between them. Without
    `text`, as many of SENTENCES (in a seeded order) as fit in `seconds`; a longer `text` lengthens the clip."""
    sentences = [text] if text else list(SENTENCES)
    spoken_as = dict(zip(sentences, _synthesize_fresh(sentences)))  # always all of them, in one order: determinism
    if not text:
        sentences = [SENTENCES[i] for i in rng.permutation(len(SENTENCES))]
    pieces, phonemes, spoken = [], [], []
    rate = None
    t = LEAD_SILENCE_S
    for sentence in sentences:
        sp = spoken_as[sentence]
        rate = sp.sample_rate
        # espeak pads each utterance with silence; trim it so that our pause lengths are the real ones.
        loud = np.nonzero(np.abs(sp.audio) > 0.01)[0]
        a0, a1 = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, 0)
        dur = (a1 - a0) / rate
        if text is None and spoken and t + dur + TAIL_MIN_S > seconds:
            continue  # does not fit: try a shorter one
        start = t
        pieces.append((start, sp.audio[a0:a1]))
        phonemes += [(start + s - a0 / rate, start + e - a0 / rate, p) for s, e, p in sp.phonemes
                     if e > a0 / rate and s < a1 / rate]
        spoken.append(sentence)
        t = start + dur + float(rng.uniform(*PAUSE_RANGE_S))
    duration = max(seconds, pieces[-1][0] + len(pieces[-1][1]) / rate + TAIL_MIN_S)
    audio = np.zeros(int(round(duration * rate)), np.float32)
    for start, a in pieces:
        k = int(round(start * rate))
        audio[k : k + len(a)] = a[: len(audio) - k]
    phonemes = [(max(s, 0.0), min(e, duration), p) for s, e, p in phonemes]
    return audio, rate, phonemes, duration, " ".join(spoken)


def _blinks(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """[n] closure in [0, 1]: a blink every 2-5 s lasting 150-250 ms, closing faster than it reopens."""
    out = np.zeros(n)
    t = (np.arange(n) + 0.5) / fps
    start = float(rng.uniform(0.8, 2.0))
    while start < n / fps:
        length = float(rng.uniform(*BLINK_LEN_S))
        close = 0.4 * length
        u = np.where(t < start + close, (t - start) / close, 1 - (t - start - close) / (length - close))
        u = np.clip(u, 0, 1)
        out = np.maximum(out, np.sin(u * np.pi / 2) ** 1.5)
        start += length + float(rng.uniform(*BLINK_EVERY_S))
    return out


def _sway_track(n: int, fps: float, rng: np.random.Generator):
    """Slow smooth head motion: each component a sum of two sines with seeded periods and phases."""
    t = np.arange(n) / fps

    def wave(slow=(5.0, 8.0), fast=(2.5, 4.0)):
        p1, p2 = rng.uniform(*slow), rng.uniform(*fast)
        f1, f2 = rng.uniform(0, 2 * np.pi, 2)
        return 0.7 * np.sin(2 * np.pi * t / p1 + f1) + 0.3 * np.sin(2 * np.pi * t / p2 + f2)

    roll = ROLL_DEG * wave()
    shift = np.stack([SHIFT_PX[0] * wave(), SHIFT_PX[1] * wave()], 1)
    scale = 1 + SCALE_AMP * wave((6.0, 10.0), (3.0, 5.0))
    return roll, shift, scale


# ------------------------------------------------------------------------------------------------ the clip
def _params(seconds, fps, seed, text) -> dict:
    return {"version": VERSION, "seconds": float(seconds), "fps": float(fps), "seed": int(seed), "text": text or "",
            "voice": VOICE, "rate_wpm": RATE_WPM, "pitch": PITCH}


def _cached(video: Path, truth: Path, params: dict) -> bool:
    if not (video.is_file() and truth.is_file()):
        return False
    try:
        with np.load(truth) as z:
            return json.loads(str(z["params"])) == params
    except (OSError, ValueError, KeyError):
        return False


def make_sample_clip(
    out_dir: str | os.PathLike, seconds: float = 12.0, fps: float = 25, seed: int = 0, text: str | None = None
) -> SampleClip:
    """Write `out_dir/sample.mp4` (512x512, H.264 + AAC speech) and `out_dir/truth.npz` (see the module docstring).

    Deterministic for (seconds, fps, seed, text); an existing clip made with the same parameters is reused.
    """
    out_dir = Path(out_dir)
    video, truth = out_dir / "sample.mp4", out_dir / "truth.npz"
    params = _params(seconds, fps, seed, text)
    if _cached(video, truth, params):
        return SampleClip(video, truth)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()

    audio, audio_rate, phonemes, duration, spoken = _speech(text, seconds, rng)
    n = int(round(duration * fps))
    portrait = _portrait()
    rig = _Rig(portrait.landmarks)
    face = rig.frame
    mesh = _MeshWarp(portrait.landmarks, face, SIZE)
    sway = _Sway(portrait.landmarks, face, SIZE)

    target = speech.mouth_track(phonemes, n, fps)
    gap = target * rig.max_gap()  # in the photo's pixels, before the head's scale
    blink = _blinks(n, fps, rng)
    roll, shift, scale = _sway_track(n, fps, rng)

    pose2d = np.zeros((n, 4), np.float32)
    landmarks = np.zeros((n, len(portrait.landmarks), 2), np.float32)
    plate = portrait.plate.astype(np.float32)

    def frames():
        for k in range(n):
            moved = rig.displaced(float(gap[k]), float(blink[k]))
            person = mesh.apply(portrait.image, moved)
            _draw_mouth(person, moved, face, float(gap[k]))
            sx, sy = sway.maps(roll[k], shift[k], scale[k])
            person = cv2.remap(person, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
            a = cv2.remap(portrait.alpha, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
            landmarks[k] = sway.forward(moved, roll[k], shift[k], scale[k])
            c_moved = sway.forward(face.centre[None], roll[k], shift[k], scale[k])[0]
            pose2d[k] = (*(c_moved - face.centre), roll[k], scale[k])
            yield np.clip(person * a + plate * (1 - a) + 0.5, 0, 255).astype(np.uint8)

    written = write_video(video, frames(), fps, audio=audio, audio_rate=audio_rate)
    if written != n:
        raise RuntimeError(f"sample clip: wrote {written} frames, expected {n}")
    with atomic_output(truth) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            mouth_open=(gap * scale).astype(np.float32),
            mouth_target=target.astype(np.float32),
            blink=blink.astype(np.float32),
            pose2d=pose2d,
            landmarks=landmarks,
            fps=np.float32(fps),
            audio_rate=np.int32(audio_rate),
            phoneme_start=np.array([p[0] for p in phonemes], np.float32),
            phoneme_end=np.array([p[1] for p in phonemes], np.float32),
            phoneme_label=np.array([p[2] for p in phonemes], dtype=np.str_),
            text=np.str_(spoken),
            params=np.str_(json.dumps(params)),
            generation_s=np.float32(time.perf_counter() - t_start),
        )
    return SampleClip(video, truth)

"""Step: a parsing label map per frame (preprocess.labels.Label), without a parsing network.

Person vs background comes from mediapipe's selfie segmentation, smoothed over time so that masks do not flicker.
The face's parts come from the mesh polygons, which are far more precise than any segmentation at this size:
face skin inside the face oval, brows, eyes, lips between the outer and inner lip loops, mouth interior inside the
inner loop, teeth as its bright, unsaturated pixels. Hair, neck and torso split the rest of the person by geometry
anchored on the mesh: hair around and above the face, neck below the jaw within its width, torso the rest.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm.auto import tqdm

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, frame_name, write_image_file
from preprocess.labels import HEAD_LABELS, PALETTE, Label
from preprocess.step import Step

MASK_EMA = 0.5  # weight of the new frame in the temporal smoothing of the person mask
HAIR_GROWTH = 1.45  # the hair region is the face oval grown by this factor about its centre...
HAIR_LIFT = 0.18  # ...and lifted by this fraction of the face height
NECK_DEPTH = 0.75  # the neck reaches this many face heights below the chin (cut by the person mask)


def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a label map."""
    return np.asarray(PALETTE, np.uint8)[labels]


def overlay_labels(img: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The label colours blended over an RGB image (background left as it is)."""
    col = colorize(labels).astype(np.float32)
    out = img.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    return out.clip(0, 255).astype(np.uint8)


def _poly(mask: np.ndarray, pts: np.ndarray, value: int = 1) -> np.ndarray:
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], value)
    return mask


def label_frame(img: np.ndarray, person: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Labels [H, W] uint8 for one RGB frame, its boolean person mask and its [478, 2] landmarks."""
    h, w = person.shape
    oval = mt.polygon(lm, mt.FACE_OVAL_LOOP)
    centre = oval.mean(0)
    face_h = float(np.linalg.norm(lm[mt.CHIN] - lm[mt.FOREHEAD]))
    chin_y = float(lm[mt.CHIN, 1])
    labels = np.zeros((h, w), np.uint8)
    rows = np.arange(h)[:, None]

    # Person pixels above the chin are hair (ears and hair spilling past the oval), below it torso, to begin with.
    labels[person & (rows < chin_y)] = Label.HAIR
    labels[person & (rows >= chin_y)] = Label.TORSO
    hair_region = _poly(np.zeros((h, w), np.uint8), centre + HAIR_GROWTH * (oval - centre) - [0, HAIR_LIFT * face_h])
    labels[person & hair_region.astype(bool) & (rows < chin_y)] = Label.HAIR

    # Neck: below the jaw line (the oval below the mouth corners), within the jaw's width, down to a fixed depth.
    lower = oval[oval[:, 1] > lm[list(mt.MOUTH_CORNERS), 1].max()]
    x0, x1 = lower[:, 0].min(), lower[:, 0].max()
    inset = 0.12 * (x1 - x0)
    neck_poly = np.concatenate([lower[np.argsort(lower[:, 0])],
                                [[x1 - inset, chin_y + NECK_DEPTH * face_h], [x0 + inset, chin_y + NECK_DEPTH * face_h]]])
    neck = _poly(np.zeros((h, w), np.uint8), neck_poly).astype(bool)
    labels[person & neck] = Label.NECK

    # The face's parts, painted whatever the person mask says (the mesh is the better judge there).
    _poly(labels, oval, Label.FACE)
    for loop in (mt.LEFT_BROW_LOOP, mt.RIGHT_BROW_LOOP):
        _poly(labels, mt.polygon(lm, loop), Label.BROWS)
    for loop in (mt.LEFT_EYE_LOOP, mt.RIGHT_EYE_LOOP):
        _poly(labels, mt.polygon(lm, loop), Label.EYES)
    _poly(labels, mt.polygon(lm, mt.LIPS_OUTER_LOOP), Label.LIPS)
    mouth = _poly(np.zeros((h, w), np.uint8), mt.polygon(lm, mt.LIPS_INNER_LOOP)).astype(bool)
    labels[mouth] = Label.MOUTH
    if mouth.any():
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        v, s = hsv[..., 2].astype(np.float32), hsv[..., 1].astype(np.float32)
        # Teeth: the bright, unsaturated part of the open mouth, relative to the mouth's own brightness.
        bright = v > max(110.0, np.percentile(v[mouth], 60))
        labels[mouth & bright & (s < 90)] = Label.TEETH
    return labels


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    import mediapipe as mp

    n = ds.n_frames
    lm = ds.load_array("landmarks_2d")
    seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
    soft_prev = None
    empty = 0

    def finish(i: int, img: np.ndarray, person: np.ndarray, d) -> np.ndarray:
        labels = label_frame(img, person, lm[i])
        write_image_file(d / frame_name(i, "png"), labels)
        return labels

    head = np.array([int(x) for x in HEAD_LABELS])
    stats = {"changed": [], "coverage": [], "prev": None}

    def consume(i: int, labels: np.ndarray) -> None:
        if stats["prev"] is not None:
            stats["changed"].append(float(np.mean(labels != stats["prev"])))
        stats["prev"] = labels
        if i % 25 == 0:
            oval = _poly(np.zeros(labels.shape, np.uint8), mt.polygon(lm[i], mt.FACE_OVAL_LOOP)).astype(bool)
            stats["coverage"].append(float(np.isin(labels[oval], head).mean()))

    # Segmentation runs in order (its smoothing carries state); labelling and PNG encoding go to worker threads,
    # a few frames ahead (a bounded queue keeps memory flat on long clips).
    with ds.staged_dir("parsing") as d, ThreadPoolExecutor(os.cpu_count()) as pool:
        pending: deque = deque()
        for i in tqdm(range(n), desc="parsing"):
            img = ds.read_frame(i)
            soft = seg.process(img).segmentation_mask
            soft = soft if soft_prev is None else MASK_EMA * soft + (1 - MASK_EMA) * soft_prev
            soft_prev = soft
            person = soft > 0.5
            empty += int(person.mean() < 0.02)
            pending.append((i, pool.submit(finish, i, img, person, d)))
            while len(pending) > 8 or (i == n - 1 and pending):
                j, job = pending.popleft()
                consume(j, job.result())
    changed, coverage = stats["changed"], stats["coverage"]
    seg.close()
    if empty > 0.5 * n:
        raise UserError(
            f"no person could be segmented in {empty} of {n} frames",
            "use a video with the person clearly in front of the background (head and shoulders, good light).",
        )
    return {
        "flicker": float(np.mean(changed)) if changed else 0.0,
        "face_coverage": float(np.mean(coverage)),
        "empty_person_frames": empty,
    }


STEP = Step(
    name="parsing",
    version=1,
    requires=("landmarks",),
    outputs=("parsing/",),
    run=run,
    describe="label maps: background, hair, face parts, neck, torso",
)

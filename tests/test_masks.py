"""Parsing labels, the background plate and torso targets, on synthetic frames with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocess import mesh_topology as mt
from preprocess.background import plate_from
from preprocess.labels import Label
from preprocess.parsing import colorize, label_frame, overlay_labels
from preprocess.torso import torso_rgba


@pytest.fixture(scope="module")
def astronaut():
    """The astronaut portrait with its landmarks and person mask, from mediapipe."""
    from skimage import data

    from preprocess.landmarks import detect_landmarks, face_mesh

    img = data.astronaut()
    mesh = face_mesh(static=True)
    lm = detect_landmarks(mesh, img)
    mesh.close()
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        person = seg.process(img).segmentation_mask > 0.5
    return img, lm[:, :2], person


def _inside(lm, loop, shape):
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(mt.polygon(lm, loop)).astype(np.int32)], 1)
    return m.astype(bool)


def test_face_parts_follow_the_mesh(astronaut):
    img, lm, person = astronaut
    labels = label_frame(img, person, lm)
    shape = labels.shape
    oval = _inside(lm, mt.FACE_OVAL_LOOP, shape)
    assert np.isin(labels[oval], [Label.FACE, Label.BROWS, Label.EYES, Label.LIPS, Label.MOUTH, Label.TEETH]).all()
    for loop in (mt.LEFT_EYE_LOOP, mt.RIGHT_EYE_LOOP):
        assert (labels[_inside(lm, loop, shape)] == Label.EYES).mean() > 0.9
    lips = _inside(lm, mt.LIPS_OUTER_LOOP, shape) & ~_inside(lm, mt.LIPS_INNER_LOOP, shape)
    assert (labels[lips] == Label.LIPS).mean() > 0.9
    chin_y = lm[mt.CHIN, 1]
    rows = np.nonzero(labels == Label.NECK)[0]
    # The neck starts under the jaw (beside it near the jaw's angles, never above the mouth) and lies below the chin.
    assert len(rows) and rows.min() > lm[mt.MOUTH_CORNERS, 1].max() and np.median(rows) > chin_y
    assert np.median(np.nonzero(labels == Label.TORSO)[0]) > chin_y
    hair_rows = np.nonzero(labels == Label.HAIR)[0]
    assert len(hair_rows) and np.median(hair_rows) < lm[mt.NOSE_TIP, 1]
    assert (labels[~person & ~oval] == Label.BACKGROUND).mean() > 0.95


def test_teeth_are_the_bright_part_of_the_open_mouth(astronaut):
    img, lm, person = astronaut
    lm = lm.copy()
    # Open the mouth: move the lower inner lip down, and paint a dark cavity with a white band of teeth in it.
    lower = [i for i in mt.LIPS_INNER_LOOP if lm[i, 1] > lm[mt.UPPER_LIP_INNER, 1]]
    lm[lower, 1] += 14
    img = img.copy()
    mouth = _inside(lm, mt.LIPS_INNER_LOOP, img.shape[:2])
    img[mouth] = (40, 10, 15)
    ys = np.nonzero(mouth)[0]
    teeth = mouth & (np.arange(img.shape[0])[:, None] < ys.min() + 5)
    img[teeth] = (235, 235, 230)
    labels = label_frame(img, person, lm)
    assert (labels[teeth] == Label.TEETH).mean() > 0.9
    assert (labels[mouth & ~teeth] == Label.MOUTH).mean() > 0.9


def test_background_plate_recovers_what_was_seen_and_fills_the_rest():
    rng = np.random.default_rng(0)
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    scene = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)  # a smooth, known background
    frames, masks = [], []
    for t in range(20):
        cx = 30 + 2 * t  # a disk that moves right over the scene; the left half of x < 20 is never hidden
        disk = (xx - cx) ** 2 + (yy - 48) ** 2 < 15**2
        frame = scene.copy()
        frame[disk] = rng.integers(0, 255, 3)
        frames.append(frame)
        masks.append(~disk)
    # A region the disk always covers: a fixed square hidden in every frame.
    hidden = (abs(xx - 60) < 4) & (abs(yy - 48) < 4)
    for f, m in zip(frames, masks):
        f[hidden] = 255
        m[hidden] = False
    plate, seen = plate_from(np.stack(frames), np.stack(masks), margin=1)
    assert not seen[hidden].any() and seen[:, :12].all()
    err = np.abs(plate.astype(int) - scene)[seen & ~cv2.dilate(hidden.astype(np.uint8), np.ones((9, 9))).astype(bool)]
    assert err.max() <= 1
    # The hole is filled from its surroundings: close to the smooth scene, nothing like the white that hid it.
    assert np.abs(plate[hidden].astype(int) - scene[hidden]).mean() < 20


def test_torso_target_keeps_only_neck_and_torso():
    img = np.full((32, 32, 3), 200, np.uint8)
    labels = np.zeros((32, 32), np.uint8)
    labels[:10] = Label.HAIR
    labels[10:16] = Label.FACE
    labels[16:22] = Label.NECK
    labels[22:] = Label.TORSO
    rgba = torso_rgba(img, labels)
    assert (rgba[:16, :, 3] == 0).all() and (rgba[:16, :, :3] == 0).all()
    assert (rgba[18:30, 2:30, 3] == 255).all() and (rgba[18:30, 2:30, :3] == 200).all()


def test_colour_views():
    labels = np.array([[0, Label.LIPS]], np.uint8)
    assert colorize(labels).shape == (1, 2, 3)
    over = overlay_labels(np.zeros((1, 2, 3), np.uint8), labels)
    assert (over[0, 0] == 0).all() and over[0, 1].any()

"""Parsing labels on a synthetic face with known geometry, the step's refusal of unsegmentable clips, and its figures on
a real clip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from nerf_talk.errors import UserError
from preprocess import mesh_topology as mt
from preprocess.dataset import FORMAT_VERSION, KIND, Dataset, frame_name
from preprocess.labels import HEAD_LABELS, PALETTE, Label
from preprocess.parsing import NeckSmoother, colorize, fill_spans, label_frame, overlay_labels

S = 256  # synthetic image side
SKIN, CAVITY, TEETH_RGB = (200, 150, 120), (60, 15, 20), (235, 235, 225)


def _ellipse(loop, cx, cy, a, b, start_deg, direction):
    """Landmarks of `loop` spread around an ellipse, the first at `start_deg`, going `direction` (+1: clockwise on
    screen, since y points down)."""
    k = np.arange(len(loop))
    th = np.deg2rad(start_deg + direction * 360.0 * k / len(loop))
    return np.stack([cx + a * np.cos(th), cy + b * np.sin(th)], -1)


def synthetic_face(mouth_gap: float = 10.0):
    """(landmarks [478, 2], RGB image, person mask) of a drawn frontal face whose loops follow mediapipe's order.

    Face oval: 10 at the top, then the image's right (454), the chin (152) at the bottom. Lip loops: 0/13 at the top,
    then the image's left corner (61/78), the bottom (17/14).
    """
    lm = np.tile(np.array([[128.0, 110.0]]), (mt.N_LANDMARKS, 1))
    lm[list(mt.FACE_OVAL_LOOP)] = _ellipse(mt.FACE_OVAL_LOOP, 128, 100, 45, 60, -90, +1)
    lm[list(mt.LIPS_OUTER_LOOP)] = _ellipse(mt.LIPS_OUTER_LOOP, 128, 135, 20, 4 + mouth_gap / 2 + 5, -90, -1)
    lm[list(mt.LIPS_INNER_LOOP)] = _ellipse(mt.LIPS_INNER_LOOP, 128, 135, 14, mouth_gap / 2 + 0.01, -90, -1)
    lm[list(mt.LEFT_EYE_LOOP)] = _ellipse(mt.LEFT_EYE_LOOP, 148, 88, 9, 4, 0, 1)
    lm[list(mt.RIGHT_EYE_LOOP)] = _ellipse(mt.RIGHT_EYE_LOOP, 108, 88, 9, 4, 0, 1)
    lm[list(mt.LEFT_BROW_LOOP)] = _ellipse(mt.LEFT_BROW_LOOP, 148, 74, 12, 3, 0, 1)
    lm[list(mt.RIGHT_BROW_LOOP)] = _ellipse(mt.RIGHT_BROW_LOOP, 108, 74, 12, 3, 0, 1)

    img = np.full((S, S, 3), 30, np.uint8)  # dark backdrop
    person = np.zeros((S, S), np.uint8)
    cv2.ellipse(person, (128, 90), (62, 80), 0, 0, 360, 1, -1)  # head with hair around the face
    cv2.rectangle(person, (108, 150), (148, 200), 1, -1)  # neck
    cv2.rectangle(person, (40, 195), (216, 255), 1, -1)  # shoulders
    img[person.astype(bool)] = (90, 60, 40)  # hair / clothes colour
    img[150:195, 108:149] = SKIN  # the neck shows skin
    cv2.fillPoly(img, [lm[list(mt.FACE_OVAL_LOOP)].round().astype(np.int32)], SKIN)
    inner = lm[list(mt.LIPS_INNER_LOOP)].round().astype(np.int32)
    mouth = np.zeros((S, S), np.uint8)
    cv2.fillPoly(mouth, [inner], 1)
    mouth = mouth.astype(bool)
    img[mouth] = CAVITY
    teeth = mouth & (np.arange(S)[:, None] < 135 - mouth_gap / 2 + 4)  # a band of upper teeth
    img[teeth] = TEETH_RGB
    return lm, img, person.astype(bool), mouth, teeth


def _inside(lm, loop):
    m = np.zeros((S, S), np.uint8)
    cv2.fillPoly(m, [np.round(mt.polygon(lm, loop)).astype(np.int32)], 1)
    return m.astype(bool)


def test_teeth_are_split_from_the_mouth_interior():
    lm, img, person, mouth, teeth = synthetic_face()
    labels = label_frame(img, person, lm)
    assert (labels[teeth] == Label.TEETH).mean() > 0.85
    assert (labels[mouth & ~teeth] == Label.MOUTH).mean() > 0.9


def test_lips_are_the_ring_between_the_loops_and_a_closed_mouth_has_no_interior():
    lm, img, person, _, _ = synthetic_face()
    labels = label_frame(img, person, lm)
    ring = _inside(lm, mt.LIPS_OUTER_LOOP) & ~_inside(lm, mt.LIPS_INNER_LOOP)
    assert (labels[ring] == Label.LIPS).mean() > 0.9
    closed, img_c, person_c, _, _ = synthetic_face(mouth_gap=0.0)
    labels_c = label_frame(img_c, person_c, closed)
    assert np.isin(labels_c, [Label.MOUTH, Label.TEETH]).sum() <= 2 * 28  # at most the polygon's degenerate edge


def test_face_parts_and_whole_oval_are_head_labels():
    lm, img, person, _, _ = synthetic_face()
    labels = label_frame(img, person, lm)
    oval = _inside(lm, mt.FACE_OVAL_LOOP)
    assert np.isin(labels[oval], [int(x) for x in HEAD_LABELS]).all()
    for loop in (mt.LEFT_EYE_LOOP, mt.RIGHT_EYE_LOOP):
        assert (labels[_inside(lm, loop)] == Label.EYES).mean() > 0.9
    for loop in (mt.LEFT_BROW_LOOP, mt.RIGHT_BROW_LOOP):
        assert (labels[_inside(lm, loop)] == Label.BROWS).mean() > 0.9


def test_a_collar_patch_or_a_shadow_inside_the_neck_is_neck():
    neck = np.zeros((40, 40), bool)
    neck[5:35, 12:28] = True
    neck[15:20, 17:22] = False  # enclosed: a shadow
    neck[25:30, 20:28] = False  # cutting in from the side: a collar's corner
    neck[2, 2] = True  # a speck far away
    out = fill_spans(neck)
    assert out[5:35, 12:28].all() and not out[2, 2] and out.sum() == 30 * 16


def test_the_neck_label_is_steadier_over_time():
    """A neck whose skin test flickers (a shadow at its edge comes and goes, frame by frame) keeps its shape when
    labelled as a sequence; a shadow enclosed by the neck is neck either way."""
    lm, img, person, _, _ = synthetic_face()
    frames = []
    for k in range(8):
        f = img.copy()
        f[172:178, 126:132] = (20, 20, 20)  # a dark mole in the middle: not skin by colour, enclosed
        if k % 2:
            f[182:192, 108:124] = (20, 20, 20)  # a shadow at the neck's edge: not skin, not enclosed
        frames.append(f)

    def necks(sequence: bool):
        smoother = NeckSmoother() if sequence else None
        return [label_frame(f, person, lm, smoother=smoother) == Label.NECK for f in frames]

    def flicker(ns):
        return np.mean([np.count_nonzero(a ^ b) for a, b in zip(ns, ns[1:])]) / np.mean([n.sum() for n in ns])

    alone, steady = necks(False), necks(True)
    assert flicker(alone) > 0.02 and flicker(steady) < 0.2 * flicker(alone)
    for n in alone + steady:
        assert n[175, 129]


def test_neck_lies_below_the_chin_within_the_jaw_and_torso_below_it():
    lm, img, person, _, _ = synthetic_face()
    labels = label_frame(img, person, lm)
    chin_y = lm[mt.CHIN, 1]
    ys, xs = np.nonzero(labels == Label.NECK)
    assert len(ys) > 200
    assert np.median(ys) > chin_y
    jaw_x = lm[[172, 397], 0]
    assert xs.min() >= jaw_x.min() - 1 and xs.max() <= jaw_x.max() + 1
    tys = np.nonzero(labels == Label.TORSO)[0]
    # Torso only below the line through the jaw's angles (above it a person pixel is hair), mostly below the neck.
    assert tys.min() >= lm[[172, 397], 1].min() and np.median(tys) > np.median(ys)
    # No person pixel is left unlabelled, and nothing outside the person and the face is labelled.
    assert (labels[person] != Label.BACKGROUND).all()
    assert (labels[~person & ~_inside(lm, mt.FACE_OVAL_LOOP)] == Label.BACKGROUND).all()


def test_hair_is_the_person_above_and_around_the_face_not_the_shoulders():
    lm, img, person, _, _ = synthetic_face()
    labels = label_frame(img, person, lm)
    hy, hx = np.nonzero(labels == Label.HAIR)
    assert len(hy) > 500
    assert hy.min() < lm[mt.FOREHEAD, 1]  # hair above the forehead
    assert hy.max() < lm[mt.CHIN, 1]  # ... and none at shoulder height
    assert (labels[200:, :] != Label.HAIR).all()


def test_skin_beside_the_oval_is_face_but_skin_coloured_hair_above_the_brows_stays_hair():
    lm, img, person, _, _ = synthetic_face()
    img = img.copy()
    ear = np.zeros((S, S), bool)
    ear[88:112, 72:86] = True  # beside the oval at eye level, touching it
    img[ear] = SKIN
    tuft = np.zeros((S, S), bool)
    tuft[22:34, 118:138] = True  # above the forehead: light hair of skin's hue
    img[tuft] = SKIN
    labels = label_frame(img, person, lm)
    outside = ~_inside(lm, mt.FACE_OVAL_LOOP)
    assert (labels[ear & outside] == Label.FACE).mean() > 0.8
    assert (labels[tuft & outside] == Label.HAIR).mean() > 0.95


def test_tilted_head_tilts_the_neck():
    lm, img, person, _, _ = synthetic_face()
    rot = cv2.getRotationMatrix2D((128, 100), 20, 1.0)
    lm_r = lm @ rot[:, :2].T + rot[:, 2]
    labels = label_frame(img, person, lm_r)
    ys, xs = np.nonzero(labels == Label.NECK)
    chin = lm_r[mt.CHIN]
    # Rotated by +20 degrees (counter-clockwise on screen) the chin moves right and the neck follows it downwards.
    assert len(ys) and np.median(ys) > chin[1] - 5


def test_colour_views_use_the_palette():
    labels = np.arange(len(PALETTE), dtype=np.uint8)[None]
    col = colorize(labels)
    assert col.shape == (1, len(PALETTE), 3) and (col[0] == np.array(PALETTE)).all()
    img = np.full((1, len(PALETTE), 3), 100, np.uint8)
    over = overlay_labels(img, labels, alpha=0.5)
    assert (over[0, 0] == 100).all()  # background untouched
    assert np.allclose(over[0, 2], (np.array(PALETTE[2]) + 100) / 2, atol=1)


def _synthetic_dataset(root, frames, lm) -> Dataset:
    ds = Dataset(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "frames").mkdir()
    n = len(frames)
    ds.save_manifest({"kind": KIND, "format_version": FORMAT_VERSION, "fps": 25.0, "size": frames[0].shape[0],
                      "source": {"path": "synthetic", "fingerprint": "0"},
                      "steps": {"ingest": {"version": 1, "settings": {}, "seconds": 0, "result": {"n_frames": n}}}})
    for i, f in enumerate(frames):
        ds.write_image(f"frames/{frame_name(i, 'jpg')}", f)
    ds.save_array("landmarks_2d", np.repeat(lm[None].astype(np.float32), n, 0))
    return ds


def test_a_clip_without_a_segmentable_person_is_refused(tmp_path):
    from preprocess import parsing
    from preprocess.config import PreprocessConfig

    lm, _, _, _, _ = synthetic_face()
    frames = [np.full((S, S, 3), 128, np.uint8) for _ in range(6)]  # flat grey: nobody there
    ds = _synthetic_dataset(tmp_path / "ds", frames, lm)
    with pytest.raises(UserError, match="not segmented"):
        parsing.run(ds, PreprocessConfig())


@pytest.mark.parametrize("name", ["obama", "lieu", "reagan"])
def test_real_clip_parsing_figures(preprocessed, name):
    ds = preprocessed(name)
    res = ds.step_result("parsing")
    assert res["empty_person_fraction"] == 0.0, res
    assert res["face_coverage"] > 0.99 and res["segmentation_face_agreement"] > 0.9, res
    assert res["flicker"] < 0.03, res  # mostly the real motion of the mouth and head edges
    lm = ds.load_array("landmarks_2d")
    for i in np.linspace(0, ds.n_frames - 1, 5).astype(int):
        labels = ds.read_parsing(i)
        assert labels.shape == (ds.size, ds.size) and labels.max() <= max(Label)
        hair = np.nonzero(labels == Label.HAIR)[0]
        assert len(hair) and np.percentile(hair, 10) < lm[i, mt.FOREHEAD, 1], i  # hair over the forehead
        neck = np.nonzero(labels == Label.NECK)[0]
        assert len(neck) and np.median(neck) > lm[i, mt.CHIN, 1] - 2, i
    json.dumps(res)  # the figures are JSON-able as the manifest needs

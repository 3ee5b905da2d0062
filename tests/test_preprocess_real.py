"""The shared real clips preprocess to completion, and their outputs are checked (the issue's acceptance)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from preprocess.labels import HEAD_LABELS, Label
from preprocess.mesh_topology import FACE_OVAL_LOOP, LIPS_OUTER_LOOP, polygon

CLIP_NAMES = ["obama", "lieu", "reagan"]


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_labels_cover_the_face_where_the_landmarks_are(preprocessed, name):
    ds = preprocessed(name)
    lm = ds.load_array("landmarks_2d")
    for i in np.linspace(0, ds.n_frames - 1, 8).astype(int):
        labels = ds.read_parsing(i)
        oval = np.zeros_like(labels)
        cv2.fillPoly(oval, [polygon(lm[i], FACE_OVAL_LOOP).round().astype(np.int32)], 1)
        inside = labels[oval.astype(bool)]
        assert np.isin(inside, [int(x) for x in HEAD_LABELS]).mean() > 0.95, i
        lips = np.zeros_like(labels)
        cv2.fillPoly(lips, [polygon(lm[i], LIPS_OUTER_LOOP).round().astype(np.int32)], 1)
        assert np.isin(labels[lips.astype(bool)], [Label.LIPS, Label.MOUTH, Label.TEETH]).mean() > 0.8, i
        # The torso lies below the face (a low head can have its shoulders beside the chin, so: below the nose).
        ys = np.nonzero(labels == Label.TORSO)[0]
        if len(ys):
            assert np.median(ys) > lm[i, 1, 1] and ys.max() > lm[i, 152, 1]


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_pose_reprojection_error_is_small(preprocessed, name):
    ds = preprocessed(name)
    res = ds.step_result("pose")
    # Stated figure: under 1% of the image side on average (5.1 px at 512).
    assert res["reprojection_error_px"] < 0.01 * ds.size, res
    poses = ds.load_array("poses")
    assert poses.shape == (ds.n_frames, 4, 4) and np.isfinite(poses).all()
    assert np.allclose(poses[:, 3], [0, 0, 0, 1])
    intr = res["intrinsics"]
    assert intr["width"] == intr["height"] == ds.size and intr["fx"] > 0


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_audio_features_match_the_frames(preprocessed, name):
    ds = preprocessed(name)
    for feat in ("audio_ppg", "audio_mel", "audio_pitch", "audio_energy"):
        arr = ds.load_array(feat)  # checks one row per frame
        assert np.isfinite(arr).all(), feat
    import wave

    with wave.open(str(ds.path("audio.wav"))) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert abs(w.getnframes() / 16000 - ds.n_frames / ds.fps) < 1 / ds.fps


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_split_holds_out_the_last_eleventh(preprocessed, name):
    ds = preprocessed(name)
    split = json.loads(ds.path("split.json").read_text())
    n = ds.n_frames
    assert split["train"] == list(range(n - len(split["val"])))
    assert split["val"] == list(range(n - len(split["val"]), n))
    assert abs(len(split["val"]) - n / 11) <= 1


def test_report_is_written(preprocessed):
    ds = preprocessed("obama")
    html = ds.path("report/index.html").read_text()
    for img in ("landmarks.jpg", "parsing.jpg", "torso.jpg", "curves.png", "background.jpg"):
        assert img in html and ds.path(f"report/{img}").stat().st_size > 1000


def test_rerun_is_cached_and_force_redoes_a_step_and_its_dependents(preprocessed, caplog):
    import logging

    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    ds = preprocessed("obama")
    video = ds.manifest["source"]["path"]
    before = {k: v["seconds"] for k, v in ds.manifest["steps"].items()}
    with caplog.at_level(logging.INFO, logger="nerf_talk.preprocess"):
        pipeline.run(video, ds.root, PreprocessConfig())
    assert all("cached" in r.message for r in caplog.records if r.message.startswith("[")), caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nerf_talk.preprocess"):
        pipeline.run(video, ds.root, PreprocessConfig(force=["split"]))
    redone = {r.message.split("]")[0][1:] for r in caplog.records if "done in" in r.message}
    assert redone == {"split", "report"}
    after = ds.manifest["steps"]
    assert after["pose"]["seconds"] == before["pose"]

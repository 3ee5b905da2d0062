"""The background plate and the torso targets: a synthetic clip with a known answer (a coloured disk moving over a
known static scene), and checks on real clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocess import background, torso
from preprocess.config import PreprocessConfig
from preprocess.dataset import FORMAT_VERSION, KIND, Dataset, frame_name
from preprocess.labels import Label
from preprocess.mesh_topology import CHIN

S, N = 128, 40


def _scene() -> np.ndarray:
    """A smooth static background (JPEG keeps it nearly exact), RGB uint8 [S, S, 3]."""
    yy, xx = np.mgrid[:S, :S]
    return np.stack([40 + xx, 60 + yy, 200 - (xx + yy) // 2], -1).astype(np.uint8)


def _disk_clip(tmp_path):
    """A dataset whose frames show a red disk (label TORSO) moving left to right over the scene; a square near the
    middle is covered in every frame (never seen)."""
    scene = _scene()
    yy, xx = np.mgrid[:S, :S]
    never = (abs(xx - 64) < 6) & (abs(yy - 64) < 6)
    ds = Dataset(tmp_path / "ds")
    ds.root.mkdir(parents=True)
    (ds.root / "frames").mkdir()
    (ds.root / "parsing").mkdir()
    ds.save_manifest({"kind": KIND, "format_version": FORMAT_VERSION, "fps": 25.0, "size": S,
                      "source": {"path": "synthetic", "fingerprint": "0"},
                      "steps": {"ingest": {"version": 1, "settings": {}, "seconds": 0, "result": {"n_frames": N}}}})
    disks = []
    for i in range(N):
        cx = 20 + (S - 40) * i / (N - 1)
        disk = ((xx - cx) ** 2 + (yy - 64) ** 2 < 18**2) | never
        frame = scene.copy()
        frame[disk] = (220, 30, 30)
        labels = np.where(disk, Label.TORSO, Label.BACKGROUND).astype(np.uint8)
        ds.write_image(f"frames/{frame_name(i, 'jpg')}", frame)
        ds.write_image(f"parsing/{frame_name(i, 'png')}", labels)
        disks.append(disk)
    return ds, scene, never, np.stack(disks)


def test_plate_recovers_the_seen_background_and_has_no_holes(tmp_path):
    ds, scene, never, disks = _disk_clip(tmp_path)
    res = background.run(ds, PreprocessConfig())
    plate = ds.read_image("background.png")
    assert plate.shape == (S, S, 3) and plate.dtype == np.uint8
    err = np.abs(plate.astype(int) - scene).max(-1)
    # Where the scene was seen, far from the disk's path margins, the plate is the scene (up to JPEG error).
    seen_far = ~disks.any(0)
    assert np.median(err[seen_far]) <= 3 and np.percentile(err[seen_far], 99) <= 10
    # Seen only some of the time (the disk's track, not the never-covered square): still the scene, not the disk.
    track = disks.any(0) & ~disks.all(0) & ~never
    assert np.median(err[track]) <= 6
    # The never-seen square is filled plausibly from around it: close to the smooth scene, nothing like the red disk.
    assert np.abs(plate[never].astype(int) - scene[never]).mean() < 25
    assert (plate[never, 0].astype(int) - plate[never, 1] < 100).all()
    # The figure: the never-seen square (plus the erosion margin around it) over the image.
    assert never.mean() <= res["unseen_fraction"] < 4 * never.mean(), res


def test_torso_targets_are_the_torso_pixels_with_alpha(tmp_path):
    ds, scene, never, disks = _disk_clip(tmp_path)
    torso.run(ds, PreprocessConfig())
    for i in (0, N // 2, N - 1):
        rgba = ds.read_image(f"torso/{frame_name(i, 'png')}")
        assert rgba.shape == (S, S, 4)
        frame = ds.read_frame(i)
        labels = ds.read_parsing(i)
        inside = labels == Label.TORSO
        a = rgba[..., 3]
        assert (a[~inside] == 0).all()  # nothing outside the torso
        core = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (a[core] == 255).all() and (a[inside] > 0).all()  # opaque inside but for a feathered rim
        assert (rgba[..., :3][inside & (a == 255)] == frame[inside & (a == 255)]).all()


@pytest.mark.parametrize("name", ["obama", "lieu", "reagan"])
def test_real_plate_differs_from_frames_mainly_where_the_person_is(preprocessed, name):
    ds = preprocessed(name)
    plate = ds.read_image("background.png").astype(np.int16)
    res = ds.step_result("background")
    assert 0.0 <= res["unseen_fraction"] < 0.9, res
    for i in np.linspace(0, ds.n_frames - 1, 4).astype(int):
        diff = np.abs(ds.read_frame(i).astype(np.int16) - plate).mean(-1)
        labels = ds.read_parsing(i)
        bg = labels == Label.BACKGROUND
        person = ~bg
        # Background pixels match the plate (compression, noise, the person's soft edge), the person does not.
        assert np.median(diff[bg]) < 8, (i, np.median(diff[bg]))
        assert np.mean(diff[person]) > 2 * np.mean(diff[bg]), i


@pytest.mark.parametrize("name", ["obama", "lieu", "reagan"])
def test_real_torso_alpha_sits_below_the_chin(preprocessed, name):
    ds = preprocessed(name)
    lm = ds.load_array("landmarks_2d")
    for i in np.linspace(0, ds.n_frames - 1, 4).astype(int):
        rgba = ds.read_image(f"torso/{frame_name(i, 'png')}")
        ys = np.nonzero(rgba[..., 3] > 0)[0]
        assert len(ys) > 0.02 * ds.size**2, i
        assert np.median(ys) > lm[i, CHIN, 1], i
        labels = ds.read_parsing(i)
        assert (rgba[..., 3][np.isin(labels, [Label.NECK, Label.TORSO], invert=True)] == 0).all()


def test_the_torso_layer_is_taught_to_run_on_under_the_jaw():
    """The torso stage's alpha target: opaque on the neck and torso and a few pixels up into the head above them (so no
    background shows through where the head's lower edge is part transparent), not beside the head or higher up."""
    import torch

    from nerf_talk.train.data import under_jaw_pixels

    labels = np.zeros((40, 40), np.uint8)
    labels[5:20, 10:30] = Label.FACE  # head
    labels[5:20, 8:10] = Label.HAIR
    labels[20:40, 14:26] = Label.NECK  # neck below the jaw, narrower than the head
    labels[30:40, 0:14] = Label.TORSO  # a shoulder, lower down
    band = under_jaw_pixels(torch.from_numpy(labels), 3).numpy()
    assert band[17:20, 14:26].all()  # the 3 rows of face above the neck
    assert not band[:17].any()  # nothing higher up
    assert not band[20:].any()  # nothing on the neck or torso themselves or beside them (background)
    assert band[17:20, 11:14].all() and not band[:, :11].any()  # up to 3 px sideways, then nothing (hair at 8-9)

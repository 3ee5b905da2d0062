"""A synthetic talking "head" written as a complete dataset, so training can be tested and demonstrated without a
real clip: a textured sphere (the head) whose mouth patch opens with a motion coefficient and whose eye patches close
on blinks, seen by a camera that swings left and right, over a neck and a torso that follow the head in the image,
over a gradient background plate. Every file training reads is written, with the dataset module's atomic writers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from preprocess.dataset import FORMAT_VERSION, KIND, Dataset, frame_name
from preprocess.labels import Label
from preprocess.mesh_topology import LOWER_FACE

RADIUS = 0.1  # metres: the head sphere
DISTANCE = 0.6  # metres from the camera to the head's centre
FACE_SIZE = RADIUS  # metres: the synthetic face's size (the unit of its lower-face motion)


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def frame_params(n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw degrees [N], mouth opening [N] in [0, 1], eye openness [N] in [0, 1]) of each frame."""
    i = np.arange(n_frames)
    yaw = 10.0 * np.sin(2 * np.pi * i / 17.0)
    mouth = 0.5 + 0.5 * np.sin(2 * np.pi * i / 7.3)
    eyes = np.where(i % 11 == 5, 0.1, 1.0)
    return yaw, mouth, eyes


def render_frame(size: int, focal: float, c2h: np.ndarray, mouth: float, eye: float):
    """(rgb [S, S, 3] float, labels [S, S] uint8, torso RGBA [S, S, 4] float) of one frame."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    d = np.stack([(xs - size / 2) / focal, (ys - size / 2) / focal, np.ones_like(xs)], -1)
    d = d @ c2h[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2h[:3, 3]
    b = d @ o
    disc = b**2 - (o @ o - RADIUS**2)
    hit = disc > 0
    t = -b - np.sqrt(np.maximum(disc, 0))
    n = (o + t[..., None] * d) / RADIUS  # unit normal on the sphere (head frame)
    rgb = background_plate(size)
    labels = np.zeros((size, size), np.uint8)
    torso = np.zeros((size, size, 4))
    # Neck and torso follow the head's projected centre (x) in the image.
    h2c = np.linalg.inv(c2h)
    centre = h2c[:3, 3]
    cx = focal * centre[0] / centre[2] + size / 2
    neck = (np.abs(xs - cx) < 0.12 * size) & (ys > size / 2)
    body = ys > 0.8 * size + 0.1 * np.abs(xs - cx)
    stripes = (np.sin(xs / 3.0) > 0).astype(float)
    neck_c = np.broadcast_to(np.array([0.75, 0.55, 0.45]), (size, size, 3))
    body_c = np.stack([np.full_like(xs, 0.2), 0.3 + 0.2 * stripes, np.full_like(xs, 0.6)], -1)
    for mask, c, lab in ((neck, neck_c, Label.NECK), (body, body_c, Label.TORSO)):
        rgb[mask] = c[mask]
        torso[mask, :3] = c[mask]
        torso[mask, 3] = 1.0
        labels[mask] = lab
    # The head: skin with a smooth texture, a mouth patch that opens, two eye patches that close.
    skin = np.stack([0.8 + 0.15 * n[..., 0], 0.6 + 0.1 * n[..., 1], 0.5 - 0.1 * n[..., 2]], -1)
    front = n[..., 2] < 0
    mouth_m = hit & front & (np.abs(n[..., 0]) < 0.3) & (n[..., 1] > 0.3) & (n[..., 1] < 0.33 + 0.25 * mouth)
    eye_m = hit & front & (np.abs(np.abs(n[..., 0]) - 0.35) < 0.12) & (n[..., 1] > -0.35) & (n[..., 1] < -0.35 + 0.15 * eye)
    rgb[hit] = skin[hit]
    labels[hit] = Label.FACE
    torso[hit] = 0.0
    rgb[mouth_m] = (0.35, 0.05, 0.08)
    labels[mouth_m] = Label.MOUTH
    rgb[eye_m] = (0.1, 0.1, 0.25)
    labels[eye_m] = Label.EYES
    return rgb, labels, torso


def make_synthetic_dataset(root: str | Path, n_frames: int = 40, size: int = 48, val_every: int = 8) -> Dataset:
    """Writes the synthetic dataset at `root`; validation frames are every `val_every`-th (interleaved, so they
    show motion within the training range)."""
    ds = Dataset(root)
    ds.root.mkdir(parents=True, exist_ok=True)
    focal = 1.5 * size
    yaw, mouth, eyes = frame_params(n_frames)
    poses = np.zeros((n_frames, 4, 4), np.float32)
    rng = np.random.default_rng(0)
    for name in ("frames", "parsing", "torso"):
        (ds.root / name).mkdir(exist_ok=True)
    for i in range(n_frames):
        r = _rot_y(yaw[i])
        c2h = np.eye(4)
        c2h[:3, :3] = r
        c2h[:3, 3] = r @ np.array([0.0, 0.0, -DISTANCE])
        poses[i] = c2h
        rgb, labels, torso = render_frame(size, focal, c2h, mouth[i], eyes[i])
        ds.write_image(f"frames/{frame_name(i, 'jpg')}", (rgb * 255).round().astype(np.uint8))
        ds.write_image(f"parsing/{frame_name(i, 'png')}", labels)
        ds.write_image(f"torso/{frame_name(i, 'png')}", (torso * 255).round().astype(np.uint8))
    ds.write_image("background.png", (background_plate(size) * 255).round().astype(np.uint8))
    ds.save_array("poses", poses)
    sphere = rng.normal(size=(478, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    sphere[:, 2] = -np.abs(sphere[:, 2])  # landmarks cover the front of the head only
    # The lip and jaw landmarks lie around the mouth patch, as mediapipe's do on a face.
    lower = list(LOWER_FACE)
    nx = rng.uniform(-0.3, 0.3, len(lower))
    ny = rng.uniform(0.3, 0.6, len(lower))
    sphere[lower] = np.stack([nx, ny, -np.sqrt(1 - nx**2 - ny**2)], 1)
    ds.save_array("head_template", (sphere * RADIUS).astype(np.float32))
    # The "lower lip" points (just below the mouth's top edge) move down as the mouth patch's lower edge does (0.25
    # radius when fully open); the "jaw" points further down stay, as the sphere's silhouette does in the images.
    # The tracking is these landmarks, with a little noise.
    directions = np.zeros((len(lower), 3))
    directions[(ny > 0.33) & (ny < 0.45), 1] = 0.25 * RADIUS / FACE_SIZE
    motion = mouth[:, None, None] * directions[None] + rng.normal(size=(n_frames, len(lower), 3)) * 1e-4
    ds.save_array("lower_face_motion", motion.astype(np.float32))
    template = (sphere * RADIUS).astype(np.float32)
    landmarks = np.repeat(template[None], n_frames, 0)
    landmarks[:, lower] += motion * FACE_SIZE
    ds.save_array("landmarks_3d", landmarks.astype(np.float32))  # already in the head frame (similarity = identity)
    ds.save_array("neutral_face", template)
    ds.save_array("eye_openness", np.stack([eyes, eyes], 1).astype(np.float32))
    ds.save_array("blink", (1.0 - eyes).astype(np.float32))
    ds.save_array("mouth_opening", mouth.astype(np.float32))
    val = [i for i in range(n_frames) if i % val_every == val_every // 2]
    ds.write_json("split.json", {"train": [i for i in range(n_frames) if i not in val], "val": val})
    intr = {"fx": focal, "fy": focal, "cx": size / 2, "cy": size / 2, "width": size, "height": size}
    ds.save_manifest({
        "kind": KIND, "format_version": FORMAT_VERSION, "fps": 25.0, "size": size,
        "source": {"path": "synthetic", "fingerprint": "synthetic"},
        "steps": {"ingest": {"result": {"n_frames": n_frames}}, "pose": {"result": {"intrinsics": intr}},
                  "face_motion": {"result": {"face_size_m": FACE_SIZE}}},
    })
    return ds


def background_plate(size: int) -> np.ndarray:  # [S, S, 3] float
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = xs / size, ys / size
    return np.stack([0.85 - 0.3 * v, 0.85 - 0.1 * u, 0.65 + 0.3 * u], -1)

"""The dataset directory that preprocessing writes and training reads.

Layout (FORMAT_VERSION 1), all per-frame arrays at manifest["fps"] with `Dataset.n_frames` rows:
  manifest.json            format version, source, fps, size, intrinsics, per-step versions/timings/figures
  frames/NNNNNN.jpg        the square crop, RGB
  audio_source.wav         16 kHz mono as extracted (from the video or --audio)
  audio.wav                16 kHz mono, offset-corrected so that sample 0 is frame 0, n_frames / fps long
  landmarks_2d.npy         [N, 478, 2] float32, pixels of the crop
  landmarks_3d.npy         [N, 478, 3] float32, mediapipe's 3D landmarks in crop pixels (z scaled like x)
  landmark_flags.npy       [N] uint8, see LandmarkFlag
  poses.npy                [N, 4, 4] float32 camera-to-head (OpenCV axes), head at the origin of its frame
  head_template.npy        [478, 3] float32 the person's rigid landmark template in the head frame
  parsing/NNNNNN.png       uint8 label map (preprocess.labels.Label)
  background.png           RGB plate of the scene without the person
  torso/NNNNNN.png         RGBA: neck + torso pixels, alpha 0 elsewhere
  eye_openness.npy         [N, 2] float32 (left, right), 1 = the person's typical open eye, 0 = closed
  blink.npy                [N] float32 in [0, 1], 1 = closed
  mouth_opening.npy        [N] float32, inner-lip gap over face size
  lower_face_motion.npy    [N, K, 3] float32 lip/jaw landmarks in the head frame minus neutral, over face size
  neutral_face.npy         [478, 3] float32 the person's neutral face in the head frame
  audio_*.npy              [N, ...] per-frame audio features (see the audio_features step)
  split.json               {"train": [...], "val": [...]} frame indices
  report/                  index.html and PNGs for a person to look at
Every file is written atomically (temp file + rename); directories of per-frame files are staged and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from enum import IntEnum
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from nerf_talk.errors import UserError
from nerf_talk.media import atomic_output

FORMAT_VERSION = 1
KIND = "nerf_talk.dataset"


class LandmarkFlag(IntEnum):
    TRACKED = 0  # detected in this frame
    INTERPOLATED = 1  # missing, filled by interpolating the nearest tracked frames on both sides
    HELD = 2  # missing at the start or end of the clip, filled with the nearest tracked frame


def frame_name(i: int, ext: str) -> str:
    return f"{i:06d}.{ext}"


class Dataset:
    """A dataset directory: atomic writes, the manifest, and typed access to what the steps wrote."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- manifest -------------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def load_manifest(self) -> dict:
        try:
            m = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"{self.root} is not a nerf_talk dataset (no manifest.json)",
                "run `nerf-talk preprocess VIDEO -o DIR` first.",
            ) from None
        except json.JSONDecodeError as e:
            raise UserError(f"{self.manifest_path} is damaged: {e}", "preprocess the video again.") from e
        if m.get("kind") != KIND:
            raise UserError(f"{self.root} holds something else ({m.get('kind')!r}), not a nerf_talk dataset")
        if m.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{self.root} has dataset format {m.get('format_version')}, this nerf_talk reads {FORMAT_VERSION}",
                "preprocess the video again with this version.",
            )
        return m

    def save_manifest(self, m: dict) -> None:
        self.write_text("manifest.json", json.dumps(m, indent=2, sort_keys=True, default=_json_default))

    @property
    def manifest(self) -> dict:
        return self.load_manifest()

    @property
    def n_frames(self) -> int:
        return int(self.step_result("ingest")["n_frames"])

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def step_result(self, step: str) -> dict:
        """What step `step` recorded in the manifest (its figures and settings)."""
        steps = self.manifest.get("steps", {})
        if step not in steps:
            raise UserError(f"{self.root}: step '{step}' has not run", f"run `nerf-talk preprocess` on it again.")
        return steps[step]["result"]

    # -- files ----------------------------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_text(self, rel: str, text: str) -> None:
        with atomic_output(self.path(rel)) as tmp:
            tmp.write_text(text)

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, default=_json_default))

    def read_json(self, rel: str):
        return json.loads(self.path(rel).read_text())

    def save_array(self, name: str, arr: np.ndarray) -> None:
        """Save `name`.npy atomically."""
        with atomic_output(self.path(f"{name}.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(arr))

    def load_array(self, name: str, expect_rows: bool = True) -> np.ndarray:
        """Load `name`.npy; with `expect_rows`, check it has one row per frame."""
        p = self.path(f"{name}.npy")
        if not p.exists():
            raise UserError(f"{p} is missing", "the step that writes it did not finish: run preprocess again.")
        arr = np.load(p, allow_pickle=False)
        if expect_rows and arr.shape[0] != self.n_frames:
            raise UserError(
                f"{p} has {arr.shape[0]} rows, the dataset has {self.n_frames} frames",
                f"redo the step that wrote it with `--force`.",
            )
        return arr

    def write_image(self, rel: str, img: np.ndarray, jpeg_quality: int = 95) -> None:
        """Write an RGB/RGBA/gray uint8 image atomically; the format follows the extension."""
        with atomic_output(self.path(rel)) as tmp:
            write_image_file(tmp, img, jpeg_quality)

    def read_image(self, rel: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
        return read_image_file(self.path(rel), flags)

    # -- per-frame image directories -------------------------------------------------------------------------------
    def frame_path(self, i: int) -> Path:
        return self.path(f"frames/{frame_name(i, 'jpg')}")

    def read_frame(self, i: int) -> np.ndarray:
        """Frame `i` as RGB uint8 [size, size, 3]."""
        return read_image_file(self.frame_path(i), cv2.IMREAD_COLOR)

    def read_parsing(self, i: int) -> np.ndarray:
        return read_image_file(self.path(f"parsing/{frame_name(i, 'png')}"), cv2.IMREAD_GRAYSCALE)

    @contextlib.contextmanager
    def staged_dir(self, rel: str) -> Iterator[Path]:
        """A directory for many files that appears at `rel` only once all are written.

        A failed or interrupted run removes the staging directory (a killed one leaves it, and the next run starts
        it afresh).
        """
        final = self.path(rel)
        stage = self.path(f".{rel}.partial")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        old = self.path(f".{rel}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)


def write_image_file(path: Path, img: np.ndarray, jpeg_quality: int = 95) -> None:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"images are written as uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ext = path.suffix.lower()
    # PNG at compression 1: label maps and RGBA targets are written per frame, and level 1 is several times faster
    # than the default for files only ~15% larger.
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def read_image_file(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image as RGB/RGBA (or gray) uint8; a missing or unreadable file is a UserError."""
    img = cv2.imread(str(path), flags)
    if img is None:
        raise UserError(f"cannot read image {path}", "the dataset is incomplete or damaged: run preprocess again.")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")

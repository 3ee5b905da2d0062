"""Step: the torso-only target per frame: neck and torso pixels with an alpha channel, the head removed.

The torso field learns these (rendered under the head and over the background plate), so the neck stays attached
when the head turns instead of being pasted from a training frame.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm.auto import tqdm

from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, frame_name, write_image_file
from preprocess.labels import Label
from preprocess.step import Step


def torso_rgba(img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGBA uint8: the frame where the label is neck or torso, alpha 255 there with a one-pixel feathered edge."""
    mask = ((labels == Label.NECK) | (labels == Label.TORSO)).astype(np.uint8) * 255
    out = np.zeros((*labels.shape, 4), np.uint8)
    out[..., :3] = img & mask[..., None]
    out[..., 3] = cv2.GaussianBlur(mask, (3, 3), 0) & mask  # feather inwards only: no background colour leaks in
    return out


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    def one(i: int, d) -> float:
        rgba = torso_rgba(ds.read_frame(i), ds.read_parsing(i))
        write_image_file(d / frame_name(i, "png"), rgba)
        return float((rgba[..., 3] > 0).mean())

    # Decoding and PNG encoding release the GIL: threads use every core.
    with ds.staged_dir("torso") as d, ThreadPoolExecutor(os.cpu_count()) as pool:
        cover = list(tqdm(pool.map(lambda i: one(i, d), range(ds.n_frames)), total=ds.n_frames, desc="torso"))
    return {"mean_torso_fraction": float(np.mean(cover))}


STEP = Step(
    name="torso",
    version=1,
    requires=("parsing", "background"),
    outputs=("torso/",),
    run=run,
    describe="torso-only targets (neck + torso, RGBA)",
)

"""Step: one background plate for the clip: the median of what was seen behind the person, the rest filled."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from tqdm.auto import tqdm

from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset
from preprocess.labels import Label
from preprocess.step import Step

MAX_SAMPLES = 48  # frames the median is taken over


def plate_from(frames: np.ndarray, background: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(plate RGB uint8 [H, W, 3], seen [H, W] bool) from frames [S, H, W, 3] and their background masks [S, H, W].

    The masks are eroded by `margin` pixels first: the person's soft edge (hair, motion blur) must not leak in.
    Pixels never seen are filled by inpainting from their surroundings.
    """
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    masks = np.stack([cv2.erode(m.astype(np.uint8), kernel) for m in background]).astype(bool)
    # A pixel seen behind the person in only a frame or two is mostly the segmentation's lag at the person's edge.
    seen = masks.sum(0) >= max(2, int(0.05 * len(masks)))
    plate = np.zeros(frames.shape[1:], np.float32)
    for r in range(0, plate.shape[0], 64):  # in bands, to bound memory on long clips
        band = np.where(masks[:, r : r + 64, :, None], frames[:, r : r + 64].astype(np.float32), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: pixels never seen, filled below
            med = np.nanmedian(band, axis=0)
        plate[r : r + 64] = np.nan_to_num(med)
    plate = plate.clip(0, 255).astype(np.uint8)
    if not seen.all():
        plate = fill_holes(plate, ~seen)
    return plate, seen


def fill_holes(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Inpaint `hole` [H, W] bool in `img`, at quarter size: person-sized holes take seconds at full size."""
    h, w = hole.shape
    size = (w // 4, h // 4)
    valid = (~hole).astype(np.float32)
    # Mask-aware downscaling: unseen pixels (black) must not darken the border the inpainting grows from.
    cover = cv2.resize(valid, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(img.astype(np.float32) * valid[..., None], size, interpolation=cv2.INTER_AREA)
    small = (small / np.maximum(cover, 1e-6)[..., None]).clip(0, 255).astype(np.uint8)
    small = cv2.inpaint(small, (cover < 0.5).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    # Blend the fill in over a few pixels so no seam shows where the seen background ends.
    weight = cv2.GaussianBlur(hole.astype(np.float32), (0, 0), 2.0)
    weight = np.maximum(weight, hole)[..., None]
    return (weight * coarse + (1 - weight) * img).round().astype(np.uint8)


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    n = ds.n_frames
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_SAMPLES)).round().astype(int))
    frames = np.stack([ds.read_frame(i) for i in tqdm(picks, desc="background")])
    background = np.stack([ds.read_parsing(i) == Label.BACKGROUND for i in picks])
    plate, seen = plate_from(frames, background, margin=max(2, ds.size // 64))
    ds.write_image("background.png", plate)
    return {"unseen_fraction": float(1.0 - seen.mean()), "frames_used": len(picks)}


STEP = Step(
    name="background",
    version=1,
    requires=("parsing",),
    outputs=("background.png",),
    run=run,
    describe="background plate",
)

"""Step: one background plate for the clip: the median of what was seen behind the person, the rest filled."""

from __future__ import annotations

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
    plate = np.zeros(frames.shape[1:], np.uint8)
    for r in range(0, plate.shape[0], 64):  # in bands, to bound memory on long clips
        plate[r : r + 64] = masked_median(frames[:, r : r + 64], masks[:, r : r + 64])
    if not seen.all():
        plate = fill_holes(plate, ~seen)
    return plate, seen


def masked_median(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 [..., 3]: per pixel and channel, the median of frames [S, ..., 3] uint8 over the samples where masks
    [S, ...] is set (the mean of the two middle values when their count is even, truncated to an integer); 0 where
    none is set.

    The same numbers as np.nanmedian over the masked values, which this replaced: it ran through numpy's masked
    arrays and took most of the step's time. Here the unseen samples become 256, above every pixel value, so one
    integer sort along the samples puts the seen ones first, in order, and the median is read at the count's middle.
    """
    vals = np.where(masks[..., None], frames, np.uint16(256)).astype(np.uint16)
    vals = np.sort(np.moveaxis(vals, 0, -1), axis=-1)  # [..., 3, S]
    k = masks.sum(0)[..., None, None]  # [..., 1, 1] seen samples per pixel
    lo = np.take_along_axis(vals, np.maximum(k - 1, 0) // 2, -1)[..., 0].astype(np.float32)
    hi = np.take_along_axis(vals, np.minimum(k // 2, vals.shape[-1] - 1), -1)[..., 0].astype(np.float32)
    med = (lo + hi) / 2
    return np.where(k[..., 0] > 0, med, 0).astype(np.uint8)


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
    version=1,  # masked_median gives np.nanmedian's numbers: the plate is unchanged
    requires=("parsing",),
    outputs=("background.png",),
    run=run,
    describe="background plate",
)

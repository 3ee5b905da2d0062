"""Step: the torso-only target per frame: neck and torso pixels with an alpha channel, the head removed.

The torso field learns these (rendered under the head and over the background plate), so the neck stays attached
when the head turns instead of being pasted from a training frame.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from nerf_talk.errors import UserError
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, frame_name
from preprocess.labels import Label
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")


# Neck and torso -> 255, every other label -> 0: one table lookup instead of two comparisons per pixel.
_TORSO_LUT = np.zeros(256, np.uint8)
_TORSO_LUT[[int(Label.NECK), int(Label.TORSO)]] = 255
# PNG settings: the SUB filter with run-length coding is ~2.5x faster to encode than OpenCV's default (the zero
# alpha outside the torso is long runs) for files about 10% larger; the encoding was most of this step's time.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10 lets the filter be chosen
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def torso_rgba(img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGBA uint8 [H, W, 4]: the frame where the label is neck or torso, alpha 255 there with a one-pixel feathered
    edge; RGB and alpha are 0 elsewhere.

    img: [H, W, 3] RGB uint8; labels: [H, W] uint8 parsing labels.
    """
    if img.shape[:2] != labels.shape:
        raise ValueError(f"frame {img.shape[:2]} and label map {labels.shape} differ in size")
    mask = cv2.LUT(labels, _TORSO_LUT)
    # Feather inwards only: the alpha falls off inside the torso's edge, so no background colour leaks in.
    alpha = cv2.bitwise_and(cv2.GaussianBlur(mask, (3, 3), 0), mask)
    r, g, b = cv2.split(cv2.bitwise_and(img, img, mask=mask))
    return cv2.merge([r, g, b, alpha])


def write_rgba_png(path: Path, rgba: np.ndarray) -> None:
    write_bgra_png(path, cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def write_bgra_png(path: Path, bgra: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgra, _PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    def one(i: int, d: Path) -> float:
        # torso_rgba works channel by channel, so it gives the same pixels on OpenCV's BGR order: the frame is read
        # and the PNG written in that order, without the two colour-order conversions per frame.
        bgr = cv2.imread(str(ds.frame_path(i)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"cannot read image {ds.frame_path(i)}", "the dataset is incomplete: run preprocess again.")
        bgra = torso_rgba(bgr, ds.read_parsing(i))
        write_bgra_png(d / frame_name(i, "png"), bgra)
        return float(np.count_nonzero(bgra[..., 3]) / bgra[..., 3].size)

    # Decoding and PNG encoding release the GIL: threads use every core.
    with ds.staged_dir("torso") as d, ThreadPoolExecutor(os.cpu_count()) as pool:
        cover = list(tqdm(pool.map(lambda i: one(i, d), range(ds.n_frames)), total=ds.n_frames, desc="torso"))
    if cover and min(cover) == 0.0:
        log.warning("torso target empty in %d of %d frames", sum(c == 0.0 for c in cover), len(cover))
    return {"mean_torso_fraction": float(np.mean(cover)), "empty_frames": int(sum(c == 0.0 for c in cover))}


STEP = Step(
    name="torso",
    version=1,
    requires=("parsing", "background"),
    outputs=("torso/",),
    run=run,
    describe="torso-only targets (neck + torso, RGBA)",
)

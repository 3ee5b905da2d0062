"""Step 1: decode the video at a fixed frame rate, choose one square head-and-shoulders crop, extract the audio.

Writes frames/NNNNNN.jpg (cfg.size square) and audio_source.wav (16 kHz mono; sample 0 is frame 0).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from nerf_talk import media
from nerf_talk.errors import UserError
from preprocess import face_detect
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset, frame_name, write_image_file
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")

SCAN_FPS = 5.0  # frames per second examined to place the crop
SCAN_SIDE = 640  # longer side of the scanned frames


def choose_crop(boxes: np.ndarray, width: int, height: int, crop_scale: float) -> tuple[int, int, int]:
    """One square (x0, y0, side) in source pixels holding the head and shoulders in every scanned frame.

    The face sits in the upper middle; the square grows to cover the head's travel, and shrinks to fit the frame
    rather than padding with invented pixels.
    """
    ok = ~np.isnan(boxes[:, 0])
    b = boxes[ok]
    face = np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
    cx = np.median((b[:, 0] + b[:, 2]) / 2)
    cy = np.median((b[:, 1] + b[:, 3]) / 2)
    travel = max(np.ptp((b[:, 0] + b[:, 2]) / 2), np.ptp((b[:, 1] + b[:, 3]) / 2))
    side = max(crop_scale * face, travel + 1.6 * face)
    side = int(min(side, width, height))
    # The face centre at 40% of the crop's height leaves room below for neck and shoulders.
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - 0.4 * side))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return x0, y0, side


def check_source(video, cfg: PreprocessConfig) -> media.VideoInfo:
    """What can be refused from the file alone (unreadable, too short, too small, no sound): checked before the
    dataset folder is touched, so that a bad video leaves nothing behind."""
    info = media.probe_video(video)
    if info.duration and info.duration < cfg.min_duration:
        raise UserError(
            f"the clip is {info.duration:.1f} s long; at least {cfg.min_duration:.0f} s are needed",
            "use a longer video: 1-5 minutes of the person speaking gives the best avatar.",
        )
    if min(info.width, info.height) < 128:
        raise UserError(f"the video is only {info.width}x{info.height} pixels", "use a video of at least 256 px.")
    if not info.has_audio and cfg.audio is None:
        raise UserError(
            f"{video} has no audio track",
            "pass the speech recorded with it as a separate file: --audio FILE (wav/mp3/m4a/flac).",
        )
    return info


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    video = ds.manifest["source"]["path"]
    info = check_source(video, cfg)

    # Pass 1: find the face in a few frames per second.
    det = face_detect.detector()
    boxes, n_faces, second = [], [], []
    scale = 1.0
    n_scan = int(info.duration * SCAN_FPS) + 1 if info.duration else None
    for _, img in tqdm(media.iter_frames(video, SCAN_FPS, max_side=SCAN_SIDE), total=n_scan, desc="ingest: scan"):
        scale = max(info.width, info.height) / max(img.shape[:2])
        found = face_detect.detect(det, img)
        n_faces.append(len(found))
        boxes.append(found[0] if found else np.full(4, np.nan))
        a = [(f[2] - f[0]) * (f[3] - f[1]) for f in found]
        second.append(a[1] / a[0] if len(a) > 1 else 0.0)
    det.close()
    scan = face_detect.FaceScan(np.array(boxes).reshape(-1, 4), np.array(n_faces), np.array(second), scale)
    warning = face_detect.judge(scan, cfg.max_missing_face)
    x0, y0, side = choose_crop(scan.boxes * scale, info.width, info.height, cfg.crop_scale)

    # Pass 2: crop and resize every frame at the output rate.
    n_est = int(round(info.duration * cfg.fps)) if info.duration else None
    n = 0
    interp = cv2.INTER_AREA if side > cfg.size else cv2.INTER_CUBIC

    def crop_and_write(k: int, img: np.ndarray, d: Path) -> None:
        crop = cv2.resize(img[y0 : y0 + side, x0 : x0 + side], (cfg.size, cfg.size), interpolation=interp)
        write_image_file(d / frame_name(k, "jpg"), crop, cfg.jpeg_quality)

    # Resizing and JPEG encoding (OpenCV, which releases the GIL) run in a thread while the next frame is decoded;
    # a few frames in flight at most, so that a long 4K clip does not pile up in memory.
    with ds.staged_dir("frames") as d, ThreadPoolExecutor(1) as pool:
        pending: deque = deque()
        for k, img in tqdm(media.iter_frames(video, cfg.fps), total=n_est, desc="ingest: frames"):
            pending.append(pool.submit(crop_and_write, k, img, d))
            if len(pending) > 4:
                pending.popleft().result()
            n = k + 1
        for f in pending:
            f.result()
        if n / cfg.fps < cfg.min_duration:
            raise UserError(
                f"only {n / cfg.fps:.1f} s of video could be decoded; at least {cfg.min_duration:.0f} s are needed",
                "the file may be truncated; use a longer or re-exported video.",
            )

    audio_path = cfg.audio or video
    audio = media.read_audio(audio_path)
    audio_seconds = len(audio) / media.AUDIO_RATE
    if audio_seconds < 0.5 * n / cfg.fps:
        log.warning("the audio (%.1f s) is much shorter than the video (%.1f s)", audio_seconds, n / cfg.fps)
    media.write_wav(ds.path("audio_source.wav"), audio)
    return {
        "n_frames": n,
        "source": {
            "width": info.width,
            "height": info.height,
            "rotation": info.rotation,
            "codec": info.codec,
            "avg_fps": info.avg_fps,
            "duration": info.duration,
        },
        "crop": {"x0": x0, "y0": y0, "side": side},
        "audio": {"from": str(audio_path), "seconds": round(audio_seconds, 3)},
        "faces": {
            "missing_fraction": float(np.mean(scan.n_faces == 0)),
            "multi_face_fraction": float(np.mean(scan.n_faces >= 2)),
            "warning": warning,
        },
    }


STEP = Step(
    name="ingest",
    version=1,
    requires=(),
    outputs=("frames/", "audio_source.wav"),
    run=run,
    describe="decode at a fixed rate, crop head and shoulders, extract audio",
    uses=("min_duration", "max_missing_face", "crop_scale", "jpeg_quality", "audio"),
)

"""Seconds of preprocessing per second of video, per step (target: under 1.0 in total for a 512 px clip).

    .venv/bin/python bench/bench_preprocess.py [VIDEO ...] [--audio FILE] [--size 512]

Without VIDEO it uses the shared obama clip when present, else the embedded sample clip.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"


def bench(video: Path, audio: str | None, size: int) -> None:
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = pipeline.run(video, Path(tmp) / "ds", PreprocessConfig(size=size, audio=audio))
        total = time.perf_counter() - t0
        seconds = ds.n_frames / ds.fps
        src = ds.step_result("ingest")["source"]
        print(f"\n{video.name}: {src['width']}x{src['height']} {src['codec']}, {seconds:.1f} s of video -> {size} px, "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
        print(f"{'step':16s} {'seconds':>9s} {'s per s of video':>17s}")
        steps = ds.manifest["steps"]
        for name in pipeline.STEP_MODULES:
            rec = steps[name]
            print(f"{name:16s} {rec['seconds']:9.2f} {rec['seconds'] / seconds:17.3f}")
        print(f"{'total (wall)':16s} {total:9.2f} {total / seconds:17.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", type=Path)
    p.add_argument("--audio")
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    videos = args.videos
    if not videos:
        if (SHARED / "obama_450_20s.mp4").exists():
            videos = [SHARED / "obama_450_20s.mp4"]
        else:
            from nerf_talk.sample_clip import make_sample_clip

            videos = [make_sample_clip(Path(tempfile.mkdtemp()) / "sample").video]
    for v in videos:
        bench(v, args.audio, args.size)


if __name__ == "__main__":
    main()

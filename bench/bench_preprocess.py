"""Seconds of preprocessing per second of video, per step (target: under 1.0 in total for a 512 px clip).

    .venv/bin/python bench/bench_preprocess.py [VIDEO ...] [--audio FILE] [--size 512] [--repeat N]

Without VIDEO it uses the shared obama clip when present, else the embedded sample clip.
Per step it prints wall seconds and CPU seconds (this process and its worker processes, user + system), each also per
second of video, and the load average before and after the run: on a shared machine wall time depends on the other
jobs, CPU time much less, and a CPU figure above the wall figure shows the step ran on more than one core.
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


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench(video: Path, audio: str | None, size: int) -> None:
    from nerf_talk.api import preprocess
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    with tempfile.TemporaryDirectory() as tmp:
        load_before = load_average()
        t0, c0 = time.perf_counter(), pipeline.cpu_seconds()
        ds = preprocess(video, Path(tmp) / "ds", PreprocessConfig(size=size, audio=audio))
        total, total_cpu = time.perf_counter() - t0, pipeline.cpu_seconds() - c0
        load_after = load_average()
        seconds = ds.n_frames / ds.fps
        src = ds.step_result("ingest")["source"]
        print(f"\n{video.name}: {src['width']}x{src['height']} {src['codec']}, {seconds:.1f} s of video -> {size} px, "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
        print(f"load average (1, 5, 15 min) before: {load_before}   after: {load_after}")
        print(f"{'step':16s} {'wall s':>8s} {'cpu s':>8s} {'of it helper':>13s} {'wall per s':>11s} {'cpu per s':>10s}")
        steps = ds.manifest["steps"]
        for name in pipeline.STEP_MODULES:
            rec = steps[name]
            cpu = rec.get("cpu_seconds", float("nan"))
            helper = rec.get("helper_cpu_seconds", 0.0)
            print(f"{name:16s} {rec['seconds']:8.2f} {cpu:8.2f} {helper:13.2f} {rec['seconds'] / seconds:11.3f} "
                  f"{cpu / seconds:10.3f}")
        print(f"{'total':16s} {total:8.2f} {total_cpu:8.2f} {'':13s} {total / seconds:11.3f} {total_cpu / seconds:10.3f}")
        print("cpu s: this process and its helper process (user + system); 'of it helper': the helper's share")
        pose = ds.step_result("pose")
        parsing = ds.step_result("parsing")
        print(f"quality: pose reprojection {pose['reprojection_error_px']:.3f} px (p95 "
              f"{pose['reprojection_error_p95_px']:.3f}), focal {pose['intrinsics']['fx']:.1f} px; parsing flicker "
              f"{parsing['flicker']:.5f}, face coverage {parsing['face_coverage']:.4f}; background unseen "
              f"{ds.step_result('background')['unseen_fraction']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", type=Path)
    p.add_argument("--audio")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=1, help="run each video this many times (load varies: compare runs)")
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
        for _ in range(args.repeat):
            bench(v, args.audio, args.size)


if __name__ == "__main__":
    main()

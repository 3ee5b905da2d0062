"""Render speed: frames per second of whole frames (head + torso + background), at the avatar's trained size and at
512x512, on this machine's device. Motion prediction and video encoding are excluded (they are per-utterance and
per-frame costs of their own; `nerf-talk render` prints the end-to-end figure).

    .venv/bin/python bench/bench_render.py --avatar me.avatar          # a real avatar
    .venv/bin/python bench/bench_render.py                             # a synthetic 128 px smoke avatar, made here
    git worktree add /tmp/before COMMIT                                # before/after in one run:
    .venv/bin/python bench/bench_render.py --avatar me.avatar --before /tmp/before
    # when the avatar format changed in between: the same training directory exported by each checkout
    .venv/bin/python bench/bench_render.py --avatar me.avatar --before /tmp/before --before-avatar me_old.avatar

--before DIR times the same frames with the code of another checkout (run in a subprocess with DIR first on the
import path: the renderer's public API, Avatar.load(...).renderer(size).render(pose, coeffs, eyes), is the same) and
prints both figures and their ratio. Frames are rendered with the same poses, motion and eyes in both. The two are
timed in `--rounds` alternating rounds (before, after, after, before, ...) and the medians printed, with the median
of the rounds' own ratios: on a shared machine one before-then-after pair gave ratios from 1.23x to 1.42x.

Exactness: the frames of this code's renderer (float, before rounding to 8 bits) are compared with the exact path on
the pure-torch reference kernels (FrameRenderer(exact=True): every sample's colour composited by render_rays, the
training path, with backend "torch" for the hash grids, marching and compositing); the largest absolute difference
over the checked frames and pixels is printed (colours in [0, 1]).

Without --avatar, a synthetic clip (nerf_talk.train.synthetic) at 128x128 (the CPU recipe's frame size for a 512 px
dataset) is fitted with the smoke recipe; its head is a barely trained fog, which is the slow case for marching
(samples everywhere in the box), so the figures are a floor rather than a typical value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if "--tree" not in sys.argv:  # (with --tree, main() puts that checkout first)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_avatar(root: Path) -> Path:
    from nerf_talk import media
    from nerf_talk.api import fit
    from nerf_talk.motion import predict as mp
    from nerf_talk.train.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(root / "ds", n_frames=40, size=128)
    from nerf_talk.speech import synthesize

    s = synthesize("Open wide and say ah, then close your mouth again.")
    a = mp.to_mono16k(s.audio, s.sample_rate)
    n = int(40 / 25 * 16000)
    media.write_wav(ds.path("audio.wav"), np.pad(a, (0, max(0, n - len(a))))[:n], 16000)
    model = None
    if not mp.DEFAULT_MODEL.exists():  # any generic model serves: rendering speed does not depend on it
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_fit_render import tiny_motion_model

        model = tiny_motion_model()
    return fit(None, root / "bench.avatar", "smoke_cpu",
               ["data.scale=1.0", "stages.0.steps=200", "stages.1.steps=10", "stages.2.steps=50"],
               motion_model=model, dataset=ds.root)


def frame_inputs(avatar, frames: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pose, coefficients, eyes) of the timed frames: the person's own poses, random motion, open eyes."""
    track = avatar.parts.tensors["pose_track"].numpy()
    c = avatar.model.motion_components.shape[0]
    rng = np.random.default_rng(0)
    return [(track[i % len(track)], rng.standard_normal(c).astype(np.float32), np.array([1, 1, 0], np.float32))
            for i in range(frames)]


def bench(avatar_path: Path, sizes: list[int | None], frames: int) -> list[dict]:
    from nerf_talk.api import Avatar

    avatar = Avatar.load(avatar_path)
    inputs = frame_inputs(avatar, frames)
    rows = []
    for size in sizes:
        r = avatar.renderer(size)
        r.render(*inputs[0])  # warm-up (JIT, caches)
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        head_px = 0
        for x in inputs:
            r.render(*x)
            head_px += r.head_pixels
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        h, w = r.size
        rows.append({"size": f"{w}x{h}", "fps": frames / secs, "ms_per_frame": 1000 * secs / frames,
                     "head_pixel_share": head_px / frames / (h * w)})
    return rows


def max_difference(avatar_path: Path, sizes: list[int | None], frames: int) -> list[float]:
    """Per size: the largest |fast - exact torch reference| over `frames` frames' float pixels."""
    from nerf_talk.api import Avatar
    from nerf_talk.render.video import FrameRenderer

    fast, ref = Avatar.load(avatar_path), Avatar.load(avatar_path)
    ref.model.use_backend("torch")
    out = []
    for size in sizes:
        r = fast.renderer(size)
        e = FrameRenderer(ref.model, ref.intrinsics, r.size, torso=r.torso, device=ref.device, exact=True)
        out.append(max(float((r.render_float(*x) - e.render_float(*x)).abs().max())
                       for x in frame_inputs(fast, frames)))
    return out


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per size, the median of each figure over repeated runs of bench()."""
    return [{**rows[0], **{key: statistics.median(r[key] for r in rows) for key in ("fps", "ms_per_frame")}}
            for rows in zip(*runs)]


def run_before(tree: Path, avatar: Path, sizes: str, frames: int) -> list[dict]:
    """bench() with the code of the checkout `tree`, in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--avatar", str(avatar), "--sizes", sizes, "--frames", str(frames),
           "--tree", str(tree), "--json"]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avatar", type=Path)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--sizes", default="native,512", help="comma-separated heights; 'native' = the trained size")
    p.add_argument("--before", type=Path, help="a checkout of the code to compare with (e.g. a git worktree)")
    p.add_argument("--before-avatar", type=Path, help="the avatar --before reads (default --avatar): the same "
                   "training directory exported by that checkout, when the file format changed in between")
    p.add_argument("--check-frames", type=int, default=2, help="frames compared with the exact torch reference")
    p.add_argument("--rounds", type=int, default=3, help="alternating before/after rounds (with --before)")
    p.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # (--before's subprocess: the code to import)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tree:
        sys.path.insert(0, str(args.tree.resolve()))
    sizes = [None if s == "native" else int(s) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps(bench(args.avatar, sizes, args.frames)))
        return
    with tempfile.TemporaryDirectory() as d:
        path = args.avatar or synthetic_avatar(Path(d))
        if args.before:
            runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
            for k in range(max(1, args.rounds)):
                for side in (("before", "after") if k % 2 == 0 else ("after", "before")):
                    runs[side].append(run_before(args.before, args.before_avatar or path, args.sizes, args.frames)
                                      if side == "before" else bench(path, sizes, args.frames))
            rows, before = median_rows(runs["after"]), median_rows(runs["before"])
            ratios = [statistics.median(a[k]["fps"] / b[k]["fps"] for a, b in zip(runs["after"], runs["before"]))
                      for k in range(len(rows))]
        else:
            rows, before = bench(path, sizes, args.frames), None
        diffs = max_difference(path, sizes, args.check_frames) if args.check_frames else [math.nan] * len(rows)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"render speed on {dev}, avatar {args.avatar or 'synthetic smoke (128 px)'}, {args.frames} frames per size")
    print(f"{'size':>10} {'frames/s':>9} {'ms/frame':>9} {'head box share':>15} {'max |fast - exact torch|':>25}"
          + (f" {'before frames/s':>16} {'speed-up':>9}" if before else ""))
    for k, r in enumerate(rows):
        line = (f"{r['size']:>10} {r['fps']:9.2f} {r['ms_per_frame']:9.1f} {r['head_pixel_share']:15.2f} "
                f"{diffs[k]:25.2e}")
        if before:
            line += f" {before[k]['fps']:16.2f} {ratios[k]:8.2f}x"
        print(line)
    if before:
        print(f"before: the code in {args.before}; medians of {max(1, args.rounds)} alternating rounds (speed-up: the "
              f"median of the rounds' ratios); max difference over {args.check_frames} frames per size, float pixels "
              "in [0, 1] before rounding to 8 bits")


if __name__ == "__main__":
    main()

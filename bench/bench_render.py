"""Render speed: frames per second of whole frames (head + torso + background), at the avatar's trained size and at
512x512, on this machine's device. Motion prediction and video encoding are excluded (they are per-utterance and
per-frame costs of their own; `nerf-talk render` prints the end-to-end figure).

    .venv/bin/python bench/bench_render.py --avatar me.avatar          # a real avatar
    .venv/bin/python bench/bench_render.py                             # a synthetic 128 px smoke avatar, made here

Without --avatar, a synthetic clip (nerf_talk.train.synthetic) at 128x128 (the CPU recipe's frame size for a 512 px
dataset) is fitted with the smoke recipe; its head is a barely trained fog, which is the slow case for marching
(samples everywhere in the box), so the figures are a floor rather than a typical value.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def bench(avatar_path: Path, sizes: list[int | None], frames: int) -> list[dict]:
    from nerf_talk.api import Avatar

    avatar = Avatar.load(avatar_path)
    track = avatar.parts.tensors["pose_track"].numpy()
    c = avatar.model.motion_components.shape[0]
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        r = avatar.renderer(size)
        r.render(track[0], np.zeros(c, np.float32), np.array([1, 1, 0], np.float32))  # warm-up (JIT, caches)
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        head_px = 0
        for i in range(frames):
            r.render(track[i % len(track)], rng.standard_normal(c).astype(np.float32), np.array([1, 1, 0], np.float32))
            head_px += r.head_pixels
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        h, w = r.size
        rows.append({"size": f"{w}x{h}", "fps": frames / secs, "ms_per_frame": 1000 * secs / frames,
                     "head_pixel_share": head_px / frames / (h * w)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avatar", type=Path)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--sizes", default="native,512", help="comma-separated heights; 'native' = the trained size")
    args = p.parse_args()
    sizes = [None if s == "native" else int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        path = args.avatar or synthetic_avatar(Path(d))
        rows = bench(path, sizes, args.frames)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"render speed on {dev}, avatar {args.avatar or 'synthetic smoke (128 px)'}")
    print(f"{'size':>10} {'frames/s':>9} {'ms/frame':>9} {'head box share':>15}")
    for r in rows:
        print(f"{r['size']:>10} {r['fps']:9.2f} {r['ms_per_frame']:9.1f} {r['head_pixel_share']:15.2f}")


if __name__ == "__main__":
    main()

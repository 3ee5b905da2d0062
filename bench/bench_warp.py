"""How faithfully the head field's landmark warp maps a frame's face back to the neutral one.

    .venv/bin/python bench/bench_warp.py DATASET [DATASET ...]
    .venv/bin/python bench/bench_warp.py DATASET --speed AVATAR      # + what the warp's parts cost on the CPU

For each preprocessed dataset: the warp is built from its tracking exactly as `nerf-talk fit` builds it
(train.data.TrainData, the recipe's motion basis), then every third training frame's tracked landmarks (head frame)
are mapped through it. A perfect warp returns each to its neutral position. Printed per group of face-mesh points:
the mean distance from the neutral position after the warp ("warp", mm) and without any warp ("moved": how far the
point itself moved). Groups: the outer and inner lip loops (control points), the skin around the lips (philtrum,
cheek beside the corners; control points since avatar format 8), and the nose base, which no control point sits on:
a warp that spreads the lips' motion over it looks it up further off than it moved.
For the previous code, run the same command from a worktree of the previous commit.

--speed AVATAR (fitted on the first DATASET): CPU time of the lower warp over 200 000 samples in its box, and of whole
frames (the dataset's first 12 drives at the avatar's size), three ways: the tracked lower face alone (the skin around
the lips, fields.warp.MOUTH_CONTEXT, cut off, and no look into the mouth), with the context points, and as fitted
(with the mouth gap's look inside, fields.warp.mouth_gap): best of two alternating rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocess.mesh_topology import LIPS_INNER_LOOP, LIPS_OUTER_LOOP  # noqa: E402

GROUPS = {  # name: face-mesh points
    "outer lip loop": LIPS_OUTER_LOOP,
    "inner lip loop": LIPS_INNER_LOOP,
    "philtrum (164 167 393)": (164, 167, 393),
    "cheek beside the mouth (57 287 206 426 216 436)": (57, 287, 206, 426, 216, 436),
    "nose base (2 94 97 326 98 327)": (2, 94, 97, 326, 98, 327),
}


def warp_errors(dataset: Path, every: int = 3) -> dict[str, tuple[float, float]]:
    """{group: (mean distance after the warp, mean distance moved)} in millimetres."""
    from nerf_talk.config import DataConfig
    from nerf_talk.fields.warp import FaceWarp
    from nerf_talk.train.data import TrainData

    td = TrainData(dataset, DataConfig(), torch.device("cpu"))
    head, neutral = td.head_landmarks()
    warp = FaceWarp(td.motion.shape[1])
    for k, v in td.warp.items():
        getattr(warp, k).copy_(v)
    out = {}
    for name, pts in GROUPS.items():
        pts = list(pts)
        after, moved = [], []
        for f in td.train_frames[::every]:
            x = torch.tensor(head[f, pts], dtype=torch.float32)
            back = warp(x, td.motion[f:f + 1].float(), None).double().numpy()
            after.append(np.linalg.norm(back - neutral[pts], axis=1).mean())
            moved.append(np.linalg.norm(head[f, pts] - neutral[pts], axis=1).mean())
        out[name] = (float(np.mean(after)) * 1000, float(np.mean(moved)) * 1000)
    return out


def warp_speed(avatar_path: Path, dataset: Path, samples: int = 200_000, frames: int = 12) -> dict:
    """{"warp": (s alone, s with the context points, s as fitted), "frame": (...)}: see the module docstring."""
    from nerf_talk.api import Avatar
    from nerf_talk.motion.drive import motion_coefficients
    from preprocess.dataset import Dataset
    from preprocess.mesh_topology import LOWER_FACE

    av = Avatar.load(avatar_path)
    w = av.model.head.warp
    keys = ("lower_rest", "lower_offset", "lower_basis", "lower_side", "lower_guide")
    full = {k: getattr(w, k).clone() for k in keys}
    n = len(LOWER_FACE)
    alone = {k: v[:, :n].clone() if k == "lower_basis" else v[:n].clone() for k, v in full.items()}
    gen = torch.Generator().manual_seed(0)
    lo, hi = full["lower_rest"].min(0).values - 0.03, full["lower_rest"].max(0).values + 0.03
    x = lo + torch.rand(samples, 3, generator=gen) * (hi - lo)
    motion = torch.randn(1, full["lower_basis"].shape[0], generator=gen) * 0.5
    ds = Dataset(dataset)
    poses = ds.load_array("poses").astype(np.float32)[:frames]
    eyes = np.concatenate([ds.load_array("eye_openness"), ds.load_array("blink")[:, None]], 1).astype(np.float32)
    coeffs = motion_coefficients(av.model, ds.load_array("lower_face_motion").astype(np.float32)[:frames])
    renderer = av.renderer(None)
    variants = ((0, alone, False), (1, full, False), (2, full, True))
    best = {(kind, v): [] for kind in ("warp", "frame") for v, _, _ in variants}
    for _ in range(2):
        for variant, bufs, inside in variants:
            for k, v in bufs.items():
                setattr(w, k, v)
            w._memo = None  # the prepared controls are keyed by the buffers' storage
            # The look into the mouth switched off for this instance only (the bench's A/B, no setting for it).
            if inside:
                w.__dict__.pop("_gap", None)
            else:
                w._gap = lambda x, lower: None
            w(x[:1000], motion, None)
            t = time.perf_counter()
            w(x, motion, None)
            best["warp", variant].append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(len(poses)):
                renderer.render(poses[i], coeffs[i], eyes[i])
            best["frame", variant].append((time.perf_counter() - t) / len(poses))
    return {kind: tuple(min(best[kind, v]) for v, _, _ in variants) for kind in ("warp", "frame")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="preprocessed datasets (nerf-talk preprocess)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", type=Path, metavar="AVATAR", help="also time the warp with this avatar (fitted on the "
                    "first dataset)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| dataset | points | warp mm | moved mm |")
    print("|---|---|---|---|")
    for d in args.datasets:
        for name, (after, moved) in warp_errors(d).items():
            print(f"| {d.name} | {name} | {after:.2f} | {moved:.2f} |", flush=True)
    if args.speed:
        t = warp_speed(args.speed, args.datasets[0])
        print(f"\n{args.threads} thread(s), {args.speed.name}: lower warp over 200000 samples in its box, tracked "
              f"lower face alone / + the skin around the lips / + the look into the mouth: "
              f"{' / '.join(f'{v * 1e3:.1f}' for v in t['warp'])} ms; whole frame "
              f"{' / '.join(f'{v * 1e3:.0f}' for v in t['frame'])} ms ({t['frame'][2] / t['frame'][1]:.2f}x for the "
              f"look into the mouth)")


if __name__ == "__main__":
    main()

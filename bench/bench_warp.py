"""How faithfully the head field's landmark warp maps a frame's face back to the neutral one.

    .venv/bin/python bench/bench_warp.py DATASET [DATASET ...]

For each preprocessed dataset: the warp is built from its tracking exactly as `nerf-talk fit` builds it
(train.data.TrainData, the recipe's motion basis), then every third training frame's tracked landmarks (head frame)
are mapped through it. A perfect warp returns each to its neutral position. Printed per group of face-mesh points:
the mean distance from the neutral position after the warp ("warp", mm) and without any warp ("moved": how far the
point itself moved). Groups: the outer and inner lip loops (control points), the skin around the lips (philtrum,
cheek beside the corners; control points since avatar format 8), and the nose base, which no control point sits on:
a warp that spreads the lips' motion over it looks it up further off than it moved.
For the previous code, run the same command from a worktree of the previous commit.
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="preprocessed datasets (nerf-talk preprocess)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| dataset | points | warp mm | moved mm |")
    print("|---|---|---|---|")
    for d in args.datasets:
        for name, (after, moved) in warp_errors(d).items():
            print(f"| {d.name} | {name} | {after:.2f} | {moved:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Which learnt part of a fitted head makes its rendered mouth open: the avatar's held-out frames, rendered from
their tracked motion with one part switched off at a time, then read by the evaluation's face mesh.

    .venv/bin/python bench/bench_mouth_parts.py AVATAR DATASET [--threads 1]

DATASET is the preprocessed clip the avatar was fitted on (its split.json's held-out frames, as `nerf-talk eval`).
Rows: the avatar as fitted; its occupancy grid with every cell occupied (did the grid cull a mouth shape?); without
the mouth residual (the MLP over hash features and motion that adds density and geometry features in the mouth box:
the warp alone); without the colour's motion code (its embedding's output set to 0). Columns: the correlation of
the re-detected mouth opening with the real frames' (`mouth_opening_corr` of docs/EVALUATION.md), the mean opening,
and the mean opening on the quarter of the frames where the real mouth is widest, each beside the real one.
A part switched off after fitting is not the same as a fit without it: read a row as "what this part does in this
avatar", not as "what a recipe without it would give".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from nerf_talk.api import Avatar
    from nerf_talk.eval import face as fc
    from nerf_talk.eval import metrics as mx
    from nerf_talk.eval import run as ev
    from preprocess.dataset import Dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("avatar", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (use 1 on a shared CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    avatar, ds = Avatar.load(args.avatar), Dataset(args.dataset)
    ev.check_pair(avatar, ds)
    val = ev.heldout_frames(ds)
    renderer = avatar.renderer(None)
    poses = ds.load_array("poses").astype(np.float32)[val]
    eyes = np.concatenate([ds.load_array("eye_openness"), ds.load_array("blink")[:, None]], 1).astype(np.float32)[val]
    tracked = ds.load_array("lower_face_motion").astype(np.float32)[val]
    geo = fc.FaceGeometry.from_dataset(ds)
    if geo is None:
        raise SystemExit(f"{ds.root} has no face geometry for the evaluation's face mesh: preprocess it again")
    real, _ = ev.real_frames(ds, val, renderer.size)
    real_open = fc.face_signals(fc.detect_sequence(real), geo)["mouth_opening"]
    wide = real_open >= np.nanquantile(real_open, 0.75)

    head, model = avatar.model.head, avatar.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def all_occupied():
        model.grid.bitfield.fill_(255)

    def no_residual():
        head.mouth_mlp[-1].weight.data.zero_()
        head.mouth_mlp[-1].bias.data.zero_()

    def no_colour_motion():
        head.motion_embed[-1].weight.data.zero_()
        head.motion_embed[-1].bias.data.zero_()

    print(f"{args.avatar} on {len(val)} held-out frames of {ds.root}, {renderer.size[1]}x{renderer.size[0]}")
    print("| variant | opening corr | mean opening (real) | widest quarter (real) |")
    print("|---|---|---|---|")
    for name, switch in (("as fitted", None), ("occupancy grid all occupied", all_occupied),
                         ("without the mouth residual", no_residual),
                         ("without the colour's motion code", no_colour_motion)):
        if switch is not None:
            switch()
        frames, _ = ev.render_sequence(avatar, renderer, poses, tracked, eyes, name, progress=False)
        model.load_state_dict(saved)
        opening = fc.face_signals(fc.detect_sequence(frames), geo)["mouth_opening"]
        corr = mx.correlation_finite(opening, real_open)
        print(f"| {name} | {corr:.3f} | {np.nanmean(opening):.4f} ({np.nanmean(real_open):.4f}) | "
              f"{np.nanmean(opening[wide]):.4f} ({np.nanmean(real_open[wide]):.4f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

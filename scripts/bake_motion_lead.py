"""Move a motion model's mouth earlier in its weights (nerf_talk.motion.lead.bake_lead), no look-ahead added.

    python bench/bench_motion.py lag --corpus CORPUS --exclude NAME ...        # how late it comes: the frames to bake
    python scripts/bake_motion_lead.py --model M.safetensors --corpus CORPUS --frames 0.42 -o OUT.safetensors

The input speech is every readable dataset under CORPUS (preprocessed; only its audio features are read, no lips)
and CORPUS/synthetic/*.npz when present. How the shipped weights were made: docs/MOTION_MODEL.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the model to bake (NAME.safetensors beside NAME.json)")
    ap.add_argument("--corpus", required=True, help="a folder of preprocessed datasets (and synthetic/*.npz)")
    ap.add_argument("--frames", type=float, required=True, help="how much earlier, in frames at 25 fps")
    ap.add_argument("-o", "--out", required=True, help="where to write the baked model (NAME.safetensors)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from tqdm import tqdm

    from nerf_talk.errors import UserError
    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion import features as mf
    from nerf_talk.motion.lead import bake_lead
    from nerf_talk.motion.model import MotionModel

    if a.threads:
        torch.set_num_threads(a.threads)
    if not 0.0 < abs(a.frames) <= 4.0:
        sys.exit(f"--frames must be within +-4 frames and not 0, is {a.frames}")
    model = MotionModel.load(a.model)
    inputs = []
    for d in cp.find_datasets(a.corpus):
        try:
            inputs.append(mf.input_features(cp.load_real(d, model.vocab).features))
        except (UserError, OSError, ValueError, KeyError) as e:
            logging.warning("skipping %s: %s", d.name, str(e).splitlines()[0])
    shards = sorted((Path(a.corpus) / "synthetic").glob("*.npz"))
    inputs += [mf.input_features(cp.load_synthetic(p).features) for p in shards]
    if not inputs:
        sys.exit(f"no usable speech under {a.corpus}")
    logging.info("%d utterances (%d synthetic), %.1f min", len(inputs), len(shards),
                 sum(len(x) for x in inputs) / 25.0 / 60.0)
    with tqdm(total=a.steps, desc="bake-lead") as bar:
        def progress(step, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        baked, report = bake_lead(model, inputs, a.frames, steps=a.steps, progress=progress)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    baked.save(out)
    print(json.dumps(dict(report, model=str(out), error_reduction=round(
        1.0 - report["error_after"] / max(report["error_before"], 1e-12), 3)), indent=1))


if __name__ == "__main__":
    main()

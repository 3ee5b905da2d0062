"""The head/torso seam figure of finished evaluations, from their side_by_side.mp4 (real | own audio | tracked
motion): for evaluations written before `nerf-talk eval` measured it, and to compare two code versions on equal
footing (both panels went through the same video encoding).

    .venv/bin/python bench/bench_seam.py --work /work/eval13 --tag cpu --clips obama lieu reagan news_anchor

Per clip: the mean Sobel gradient magnitude (grey levels per pixel) in a band along the boundary between the head
labels and neck/torso of the real held-out frames' parsing (nerf_talk.eval.metrics.seam_band / seam_energy), on the
real panel and on the tracked-motion panel, and their ratio (target: within 1.2x of the real).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def panels(video: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The real and tracked-motion panels of the first n frames, RGB [n, H, W, 3] each."""
    cap = cv2.VideoCapture(str(video))
    real, tracked = [], []
    try:
        for _ in range(n):
            ok, f = cap.read()
            if not ok:
                break
            f = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
            w = f.shape[1] // 3
            real.append(f[:, :w])
            tracked.append(f[:, 2 * w:3 * w])
    finally:
        cap.release()
    return np.stack(real), np.stack(tracked)


def seam(eval_dir: Path, dataset: Path) -> dict:
    from nerf_talk.eval import metrics as mx
    from nerf_talk.eval.run import BODY_LABELS, SEAM_HALF_WIDTH
    from preprocess.dataset import Dataset
    from preprocess.labels import HEAD_LABELS

    doc = json.loads((eval_dir / "eval.json").read_text())
    frames = doc["heldout_frames"]
    real, tracked = panels(eval_dir / "side_by_side.mp4", len(frames))
    h, w = real.shape[1:3]
    ds = Dataset(dataset)
    labels = np.stack([cv2.resize(ds.read_parsing(i), (w, h), interpolation=cv2.INTER_NEAREST)
                       for i in frames[:len(real)]])
    cw, ch = doc["compare_size"]
    band = mx.seam_band(labels, HEAD_LABELS, BODY_LABELS, max(1, round(SEAM_HALF_WIDTH * h)))
    r, t = mx.seam_energy(real, band), mx.seam_energy(tracked, band)
    return {"compare_size": f"{cw}x{ch}", "video_size": f"{w}x{h}", "real": r, "tracked": t, "ratio": t / r}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a bench_eval --work directory")
    ap.add_argument("--tag", default="cpu", help="the recipe tag of eval_TAG/")
    ap.add_argument("--clips", nargs="+", required=True)
    args = ap.parse_args(argv)
    print("| clip | compare size | seam real | seam rendered (tracked) | ratio |")
    print("|---|---|---|---|---|")
    for c in args.clips:
        s = seam(args.work / c / f"eval_{args.tag}", args.work / c / "dataset")
        print(f"| {c} | {s['compare_size']} | {s['real']:.2f} | {s['tracked']:.2f} | {s['ratio']:.2f} |")


if __name__ == "__main__":
    main()

"""Neck-label flicker of preprocessed datasets, read from their parsing label maps: the pixels whose NECK label
changes from one frame to the next, in % of the mean neck area (the parsing step's `neck_flicker_percent`, measured
on any dataset, so one written by older code gives the "before" figure).

    .venv/bin/python bench/bench_neck.py DATASET [DATASET ...] [--figure PNG --frame K]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def neck_flicker(ds) -> tuple[float, float]:
    """(flicker %, mean neck area in pixels) of a dataset's parsing maps."""
    from preprocess.labels import Label

    necks = np.stack([ds.read_parsing(i) == Label.NECK for i in range(ds.n_frames)])
    area = float(necks.sum((1, 2)).mean())
    changed = (necks[1:] ^ necks[:-1]).sum((1, 2)).mean()
    return 100.0 * float(changed) / max(area, 1.0), area


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--figure", type=Path, help="write the label maps of 5 frames from --frame of the first dataset")
    ap.add_argument("--frame", type=int, default=0)
    args = ap.parse_args(argv)
    from preprocess.dataset import Dataset

    print("| dataset | frames | neck area px | neck flicker % |")
    print("|---|---|---|---|")
    for d in args.datasets:
        ds = Dataset(d)
        f, area = neck_flicker(ds)
        print(f"| {d} | {ds.n_frames} | {area:.0f} | {f:.2f} |")
    if args.figure:
        import cv2

        from preprocess.parsing import colorize

        ds = Dataset(args.datasets[0])
        row = np.concatenate([colorize(ds.read_parsing(i)) for i in range(args.frame, args.frame + 5)], 1)
        cv2.imwrite(str(args.figure), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()

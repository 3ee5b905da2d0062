"""Before/after figure of two evaluations of the same clips (`nerf-talk eval` / bench/bench_eval.py outputs): per clip,
the held-out frame where the real mouth is most open (real | before | after, each rendered from the tracked motion)
and the mouth-opening curves over the held-out frames (real re-detected, before, after). `--signal blink`: the frame
where the real eyes are most closed (the eye band, enlarged) and the blink curves.

    .venv/bin/python bench/figure_before_after.py --before /work/eval13_before --after /work/eval13 \\
        --tag-before cpu --tag-after cpu --clips obama lieu reagan news_anchor -o docs/figures/mouth_before_after.png

Each evaluation directory is WORK/CLIP/eval_TAG/ (eval.json with its `signals`, side_by_side.mp4 whose third panel is
the tracked-motion render).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def video_frame(path: Path, index: int) -> np.ndarray:
    """Frame `index` of an mp4 as RGB."""
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise SystemExit(f"{path}: no frame {index}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def panels(eval_dir: Path, index: int, size: int) -> list[np.ndarray]:
    """(real, tracked-motion render) of held-out position `index`, resized to size x size."""
    frame = video_frame(eval_dir / "side_by_side.mp4", index)
    w = frame.shape[1] // 3
    return [cv2.resize(frame[:, k * w:(k + 1) * w], (size, size), interpolation=cv2.INTER_AREA) for k in (0, 2)]


# signal: (real curve, rendered curve, y label, which frame, crop of the panel (top, bottom, left, right in shares))
SIGNALS = {
    "mouth": ("real_mouth_opening", "tracked_mouth_opening", "inner-lip gap / face size", "most open", (0, 1, 0, 1)),
    "blink": ("real_blink", "tracked_blink", "blink read by the face mesh (1 = closed)", "eyes most closed",
              (0.25, 0.55, 0.15, 0.85)),
}


def score(e: dict, signal: str) -> str:
    """The figure the legend gives: mouth-opening correlation, or blink F1."""
    t = e["self_driven"]["tracked"]
    if signal == "mouth":
        return "" if t.get("mouth_opening_corr") is None else f"corr {t['mouth_opening_corr']:.2f}"
    f1 = (t.get("blink") or {}).get("f1")
    return "" if f1 is None else f"blink F1 {f1:.2f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="bench_eval --work of the old code")
    ap.add_argument("--after", type=Path, required=True, help="bench_eval --work of the new code")
    ap.add_argument("--tag-before", default="cpu")
    ap.add_argument("--tag-after", default="cpu")
    ap.add_argument("--clips", nargs="+", required=True)
    ap.add_argument("--signal", choices=list(SIGNALS), default="mouth")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.clips), 2, figsize=(13, 2.9 * len(args.clips)),
                             gridspec_kw={"width_ratios": [1.15, 1]}, squeeze=False)
    for row, clip in zip(axes, args.clips):
        ev = {}
        for name, root, tag in (("before", args.before, args.tag_before), ("after", args.after, args.tag_after)):
            d = root / clip / f"eval_{tag}"
            ev[name] = (d, json.loads((d / "eval.json").read_text()))
        real_key, rendered_key, ylabel, which, (t, b, l, r) = SIGNALS[args.signal]
        sig_a = ev["after"][1]["signals"]
        real = np.array([np.nan if v is None else v for v in sig_a[real_key]], float)
        k = int(np.nanargmax(real))
        real_img, after_img = panels(ev["after"][0], k, 256)
        _, before_img = panels(ev["before"][0], k, 256)
        crop = [im[int(t * 256):int(b * 256), int(l * 256):int(r * 256)] for im in (real_img, before_img, after_img)]
        row[0].imshow(np.concatenate(crop, 1))
        w = crop[0].shape[1]
        row[0].set_xticks([w // 2, w + w // 2, 2 * w + w // 2], ["real", "before", "after"])
        row[0].set_yticks([])
        row[0].set_title(f"{clip}: held-out frame {sig_a['frames'][k]} ({which}), tracked motion", fontsize=9)
        frames = sig_a["frames"]
        row[1].plot(frames, real, color="0.6", lw=3, label="real (re-detected)")
        for name, colour in (("before", "tab:red"), ("after", "tab:blue")):
            e = ev[name][1]
            y = [np.nan if v is None else v for v in e["signals"][rendered_key]]
            size = "x".join(str(v) for v in e["compare_size"])
            row[1].plot(e["signals"]["frames"], y, color=colour, lw=1.2, label=f"{name} ({size}, {score(e, args.signal)})")
        row[1].set_ylabel(ylabel, fontsize=8)
        row[1].legend(fontsize=7, loc="upper right")
    axes[-1][1].set_xlabel("dataset frame (held out)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Evaluation benchmark: preprocess, fit and evaluate each shared clip with one recipe, then print one table.

    .venv/bin/python bench/bench_eval.py                                   # smoke_cpu on obama, lieu, reagan
    .venv/bin/python bench/bench_eval.py --clips obama --threads 1         # one clip on a shared CPU
    .venv/bin/python bench/bench_eval.py --recipe full                     # head then torso (needs a GPU)
    .venv/bin/python bench/bench_eval.py --interval A.json B.json          # how sure the opening correlation is

Per clip, under WORK/CLIP/: `dataset/` (nerf_talk preprocess; finished steps are reused), `RECIPE.avatar` (api.fit
on that dataset, exactly what `nerf-talk fit --dataset` does; an avatar already there is reused, with the fit time
RECIPE.fit.json recorded, only while the dataset's manifest is the one it was fitted on) and `eval_RECIPE/`
(nerf_talk.eval.evaluate_avatar: eval.json, plots, side_by_side.mp4). The other speech of the cross-driven figures
is --audio (default: the shared en_female_18s.wav, a speaker none of the clips has).

Columns (definitions in docs/EVALUATION.md): held-out PSNR / SSIM on the full frame and PSNR on the face, rendered
from the clip's own audio (A) and from the tracked motion (T); mouth landmark distance in % of face size (A / T),
beside the same for the real frames shot again (the tracker's noise) and blurred by 1 and 1.5 px (with their face
PSNR: how much of a render's distance its sharpness alone explains); the mouth-sync figure of the render saying the
other speech, of the real held-out frames and of the real clip; the share of /p b m/ frames with closed lips on the
other speech; fit wall time; render frames per second (whole frames at the compare size, the evaluation's own
renders).

--interval reads JSON files this script wrote (--json) and prints, per clip, the tracked-motion mouth-opening
correlation with its 90 % interval by a block bootstrap over the held-out frames (5-frame blocks: neighbouring frames
are not independent; 2000 draws, seed 0): how far a few dozen held-out frames pin the figure down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CLIPS = {  # name: (video, separate audio or None)
    "obama": ("video/obama_450_20s.mp4", None),
    "lieu": ("video/lieu_256_60s.mp4", None),
    "reagan": ("video/reagan_256_26s_silent.mp4", "video/reagan_256_26s.wav"),
    "news_anchor": ("corpus/validation/news_anchor_71s.mp4", None),
}
DEFAULT_SPEECH = "speech/en_female_18s.wav"


def fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "inf"
    return f"{v:.{digits}f}"


def recipe_tag(recipe: str) -> str:
    """The name a recipe's files take in a clip's folder: a recipe given as a path, by its stem."""
    return Path(recipe).stem


def run_clip(name: str, recipe: str, work: Path, speech: Path, threads: int | None) -> dict:
    from nerf_talk.api import fit, preprocess
    from nerf_talk.eval import evaluate_avatar
    from preprocess.config import PreprocessConfig

    video, audio = CLIPS[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = PreprocessConfig(audio=str(SHARED / audio) if audio else None)
    ds = preprocess(SHARED / video, d / "dataset", cfg)
    pre_s = time.perf_counter() - t0
    tag = recipe_tag(recipe)
    avatar = d / f"{tag}.avatar"
    fit_json = d / f"{tag}.fit.json"
    # The avatar is reused only if the dataset is exactly the one it was fitted on: a preprocessing step that was
    # redone (a new step version) can change the crop's camera, and evaluate_avatar would rightly refuse the pair.
    key = hashlib.sha256(json.dumps(ds.manifest["steps"], sort_keys=True).encode()).hexdigest()[:16]
    prev = json.loads(fit_json.read_text()) if fit_json.exists() else {}
    if avatar.exists() and prev.get("dataset_key") == key:
        fit_s = prev["fit_s"]
        print(f"[bench] {name}: reusing {avatar} (fitted in {fit_s:.1f} s)")
    else:
        for old in (avatar, fit_json):
            old.unlink(missing_ok=True)
        shutil.rmtree(d / f"{tag}.avatar.work", ignore_errors=True)  # or fit would resume the stale training
        t0 = time.perf_counter()
        fit(None, avatar, None if recipe == "full" else recipe, dataset=ds.root)
        fit_s = time.perf_counter() - t0
        fit_json.write_text(json.dumps({"fit_s": fit_s, "recipe": recipe, "threads": threads, "dataset_key": key}))
    res = evaluate_avatar(avatar, ds.root, d / f"eval_{tag}", audio=speech)
    return {"clip": name, "preprocess_s": pre_s, "fit_s": fit_s, "eval": res}


def row(r: dict) -> list[str]:
    e = r["eval"]
    a, t = e["self_driven"]["audio"], e["self_driven"]["tracked"]
    c, ref = e.get("cross_driven", {}), e.get("reference", {})
    w, h = e["compare_size"]
    return [r["clip"], str(len(e["heldout_frames"])), f"{w}x{h}",
            f"{fmt(a['psnr'])} / {fmt(t['psnr'])}", f"{fmt(a['ssim'], 3)} / {fmt(t['ssim'], 3)}",
            f"{fmt(a['psnr_face'])} / {fmt(t['psnr_face'])}",
            f"{fmt(a.get('mouth_lmd'))} / {fmt(t.get('mouth_lmd'))}",
            fmt(ref.get("tracker_noise", {}).get("mouth_lmd")),
            " / ".join(f"{fmt(b.get('mouth_lmd'))} ({fmt(b.get('psnr_face'), 1)} dB)"
                       for b in ref.get("blurred_real", {}).values()) or "-",
            f"{fmt(a.get('mouth_opening_corr'), 3)} / {fmt(t.get('mouth_opening_corr'), 3)}",
            f"{fmt(a.get('drive_opening_corr'), 3)} / {fmt(t.get('drive_opening_corr'), 3)}",
            f"{fmt(c.get('msf'), 3)} (shifted {fmt(c.get('msf_shifted_max'), 3)})",
            fmt(ref.get('real_heldout', {}).get('msf'), 3), fmt(ref.get('real_clip', {}).get('msf'), 3),
            fmt(c.get("bilabial_closed_fraction"), 2), blinks(t.get("blink")), fmt(t.get("seam", {}).get("ratio")),
            f"{r['fit_s']:.0f}",
            fmt(e["timing"]["render_fps"], 2)]


def blinks(b: dict | None) -> str:
    """Blink F1 of the tracked-motion render (driven by the clip's own eye signal), with the real blink count."""
    if not b:
        return "-"
    return f"{fmt(b.get('f1'))} ({b.get('events_rendered', '?')} of {b.get('events_real', '?')} real)"


HEADER = ["clip", "held-out frames", "size", "PSNR dB A / T", "SSIM A / T", "face PSNR dB A / T",
          "mouth LMD % A / T", "tracker noise LMD %",
          "blurred real LMD % (face PSNR), 1 / 1.5 px", "mouth-opening corr A / T",
          "opening corr with its drive A / T", "MSF other speech",
          "MSF real held-out", "MSF real clip",
          "/p b m/ closed", "blink F1 T", "seam ratio T", "fit s", "render FPS"]


def opening_interval(signals: dict, block: int = 5, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(correlation, 5th, 95th percentile) of the real and the tracked-motion render's mouth opening over the eval's
    held-out frames (its `signals`), the interval from a moving-block bootstrap of the frames."""
    import numpy as np

    real = np.asarray(signals["real_mouth_opening"], np.float64)
    rend = np.asarray(signals["tracked_mouth_opening"], np.float64)
    keep = np.isfinite(real) & np.isfinite(rend)
    real, rend = real[keep], rend[keep]
    n = len(real)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(draws, n // block + 1))
    idx = (starts[:, :, None] + np.arange(block)).reshape(draws, -1)[:, :n]
    boot = [np.corrcoef(real[i], rend[i])[0, 1] for i in idx]
    lo, hi = np.percentile(boot, [5, 95])
    return float(np.corrcoef(real, rend)[0, 1]), float(lo), float(hi)


def intervals(paths: list[Path]) -> None:
    print("| file | clip | held-out frames | tracked-motion opening corr | 90 % interval (block bootstrap) |")
    print("|---|---|---|---|---|")
    for path in paths:
        for r in json.loads(path.read_text()):
            sig = r["eval"]["signals"]
            corr, lo, hi = opening_interval(sig)
            print(f"| {path.name} | {r['clip']} | {len(sig['frames'])} | {corr:.3f} | {lo:.3f}-{hi:.3f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    ap.add_argument("--recipe", default="smoke_cpu", help="recipes/NAME.toml or NAME, or 'full' (head then torso "
                    "on a GPU: what `nerf-talk fit` does there)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_eval"), help="datasets, avatars and evaluations")
    ap.add_argument("--audio", type=Path, default=SHARED / DEFAULT_SPEECH, help="the other speech (cross-driven)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (use 1 on a shared CPU)")
    ap.add_argument("--json", type=Path, help="write every clip's figures here")
    ap.add_argument("--interval", type=Path, nargs="+", metavar="JSON",
                    help="only print the opening correlation's interval from JSON files written by --json")
    args = ap.parse_args(argv)
    if args.interval:
        return intervals(args.interval)
    os.environ.setdefault("GLOG_minloglevel", "2")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipe == "full" and not torch.cuda.is_available():
        ap.error("--recipe full needs a GPU (CUDA); on a CPU use smoke_cpu")
    missing = [CLIPS[c][0] for c in args.clips if not (SHARED / CLIPS[c][0]).exists()]
    if missing or not args.audio.exists():
        ap.error(f"shared media not found under {SHARED}: {missing or args.audio}")
    results = []
    for name in args.clips:
        results.append(run_clip(name, args.recipe, args.work, args.audio, args.threads))
        print(f"[bench] {name} done: {args.work / name / ('eval_' + recipe_tag(args.recipe))}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"\nrecipe {args.recipe}, {device}, torch threads {torch.get_num_threads()}, other speech {args.audio.name}")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for r in results:
        print("| " + " | ".join(row(r)) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Audio-to-motion benchmarks: real-time ratio on this machine, and the held-out evaluation table.

    python bench/bench_motion.py speed                          # shipped model, shared speech files
    python bench/bench_motion.py heldout --corpus DIR --clip lieu --model DIR/no_lieu/audio2motion.safetensors
    python bench/bench_motion.py sync --corpus DIR              # the mouth-sync figure's ranking on real pairs

speed: real-time ratio = seconds of audio / seconds of compute, for the whole of predict_motion (resampling, all
audio features incl. the phoneme recogniser, the network, interpolation to 25 fps) and for the network alone;
> 1 is faster than real time. Threads: torch's default unless --threads.
heldout: the model must have been trained without --clip (scripts/train_default_motion.py --holdout CLIP); the
clip's first half fits the adapter and baselines, the second half is scored (nerf_talk.motion.evaluate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEECH = ROOT.parent / "shared" / "data" / "speech"


def speed(args) -> dict:
    import torch

    from nerf_talk import audio_features as af
    from nerf_talk import media
    from nerf_talk.motion import features as mf
    from nerf_talk.motion.model import MotionModel
    from nerf_talk.motion.predict import load_default_model, predict_motion, run_network

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MotionModel.load(args.model) if args.model else load_default_model()
    files = sorted(SPEECH.glob("*.wav"))
    audio = np.concatenate([media.read_audio(f, 16000) for f in files]) if files else \
        np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1
    secs = len(audio) / 16000
    predict_motion(model, audio[:16000 * 2], 16000, 25.0)  # warm-up: loads the recogniser
    t = time.perf_counter()
    out = predict_motion(model, audio, 16000, 25.0)
    total = time.perf_counter() - t
    x = mf.input_features(af.compute_features(audio, 25.0))
    t = time.perf_counter()
    run_network(model, x)
    net = time.perf_counter() - t
    res = {"audio_s": round(secs, 2), "frames": len(out["blink"]), "threads": torch.get_num_threads(),
           "predict_motion_s": round(total, 3), "realtime_ratio": round(secs / total, 1),
           "network_s": round(net, 4), "network_realtime_ratio": round(secs / net, 1)}
    print(json.dumps(res, indent=1))
    return res


def heldout(args) -> dict:
    from nerf_talk.motion import evaluate as ev
    from nerf_talk.motion.model import MotionModel

    model = MotionModel.load(args.model)
    trained = model.meta.get("trained_on", {}).get("real", [])
    if args.clip in trained:
        raise SystemExit(f"{args.model} was trained on {args.clip}: not a held-out evaluation")
    res = ev.evaluate_clip(model, Path(args.corpus) / args.clip, args.fit_fraction)
    info = res.pop("_info")
    print(f"held-out clip {info['clip']}: adapter fitted on {info['frames_fit']} frames, scored on "
          f"{info['frames_test']} (model trained on {trained} + {model.meta['trained_on']['synthetic_utterances']}"
          f" synthetic utterances)")
    cols = ("opening_corr", "landmark_err", "msf", "bilabial", "opening_std_ratio")
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in res.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    res["_info"] = info
    return res


def sync(args) -> dict:
    from nerf_talk import audio_features as af
    from nerf_talk.motion import evaluate as ev
    from nerf_talk.motion.corpus import find_datasets

    clips = {p.name: p for p in find_datasets(args.corpus)}
    r = ev.sync_ranking(clips, af.phoneme_vocabulary())
    print("| clip | MSF true pair | best shifted (+-3,5,10 frames) | best mismatched | true ranks first |")
    print("|---|---|---|---|---|")
    for n in clips:
        print(f"| {n} | {r['true'][n]:.3f} | {max(r['shifted'][n]):.3f} | {max(r['mismatched'][n]):.3f} | "
              f"{r['true_beats_all'][n]} |")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "heldout", "sync"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--clip", default="lieu")
    ap.add_argument("--fit-fraction", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    {"speed": speed, "heldout": heldout, "sync": sync}[a.what](a)


if __name__ == "__main__":
    main()

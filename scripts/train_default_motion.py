"""Reproduce the shipped generic motion model (nerf_talk/assets/audio2motion.*), or a held-out variant of it.

    python scripts/train_default_motion.py --work /tmp/a2m                     # corpus + synthetic speech + training
    python scripts/train_default_motion.py --work /tmp/a2m --install           # ... and copy into nerf_talk/assets
    python scripts/train_default_motion.py --work /tmp/a2m --holdout lieu --out /tmp/a2m/no_lieu   # for evaluation

Steps (each is skipped when its output exists, so a run resumes):
  1. the shared clips (../shared/data/video) preprocessed into WORK/corpus/NAME with the steps motion needs
     (ingest, landmarks, pose, face_motion, audio_features, split), at 256 px;
  2. N synthetic utterances (espeak-ng, 14 languages, augmented) into WORK/corpus/synthetic (synth.generate);
  3. train_motion(WORK/corpus, OUT, recipes/audio2motion.toml, overrides).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "video"
CLIPS = {"obama": ("obama_450_20s.mp4", None), "lieu": ("lieu_256_60s.mp4", None),
         "reagan": ("reagan_256_26s_silent.mp4", "reagan_256_26s.wav")}
MOTION_STEPS = ("ingest", "landmarks", "pose", "face_motion", "audio_features", "split")


def build_corpus(work: Path, n_synthetic: int, workers: int) -> Path:
    from nerf_talk.motion import synth
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    corpus = work / "corpus"
    pipeline.STEP_MODULES = MOTION_STEPS  # only what the motion model reads (no parsing/background/torso)
    for name, (video, audio) in CLIPS.items():
        if not (SHARED / video).exists():
            raise SystemExit(f"missing shared clip {SHARED / video}")
        pipeline.run(SHARED / video, corpus / name,
                     PreprocessConfig(size=256, audio=str(SHARED / audio) if audio else None))
    if n_synthetic:
        synth.generate(corpus / "synthetic", n_synthetic, workers=workers)
    return corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="default: WORK/model")
    ap.add_argument("--synthetic", type=int, default=1200, help="synthetic utterances (about 8 s each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--holdout", action="append", default=[], help="clip left out of training (repeatable)")
    ap.add_argument("--install", action="store_true", help="copy the result into nerf_talk/assets")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.steps=500")
    a = ap.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nerf_talk.motion import train_motion

    corpus = build_corpus(a.work, a.synthetic, a.workers)
    out = a.out or a.work / "model"
    holdout = [f"data.holdout={a.holdout!r}".replace("'", '"')] if a.holdout else []
    path = train_motion(corpus, out, ROOT / "recipes" / "audio2motion.toml", holdout + a.overrides)
    print(f"model: {path}")
    if a.install:
        if a.holdout:
            raise SystemExit("refusing to install a model trained with clips held out")
        assets = ROOT / "nerf_talk" / "assets"
        assets.mkdir(exist_ok=True)
        for ext in (".safetensors", ".json"):
            shutil.copyfile(path.with_suffix(ext), assets / f"audio2motion{ext}")
        print(f"installed into {assets}")


if __name__ == "__main__":
    main()

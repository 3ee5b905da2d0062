"""Reproduce the shipped generic motion model (nerf_talk/assets/audio2motion.*), or a held-out variant of it.

    python scripts/train_default_motion.py --work /tmp/a2m                     # corpus + synthetic speech + training
    python scripts/train_default_motion.py --work /tmp/a2m --install           # ... and copy into nerf_talk/assets
    python scripts/train_default_motion.py --work /tmp/a2m --holdout lieu --out /tmp/a2m/no_lieu   # for evaluation

Steps (each is skipped when its output exists, so a run resumes; training resumes from its checkpoint):
  1. the shared clips (../shared/data/video) and the corpus's training sources (../shared/data/corpus/grid_s1 and
     public; never validation/) preprocessed into WORK/corpus/{shared,grid,public}/NAME with the steps motion needs
     (ingest, landmarks, pose, face_motion, audio_features, split), at 256 px; a clip that fails (no face found, an
     unreadable file) is reported and left out. --datasets DIR links already preprocessed datasets of the same names
     from DIR instead (e.g. made by `nerf-talk preprocess --size 256`);
  2. WORK/corpus/speakers.json: GRID's 50 files are one speaker, the three Obama clips another, the rest one each;
  3. N synthetic utterances (espeak-ng, 14 languages, augmented) into WORK/corpus/synthetic (synth.generate);
  4. train_motion(WORK/corpus, OUT, recipes/audio2motion.toml, overrides).
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
CORPUS = ROOT.parent / "shared" / "data" / "corpus"
SOURCES = ("grid_s1", "public")  # corpus folders that may train shipped weights (MANIFEST.md); validation/ may not
SPEAKERS = {"grid_s1_*": "grid_s1", "obama": "obama", "us_pres_obama_*": "obama"}  # corpus.speaker_of
CLIPS = {"obama": ("obama_450_20s.mp4", None), "lieu": ("lieu_256_60s.mp4", None),
         "reagan": ("reagan_256_26s_silent.mp4", "reagan_256_26s.wav")}
MOTION_STEPS = ("ingest", "landmarks", "pose", "face_motion", "audio_features", "split")


def build_corpus(work: Path, n_synthetic: int, workers: int, datasets: Path | None = None) -> Path:
    import json

    from nerf_talk.errors import UserError
    from nerf_talk.motion import synth
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    corpus = work / "corpus"
    # pipeline.run, not nerf_talk.api.preprocess: the clips that train a motion model are not aligned by the shipped
    # one (its own timing would become their truth); their offsets come from their own lips.
    pipeline.STEP_MODULES = MOTION_STEPS  # only what the motion model reads (no parsing/background/torso)
    jobs = [("shared", name, SHARED / video, SHARED / audio if audio else None)
            for name, (video, audio) in CLIPS.items()]
    for src in SOURCES:
        jobs += [("grid" if src == "grid_s1" else src, v.stem, v, None) for v in sorted((CORPUS / src).glob("*.mp4"))]
    failed = []
    for group, name, video, audio in jobs:
        out = corpus / group / name
        if datasets is not None and (datasets / name / "manifest.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            if not out.exists():
                out.symlink_to((datasets / name).resolve(), target_is_directory=True)
            continue
        if not video.exists():
            raise SystemExit(f"missing {video}")
        try:
            pipeline.run(video, out, PreprocessConfig(size=256, audio=str(audio) if audio else None))
        except UserError as e:
            print(f"skipping {video.name}: {e}", file=sys.stderr)
            failed.append(video.name)
    print(f"corpus: {len(jobs) - len(failed)} of {len(jobs)} clips preprocessed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    (corpus / "speakers.json").write_text(json.dumps(SPEAKERS, indent=1))
    if n_synthetic:
        synth.generate(corpus / "synthetic", n_synthetic, workers=workers)
    return corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="default: WORK/model")
    ap.add_argument("--synthetic", type=int, default=598, help="synthetic utterances (about 7 s each)")
    ap.add_argument("--datasets", type=Path, default=None,
                    help="a folder of already preprocessed datasets named like the clips (linked, not copied)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--holdout", action="append", default=[], help="clip left out of training (repeatable)")
    ap.add_argument("--install", action="store_true", help="copy the result into nerf_talk/assets")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.steps=500")
    a = ap.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nerf_talk.motion import train_motion

    corpus = build_corpus(a.work, a.synthetic, a.workers, a.datasets)
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

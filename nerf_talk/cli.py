"""The `nerf-talk` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from nerf_talk.errors import UserError

log = logging.getLogger("nerf_talk")


def _preprocess_config(args):
    from preprocess.config import PreprocessConfig

    return PreprocessConfig(
        fps=args.fps,
        size=args.size,
        val_fraction=args.val_fraction,
        audio=str(args.audio) if args.audio else None,
        audio_offset=args.audio_offset,
        force=list(args.force or []),
    )


def cmd_preprocess(args) -> None:
    from preprocess import pipeline

    ds = pipeline.run(args.video, args.output, _preprocess_config(args))
    print(f"dataset: {ds.root}  ({ds.n_frames} frames at {ds.fps:g} fps)")
    print(f"report:  {ds.path('report/index.html')}")


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def resolve_recipe(name: str | None) -> Path | None:
    """A recipe path, or a bare name from recipes/ ("head", "smoke_cpu"); None: the hardware's default."""
    if name is None:
        import torch

        name = "head" if torch.cuda.is_available() else "smoke_cpu"
        if name == "smoke_cpu":
            log.warning("no GPU: training the small CPU recipe (recipes/smoke_cpu.toml); a full avatar needs a GPU")
    p = Path(name)
    if p.suffix != ".toml" and not p.exists():
        p = RECIPES / f"{name}.toml"
    if not p.exists():
        known = ", ".join(sorted(q.stem for q in RECIPES.glob("*.toml")))
        raise UserError(f"recipe not found: {name}", f"give a .toml path or one of: {known}")
    return p


def cmd_train(args) -> None:
    from nerf_talk.train import train

    recipe = None if args.resume and args.recipe is None else resolve_recipe(args.recipe)
    out = train(args.dataset, args.output, recipe, overrides=args.set, resume=args.resume)
    print(f"avatar: {out}")


def cmd_sample(args) -> None:
    from nerf_talk.sample_clip import make_sample_clip

    clip = make_sample_clip(args.output, seconds=args.seconds, seed=args.seed)
    print(f"video: {clip.video}\ntruth: {clip.truth}")


def cmd_demo(args) -> None:
    from nerf_talk.sample_clip import make_sample_clip
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    out = Path(args.output)
    t0 = time.perf_counter()
    print(f"[demo 1/2] making the embedded sample clip in {out / 'sample'} (a talking portrait, no download)")
    clip = make_sample_clip(out / "sample")
    print(f"[demo 2/2] preprocessing it into {out / 'dataset'}")
    ds = pipeline.run(clip.video, out / "dataset", PreprocessConfig())
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"  sample clip: {clip.video}")
    print(f"  dataset:     {ds.root} ({ds.n_frames} frames)")
    print(f"  report:      {ds.path('report/index.html')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nerf-talk", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("preprocess", help="turn a talking-head video into a training dataset")
    pp.add_argument("video", type=Path, help="mp4/mov/mkv/webm, H.264 or HEVC, any frame rate, 256 px to 4K")
    pp.add_argument("-o", "--output", type=Path, required=True, help="dataset directory (new, or one to resume)")
    pp.add_argument("--audio", type=Path, help="separate speech file, for a video without (usable) sound")
    pp.add_argument("--audio-offset", type=float, help="seconds the audio lags the lips (default: measured)")
    pp.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    pp.add_argument("--size", type=int, default=512, help="side of the square crop in pixels (default 512)")
    pp.add_argument("--val-fraction", type=float, default=1 / 11, help="held-out last fraction (default 1/11)")
    pp.add_argument("--force", action="append", metavar="STEP", help="redo STEP (and what depends on it)")
    pp.set_defaults(func=cmd_preprocess)

    pt = sub.add_parser("train", help="train an avatar's head and torso fields from a dataset")
    pt.add_argument("dataset", type=Path, help="a directory written by `nerf-talk preprocess`")
    pt.add_argument("-o", "--output", type=Path, required=True, help="avatar/training directory")
    pt.add_argument("--recipe", help="recipes/NAME.toml or NAME (default: head on a GPU, smoke_cpu otherwise)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. data.scale=0.5")
    pt.add_argument("--resume", action="store_true", help="continue the run in OUTPUT exactly where it stopped")
    pt.set_defaults(func=cmd_train)

    ps = sub.add_parser("sample", help="write the embedded sample talking-head clip and its ground truth")
    ps.add_argument("-o", "--output", type=Path, required=True)
    ps.add_argument("--seconds", type=float, default=12.0)
    ps.add_argument("--seed", type=int, default=0)
    ps.set_defaults(func=cmd_sample)

    pd = sub.add_parser("demo", help="the whole job on the embedded sample clip, no user file needed")
    pd.add_argument("-o", "--output", type=Path, default=Path("nerf_talk_demo"))
    pd.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    # mediapipe's native (glog/TFLite) chatter would bury our progress bars.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e.problem}", file=sys.stderr)
        if e.hint:
            print(f"  -> {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished steps are kept, run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `nerf-talk` command line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from nerf_talk.errors import Interrupted, UserError



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
    from nerf_talk.api import preprocess

    ds = preprocess(args.video, args.output, _preprocess_config(args))
    print(f"dataset: {ds.root}  ({ds.n_frames} frames at {ds.fps:g} fps)")
    print(f"report:  {ds.path('report/index.html')}")


def cmd_train(args) -> None:
    from nerf_talk.recipes import resolve_recipe
    from nerf_talk.train import train

    recipe = None if args.resume and args.recipe is None else resolve_recipe(args.recipe)
    out = train(args.dataset, args.output, recipe, overrides=args.set, resume=args.resume)
    if not (out / "avatar.json").exists():  # stopped at the recipe's stop_at_step
        print(f"stopped before the end; continue with: nerf-talk train {args.dataset} -o {out} --resume")
        return
    print(f"avatar: {out}")


def cmd_sample(args) -> None:
    from nerf_talk.sample_clip import make_sample_clip

    clip = make_sample_clip(args.output, seconds=args.seconds, seed=args.seed)
    print(f"video: {clip.video}\ntruth: {clip.truth}")


def cmd_fit(args) -> None:
    from nerf_talk.api import fit

    out = Path(args.output)
    if out.suffix != ".avatar":
        raise UserError(f"the output must be NAME.avatar, got {out}", f"e.g. -o {out.with_suffix('.avatar').name}")
    t0 = time.perf_counter()
    if (args.video is None) == (args.dataset is None):
        raise UserError("give a VIDEO, or --dataset DIR of one already preprocessed (one of them)")
    fit(args.video, out, args.recipe, args.set, audio=args.audio, dataset=args.dataset,
        preprocess_config=_preprocess_config(args))
    print(f"avatar: {out}  ({out.stat().st_size / 2**20:.1f} MB, {time.perf_counter() - t0:.0f} s)")
    print(f"work:   {out.with_name(out.name + '.work')} (dataset, training runs; delete it once you are happy)")


def cmd_render(args) -> None:
    from nerf_talk.api import Avatar, check_render_size, load_speech, pose_from, render_video
    from nerf_talk.media import check_output_file

    if (args.audio is None) == (args.text is None):
        raise UserError("give the speech with --audio FILE or --text \"...\" (one of them)")
    check_output_file(args.output)
    check_render_size(args.size)
    t0 = time.perf_counter()
    avatar = Avatar.load(args.avatar)
    audio, rate = load_speech(args.audio, args.text, args.voice)
    pose = "still" if args.still else "generate"
    if args.pose_from:
        pose = pose_from(args.pose_from, avatar, f"{args.output}.pose")
    h, w = avatar.size
    print(f"avatar {args.avatar}: {w}x{h} at {avatar.fps:g} fps on {avatar.device}; speech {len(audio) / rate:.1f} s")
    res = render_video(avatar, audio, args.output, sample_rate=rate, pose=pose, blinks=not args.no_blinks,
                       seed=args.seed, size=args.size)
    print(f"video: {res.path}  ({res.frames} frames, {res.duration:.2f} s of speech)")
    print(f"rendered at {res.fps_rendered:.1f} frames per second ({res.seconds:.1f} s; "
          f"{time.perf_counter() - t0:.1f} s in all)")


def cmd_export(args) -> None:
    from nerf_talk.avatar import export_avatar
    from nerf_talk.media import check_output_file

    check_output_file(args.output)  # before the adapter is fitted
    export_avatar(args.train_dir, args.output, args.dataset)
    print(f"avatar: {args.output}  ({Path(args.output).stat().st_size / 2**20:.1f} MB)")


def cmd_eval(args) -> None:
    from nerf_talk.eval import evaluate_avatar, summary

    out = args.output or Path(f"{args.avatar}.eval")
    res = evaluate_avatar(args.avatar, args.dataset, out, audio=args.audio, size=args.size, seed=args.seed,
                          video=not args.no_video)
    print(summary(res))
    print(f"figures: {out / 'eval.json'}  (plots and side-by-side video in {out}; definitions: docs/EVALUATION.md)")


def cmd_train_motion(args) -> None:
    from nerf_talk.motion import train_motion
    from nerf_talk.recipes import resolve_recipe

    out = train_motion(args.corpus, args.output, resolve_recipe(args.recipe or "audio2motion"), args.set)
    print(f"motion model: {out}")


def cmd_serve(args) -> None:
    from nerf_talk.motion.stream import StreamConfig
    from nerf_talk.serve import ServeConfig, run

    files = [Path(p) for p in args.avatars]
    for f in files:
        if f.suffix != ".avatar" or not f.is_file():
            raise UserError(f"not an avatar file: {f}", "give NAME.avatar files written by `nerf-talk fit`")
    if args.avatar_dir is None and not files and args.data is None:
        raise UserError("nothing to serve", "give NAME.avatar files, --avatar-dir DIR holding some, or --data DIR "
                        "(the studio's data folder)")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port", "give a port from 1 to 65535 (default 8765)")
    if not args.idle_timeout > 0:
        raise UserError(f"--idle-timeout {args.idle_timeout:g} must be > 0", "seconds without audio (default 30)")
    if args.max_upload_mb is not None and not args.max_upload_mb > 0:
        raise UserError(f"--max-upload-mb {args.max_upload_mb:g} must be > 0", "megabytes per uploaded file")
    root = (args.avatar_dir or files[0].parent).resolve() if args.avatar_dir or files else None
    # Only one directory's avatars can be named by clients: the given files must lie in it.
    for f in files:
        if f.resolve().parent != root:
            raise UserError(f"{f} is not in the avatar directory {root}",
                            "put the avatars in one directory (or give it with --avatar-dir)")
    import torch

    try:  # this machine's live defaults, where no option is given
        stream = StreamConfig.for_hardware(
            hop_frames=args.hop_frames, context_s=args.context_ms / 1000,
            lookahead_s=None if args.lookahead_ms is None else args.lookahead_ms / 1000)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    run(ServeConfig(avatar_dir=root, preload=[f.stem for f in files], host=args.host, port=args.port,
                    size=args.size, max_stream_s=args.max_stream_s, idle_timeout_s=args.idle_timeout,
                    allow_origins=args.allow_origin or [], stream=stream, data_dir=args.data,
                    **({"max_upload_bytes": int(args.max_upload_mb * 2**20)} if args.max_upload_mb else {})))


def cmd_demo(args) -> None:
    """The main job end to end on the embedded sample clip: clip, preprocess, fit (CPU recipe), render, report."""
    from nerf_talk.api import Avatar, fit, preprocess, render_video
    from nerf_talk.demo import DEMO_SENTENCE, demo_report
    from nerf_talk.sample_clip import make_sample_clip

    out = Path(args.output)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(k: int, text: str) -> float:
        print(f"[demo {k}/5] {text}  ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        return time.perf_counter()

    t = stage(1, f"making the embedded sample clip in {out / 'sample'} (a talking portrait, no download)")
    clip = make_sample_clip(out / "sample", seconds=args.seconds)
    timings["sample clip"] = time.perf_counter() - t
    t = stage(2, f"preprocessing it into {out / 'dataset'} (landmarks, pose, masks, audio features)")
    ds = preprocess(clip.video, out / "dataset")
    timings["preprocess"] = time.perf_counter() - t
    t = stage(3, "fitting the avatar with the small CPU recipe (recipes/smoke_cpu.toml; a GPU runs the full one)")
    avatar_path = fit(None, out / "sample.avatar", "smoke_cpu", dataset=ds.root, say=lambda m: print("  " + m))
    timings["fit"] = time.perf_counter() - t
    t = stage(4, f"rendering a new sentence spoken by espeak-ng: \"{DEMO_SENTENCE}\"")
    avatar = Avatar.load(avatar_path)
    res = render_video(avatar, None, out / "demo.mp4", text=DEMO_SENTENCE)
    timings["render"] = time.perf_counter() - t
    t = stage(5, "writing the report")
    report = demo_report(out, ds, avatar, res, timings)
    total = time.perf_counter() - t0
    print(f"done in {total:.0f} s")
    print(f"  sample clip: {clip.video}")
    print(f"  dataset:     {ds.root} ({ds.n_frames} frames; its report: {ds.path('report/index.html')})")
    print(f"  avatar:      {avatar_path}")
    print(f"  video:       {res.path} ({res.frames} frames, rendered at {res.fps_rendered:.1f} frames per second)")
    print(f"  report:      {report}")


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    """The preprocessing settings, shared by `preprocess` and `fit` (read back by _preprocess_config)."""
    p.add_argument("--audio", type=Path, help="separate speech file, for a video without (usable) sound")
    p.add_argument("--audio-offset", type=float, help="seconds the audio lags the lips (default: measured)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--size", type=int, default=512, help="side of the square crop in pixels (default 512)")
    p.add_argument("--val-fraction", type=float, default=1 / 11, help="held-out last fraction (default 1/11)")
    p.add_argument("--force", action="append", metavar="STEP",
                   help="redo a preprocessing STEP (and what depends on it)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nerf-talk", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("preprocess", help="turn a talking-head video into a training dataset")
    pp.add_argument("video", type=Path, help="mp4/mov/mkv/webm, H.264 or HEVC, any frame rate, 256 px to 4K")
    pp.add_argument("-o", "--output", type=Path, required=True, help="dataset directory (new, or one to resume)")
    add_preprocess_args(pp)
    pp.set_defaults(func=cmd_preprocess)

    pt = sub.add_parser("train", help="train an avatar's head and torso fields from a dataset")
    pt.add_argument("dataset", type=Path, help="a directory written by `nerf-talk preprocess`")
    pt.add_argument("-o", "--output", type=Path, required=True, help="avatar/training directory")
    pt.add_argument("--recipe", help="recipes/NAME.toml or NAME (default: head on a GPU, cpu otherwise)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. data.scale=0.5")
    pt.add_argument("--resume", action="store_true", help="continue the run in OUTPUT exactly where it stopped")
    pt.set_defaults(func=cmd_train)

    ps = sub.add_parser("sample", help="write the embedded sample talking-head clip and its ground truth")
    ps.add_argument("-o", "--output", type=Path, required=True)
    ps.add_argument("--seconds", type=float, default=12.0)
    ps.add_argument("--seed", type=int, default=0)
    ps.set_defaults(func=cmd_sample)

    pf = sub.add_parser("fit", help="video -> one avatar file (preprocess, train head and torso, personal adapter)")
    pf.add_argument("video", type=Path, nargs="?", help="a talking-head video, 1-5 min (anything `preprocess` takes)")
    pf.add_argument("--dataset", type=Path, help="fit an already preprocessed dataset instead of a video")
    pf.add_argument("-o", "--output", type=Path, required=True, help="NAME.avatar (work files go to NAME.avatar.work/)")
    pf.add_argument("--recipe", help="training recipe (default: head + torso on a GPU, cpu otherwise)")
    pf.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    add_preprocess_args(pf)
    pf.set_defaults(func=cmd_fit)

    pr = sub.add_parser("render", help="an avatar saying new speech -> mp4 (H.264 + AAC)")
    pr.add_argument("avatar", type=Path, help="NAME.avatar from `nerf-talk fit` or `export`")
    pr.add_argument("--audio", type=Path, help="speech file: wav/mp3/m4a/flac..., any rate, mono or stereo")
    pr.add_argument("--text", help="words to speak through espeak-ng instead of an audio file")
    pr.add_argument("--voice", default="en-us", help="espeak-ng voice for --text (default en-us)")
    pr.add_argument("-o", "--output", type=Path, required=True, help="output .mp4")
    pr.add_argument("--pose-from", help="take the head motion from this video (or dataset directory)")
    pr.add_argument("--still", action="store_true", help="hold the head still (default: generated head motion)")
    pr.add_argument("--no-blinks", action="store_true", help="do not generate blinks")
    pr.add_argument("--seed", type=int, default=0, help="seed of the generated head motion and blinks")
    pr.add_argument("--size", type=int, help="render at this height (default: the avatar's trained size)")
    pr.set_defaults(func=cmd_render)

    pe = sub.add_parser("export", help="write the avatar file of a finished training directory")
    pe.add_argument("train_dir", type=Path, help="a directory written by `nerf-talk train`")
    pe.add_argument("-o", "--output", type=Path, required=True, help="NAME.avatar")
    pe.add_argument("--dataset", type=Path, help="its dataset (default: the one the training recorded)")
    pe.set_defaults(func=cmd_export)

    pv = sub.add_parser("eval", help="score an avatar on its held-out frames and, with --audio, saying other speech")
    pv.add_argument("avatar", type=Path, help="NAME.avatar")
    pv.add_argument("dataset", type=Path, help="the dataset it was fitted on (NAME.avatar.work/dataset after `fit`)")
    pv.add_argument("--audio", type=Path, help="other speech for the lip-sync figures (wav/mp3/m4a/flac, 2 s or more)")
    pv.add_argument("-o", "--output", type=Path, help="output folder (default: AVATAR.eval/ beside the avatar)")
    pv.add_argument("--size", type=int, help="render and compare at this height (default: the avatar's trained size)")
    pv.add_argument("--seed", type=int, default=0, help="seed of the generated head motion and blinks for --audio")
    pv.add_argument("--no-video", action="store_true", help="do not write side_by_side.mp4")
    pv.set_defaults(func=cmd_eval)

    pm = sub.add_parser("train-motion", help="train the generic audio-to-motion model on a corpus of datasets")
    pm.add_argument("corpus", type=Path, help="directory of preprocessed datasets (and synthetic shards)")
    pm.add_argument("-o", "--output", type=Path, required=True)
    pm.add_argument("--recipe", help="default recipes/audio2motion.toml")
    pm.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    pm.set_defaults(func=cmd_train_motion)

    pv = sub.add_parser("serve", help="a local web page where avatars speak live (a speech file or the microphone)")
    pv.add_argument("avatars", type=Path, nargs="*", help="NAME.avatar files, loaded at start (the other .avatar "
                    "files of their directory are offered too)")
    pv.add_argument("--avatar-dir", type=Path, help="the directory whose NAME.avatar files clients may use "
                    "(default: that of the given files); nothing outside it can be named")
    pv.add_argument("--data", type=Path, metavar="DIR",
                    help="the studio's data folder (created if missing): upload videos, preprocess, fit, render and "
                    "evaluate from the page at /studio; uploads, jobs and outputs stay in DIR (its avatars/ is the "
                    "avatar directory unless --avatar-dir is given)")
    pv.add_argument("--max-upload-mb", type=float, help="largest studio upload in MB (default 2048)")
    pv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    pv.add_argument("--port", type=int, default=8765, help="default 8765")
    pv.add_argument("--size", type=int, help="render height (default: each avatar's trained size)")
    pv.add_argument("--hop-frames", type=int,
                    help="40 ms frames per feature block (default: 1 on a GPU, 4 on a CPU; see docs/LIVE.md)")
    pv.add_argument("--lookahead-ms", type=float,
                    help="audio the recogniser hears past a block (default: 0 ms on a GPU, 40 ms on a CPU)")
    pv.add_argument("--context-ms", type=float, default=600.0, help="audio the recogniser hears before a block")
    pv.add_argument("--max-stream-s", type=float, default=600.0, help="longest stream in seconds (default 600)")
    pv.add_argument("--idle-timeout", type=float, default=30.0,
                    help="end a stream and close its connection after this many seconds without audio (default 30)")
    pv.add_argument("--allow-origin", action="append", metavar="SCHEME://HOST[:PORT]",
                    help="also accept WebSocket connections from pages of this origin (and requests for its host), "
                    "e.g. behind an HTTPS proxy; repeatable. Default: only the server's own page")
    pv.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    pv.set_defaults(func=cmd_serve)

    pd = sub.add_parser("demo", help="the whole job on the embedded sample clip, no user file needed")
    pd.add_argument("-o", "--output", type=Path, default=Path("nerf_talk_demo"))
    pd.add_argument("--seconds", type=float, default=12.0, help="length of the sample clip (default 12)")
    pd.set_defaults(func=cmd_demo)
    return p


# What an interrupted command keeps, and how to go on.
ON_INTERRUPT = {
    "train": "add --resume to the same command to continue from the checkpoint",
    "preprocess": "finished steps are kept; run the same command again to resume",
    "fit": "finished stages and the last training checkpoint are kept; run the same command again to resume",
    "demo": "finished stages are kept; run the same command again to resume",
}
# Environment errors that need no traceback: what to do about each.
OS_ERROR_HINTS = {
    errno.ENOSPC: "free some disk space (or write to another disk) and run the same command again",
    errno.EDQUOT: "free some space in your quota and run the same command again",
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "the disk is read-only: choose another output folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "the path is a folder: give a file name",
}


def _terminated(signum, frame):
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    # mediapipe's native (glog/TFLite) chatter would bury our progress bars.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM (timeout, docker, systemd) unwinds like Ctrl-C, so temporary files are removed and training saves.
    old_term = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e.problem}", file=sys.stderr)
        if e.hint:
            print(f"  -> {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        kept = e.kept if isinstance(e, Interrupted) and e.kept else ""
        hint = ON_INTERRUPT.get(args.command, "no output was written (no partial file is left)")
        if args.command == "train" and not kept:
            hint = "no checkpoint was written by this run; run the same command again"
        print(kept or what, file=sys.stderr)
        print(f"  -> {hint}", file=sys.stderr)
        return 128 + signum
    except OSError as e:
        if e.errno not in OS_ERROR_HINTS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {os.strerror(e.errno)}{where}", file=sys.stderr)
        print(f"  -> {OS_ERROR_HINTS[e.errno]}", file=sys.stderr)
        return 2
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


if __name__ == "__main__":
    sys.exit(main())

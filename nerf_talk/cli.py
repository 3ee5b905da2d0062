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


def _pose_source(path: Path, avatar, out: Path):
    """Camera-to-head poses of another recording, moved onto the avatar: a dataset directory's poses.npy, or a video
    preprocessed (at the avatar's frame rate) into a directory beside the output."""
    from nerf_talk.render.video import retarget_poses
    from preprocess.dataset import Dataset

    ds = Dataset(path)
    if not (path.is_dir() and ds.exists()):
        from preprocess import pipeline
        from preprocess.config import PreprocessConfig

        print(f"preprocessing {path} for its head motion (cached in {out}.pose/)")
        ds = pipeline.run(path, Path(f"{out}.pose"), PreprocessConfig(fps=avatar.fps))
    if abs(ds.fps - avatar.fps) > 1e-6:
        raise UserError(f"{path} is at {ds.fps:g} fps, the avatar at {avatar.fps:g}",
                        "preprocess it with --fps equal to the avatar's frame rate.")
    return retarget_poses(ds.load_array("poses"), avatar.parts.tensors["pose_track"].numpy())


def cmd_render(args) -> None:
    from nerf_talk.api import Avatar, load_speech, render_video

    if (args.audio is None) == (args.text is None):
        raise UserError("give the speech with --audio FILE or --text \"...\" (one of them)")
    t0 = time.perf_counter()
    avatar = Avatar.load(args.avatar)
    audio, rate = load_speech(args.audio, args.text, args.voice)
    pose = "still" if args.still else "generate"
    if args.pose_from:
        pose = _pose_source(Path(args.pose_from), avatar, Path(args.output))
    h, w = avatar.size
    print(f"avatar {args.avatar}: {w}x{h} at {avatar.fps:g} fps on {avatar.device}; speech {len(audio) / rate:.1f} s")
    res = render_video(avatar, audio, args.output, sample_rate=rate, pose=pose, blinks=not args.no_blinks,
                       seed=args.seed, size=args.size)
    print(f"video: {res.path}  ({res.frames} frames, {res.duration:.2f} s of speech)")
    print(f"rendered at {res.fps_rendered:.1f} frames per second ({res.seconds:.1f} s; "
          f"{time.perf_counter() - t0:.1f} s in all)")


def cmd_export(args) -> None:
    from nerf_talk.avatar import export_avatar

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

    out = train_motion(args.corpus, args.output, resolve_recipe(args.recipe or "audio2motion"), args.set)
    print(f"motion model: {out}")


def cmd_serve(args) -> None:
    from nerf_talk.motion.stream import StreamConfig
    from nerf_talk.serve import ServeConfig, run

    files = [Path(p) for p in args.avatars]
    for f in files:
        if f.suffix != ".avatar" or not f.is_file():
            raise UserError(f"not an avatar file: {f}", "give NAME.avatar files written by `nerf-talk fit`")
    if args.avatar_dir is None and not files:
        raise UserError("nothing to serve", "give NAME.avatar files, or --avatar-dir DIR holding some")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port", "give a port from 1 to 65535 (default 8765)")
    if not args.idle_timeout > 0:
        raise UserError(f"--idle-timeout {args.idle_timeout:g} must be > 0", "seconds without audio (default 30)")
    root = (args.avatar_dir or files[0].parent).resolve()
    # Only one directory's avatars can be named by clients: the given files must lie in it.
    for f in files:
        if f.resolve().parent != root:
            raise UserError(f"{f} is not in the avatar directory {root}",
                            "put the avatars in one directory (or give it with --avatar-dir)")
    import torch

    # A GPU runs the recogniser once per 40 ms frame with room to spare: the shortest delay the model allows
    # (181 ms). A CPU cannot afford four times the recogniser's work, so it blocks 4 frames (326 ms).
    gpu = torch.cuda.is_available()
    hop = args.hop_frames if args.hop_frames is not None else (1 if gpu else 4)
    ahead_ms = args.lookahead_ms if args.lookahead_ms is not None else (0.0 if gpu else 40.0)
    try:
        stream = StreamConfig(hop_frames=hop, lookahead_s=ahead_ms / 1000,
                              context_s=args.context_ms / 1000)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    run(ServeConfig(avatar_dir=root, preload=[f.stem for f in files], host=args.host, port=args.port,
                    size=args.size, max_stream_s=args.max_stream_s, idle_timeout_s=args.idle_timeout,
                    allow_origins=args.allow_origin or [], stream=stream))


DEMO_SENTENCE = ("Hello! I am a talking portrait made from a short video. "
                 "Give me any speech, and I will say it with my own face.")


def cmd_demo(args) -> None:
    """The main job end to end on the embedded sample clip: clip, preprocess, fit (CPU recipe), render, report."""
    from nerf_talk.api import Avatar, fit, render_video
    from nerf_talk.sample_clip import make_sample_clip
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

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
    ds = pipeline.run(clip.video, out / "dataset", PreprocessConfig())
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


def demo_report(out: Path, ds, avatar, res, timings: dict[str, float]) -> Path:
    """One HTML page: rendered frames beside training frames, the timings, the figures, a link to the video."""
    import html

    import cv2
    import numpy as np

    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    h, w = avatar.size
    import av as pyav

    with pyav.open(str(res.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    rows = []
    picks = np.linspace(0, len(frames) - 1, 5)[1:4].round().astype(int)  # three frames inside the sentence
    reals = np.linspace(0, ds.n_frames - 1, 5)[1:4].round().astype(int)
    for k, (i, j) in enumerate(zip(picks, reals)):
        real = cv2.resize(ds.read_frame(int(j)), (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(rep / f"rendered_{k}.png"), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(rep / f"training_{k}.png"), cv2.cvtColor(real, cv2.COLOR_RGB2BGR))
        rows.append(f"<tr><td><img src='training_{k}.png' width=256><br>training frame {j} (at the avatar's size)</td>"
                    f"<td><img src='rendered_{k}.png' width=256><br>rendered frame {i} (new speech)</td></tr>")
    fig = avatar.parts.meta.get("figures", {})
    t_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>" for k, v in timings.items())
    page = f"""<!doctype html><meta charset=utf-8><title>nerf_talk demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td{{padding:4px 12px;vertical-align:top}}
img{{image-rendering:pixelated}}</style>
<h1>nerf_talk demo</h1>
<p>The embedded sample clip was preprocessed, fitted with the small CPU recipe (<code>smoke_cpu</code>, frames at
{w}x{h}) and rendered saying a sentence it never said: <a href="../{html.escape(res.path.name)}">{html.escape(res.path.name)}</a>
({res.frames} frames at {avatar.fps:g} fps, rendered at {res.fps_rendered:.1f} frames per second).
The CPU recipe is a quick check of the whole path, not a photoreal avatar: that needs the full recipe on a GPU.</p>
<h2>Training frames and rendered frames</h2><table>{"".join(rows)}</table>
<h2>Timings</h2><table>{t_rows}<tr><td><b>total</b></td><td><b>{sum(timings.values()):.0f} s</b></td></tr></table>
<h2>Figures</h2><table>
<tr><td>validation PSNR (held-out frames)</td><td>{fig.get("psnr", float("nan")):.2f} dB</td></tr>
<tr><td>mean training image PSNR (the baseline)</td><td>{fig.get("mean_image_psnr", float("nan")):.2f} dB</td></tr>
<tr><td>training steps</td><td>{avatar.parts.meta.get("steps")}</td></tr>
<tr><td>personal adapter gain</td><td>{avatar.parts.meta["adapter"].get("info", {}).get("gain")}</td></tr>
</table>
<p>Preprocessing report: <a href="../dataset/report/index.html">dataset/report/index.html</a></p>
"""
    (rep / "index.html").write_text(page)
    return rep / "index.html"


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
    pt.add_argument("--recipe", help="recipes/NAME.toml or NAME (default: head on a GPU, smoke_cpu otherwise)")
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
    pf.add_argument("--recipe", help="training recipe (default: head + torso on a GPU, smoke_cpu otherwise)")
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

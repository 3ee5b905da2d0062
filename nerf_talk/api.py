"""The Python API, mirroring the command line, for programs that embed an avatar.

    from nerf_talk.api import Avatar, render_video
    avatar = Avatar.load("alice.avatar")                       # verified: version, shapes, checksum
    for frame in avatar.render_frames(audio, sample_rate):     # uint8 [H, W, 3] frames at avatar.fps, one by one
        ...
    render_video(avatar, "speech.m4a", "out.mp4")              # H.264 + AAC, audio in sync
    render_video(avatar, "speech.m4a", "out.mp4", pose=pose_from("other.mp4", avatar, "other.pose"))  # --pose-from
    fit("me.mp4", "me.avatar")                                 # what `nerf-talk fit` does

Live: nerf_talk.live.LiveStream(avatar, rate) (one stream) or nerf_talk.serve.run(ServeConfig(...)) (the server,
with StreamConfig.for_hardware()'s defaults as `nerf-talk serve`); the demo's report: nerf_talk.demo.demo_report.

`audio` is any float or integer array, [S] mono or [S, C] / [C, S] multi-channel, at any rate from 4 to 192 kHz.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from nerf_talk import avatar as av
from nerf_talk.errors import UserError
from nerf_talk.motion.drive import Drive, Person, motion_coefficients
from nerf_talk.recipes import fit_phases
from nerf_talk.render.cameras import Intrinsics
from nerf_talk.render.video import FrameRenderer

log = logging.getLogger("nerf_talk")
OUTPUT_AUDIO_RATE = 44100  # the mp4's audio track: speech read at this rate keeps its high band


RENDER_HEIGHTS = (32, 2048)  # what --size accepts; below 32 px no face is left, above 2K is beyond any trained avatar


def check_render_size(size: int | None) -> None:
    """Refuse a render height (--size) outside RENDER_HEIGHTS or odd (H.264's 4:2:0 colour needs even sides: an odd
    height would be cut by a row without a word)."""
    lo, hi = RENDER_HEIGHTS
    if size is not None and not (lo <= size <= hi and size % 2 == 0):
        raise UserError(f"--size {size}: the render height must be an even number of pixels from {lo} to {hi}",
                        "leave --size out to render at the avatar's trained size.")


class Avatar:
    """A loaded avatar: its modules on one device, the personal adapter and the embedded generic motion model."""

    def __init__(self, parts: av.AvatarParts, device: str | torch.device | None = None) -> None:
        self.parts = parts
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = av.build_model(parts, self.device)
        self.adapter = av.adapter_from_parts(parts)
        self._motion_model = None
        self.person = Person.from_avatar(parts)  # what the drive needs of them: pose track, blinks, eyes
        self.intrinsics = Intrinsics.from_dict(parts.meta["intrinsics"])

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "Avatar":
        return cls(av.load_avatar(path), device)

    @property
    def fps(self) -> float:
        return self.parts.fps

    @property
    def size(self) -> tuple[int, int]:
        return self.parts.size

    @property
    def motion_model(self):
        if self._motion_model is None:
            self._motion_model = av.load_motion_model(self.parts)
        return self._motion_model

    def drive(self, audio: np.ndarray, sample_rate: int, pose: str | np.ndarray = "generate", blinks: bool = True,
              seed: int = 0) -> Drive:
        """Per-frame pose, motion and eyes for `audio` (motion.drive.Person.drive). pose: "generate" (from the
        person's own track), "still", or camera-to-head poses [M, 4, 4] replayed to length (see pose_from)."""
        from nerf_talk.motion import predict_motion

        pred = predict_motion(self.motion_model, audio, sample_rate, self.fps, self.adapter)
        return self.person.drive(pred["lower_face_motion"], pred["speech"], pose, blinks, seed)

    def renderer(self, size: tuple[int, int] | int | None = None) -> FrameRenderer:
        if isinstance(size, int):
            check_render_size(size)
            h, w = self.size
            size = (size, round(size * w / h))
        if not self.parts.meta.get("torso_trained", True):
            log.warning("this avatar's torso was not trained: rendering the head over the background only")
        return FrameRenderer(self.model, self.intrinsics, size, torso=self.parts.meta.get("torso_trained", True),
                             device=self.device)

    def render_drive(self, drive: Drive, size: tuple[int, int] | int | None = None) -> Iterator[np.ndarray]:
        """Frames (uint8 [H, W, 3]) of a drive, one at a time (a generator: nothing is kept)."""
        r = self.renderer(size)
        coeffs = motion_coefficients(self.model, drive.motion)
        for i in range(len(drive)):
            yield r.render(drive.poses[i], coeffs[i], drive.eyes[i])

    def render_frames(self, audio: np.ndarray, sample_rate: int, pose: str | np.ndarray = "generate",
                      blinks: bool = True, seed: int = 0, size=None) -> Iterator[np.ndarray]:
        """This person saying `audio`: uint8 [H, W, 3] frames at self.fps, ceil(duration * fps) of them."""
        return self.render_drive(self.drive(audio, sample_rate, pose, blinks, seed), size)


@dataclass
class RenderResult:
    path: Path
    frames: int
    seconds: float  # rendering and encoding wall time
    fps_rendered: float  # frames per second of the whole loop (motion prediction excluded)
    duration: float  # seconds of video


def load_speech(audio: str | os.PathLike | None = None, text: str | None = None, voice: str = "en-us"
                ) -> tuple[np.ndarray, int]:
    """(audio [S] float32 mono, rate) from a speech file (wav/mp3/m4a/flac/any container ffmpeg reads; any rate and
    channel count) or from text spoken by espeak-ng."""
    from nerf_talk import media

    if (audio is None) == (text is None):
        raise UserError("give exactly one of an audio file and a text", "use --audio SPEECH or --text \"...\"")
    if text is not None:
        from nerf_talk.speech import synthesize

        s = synthesize(text, voice=voice)
        return s.audio.astype(np.float32), int(s.sample_rate)
    path = Path(audio)
    if not path.exists():
        raise UserError(f"audio file not found: {path}")
    return media.read_audio(path, OUTPUT_AUDIO_RATE), OUTPUT_AUDIO_RATE


def render_video(avatar: Avatar | str | os.PathLike, audio, out: str | os.PathLike, sample_rate: int | None = None,
                 text: str | None = None, pose: str | np.ndarray = "generate", blinks: bool = True, seed: int = 0,
                 size=None, progress: bool = True) -> RenderResult:
    """Writes `out` (mp4, H.264 + AAC at the avatar's frame rate): the avatar saying `audio` (a path, or an array
    with `sample_rate`) or `text`. The video has ceil(duration * fps) frames; the audio starts with frame 0."""
    from tqdm import tqdm

    from nerf_talk import media
    from nerf_talk.motion.predict import to_mono16k

    media.check_output_file(Path(out))  # before the work, not after a whole render
    if isinstance(size, int):
        check_render_size(size)
    if not isinstance(avatar, Avatar):
        avatar = Avatar.load(avatar)
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise UserError("an audio array needs its sample_rate")
        # Mono at the given rate (to_mono16k with its own rate only averages channels and scales integer PCM): the
        # mp4 keeps the speech's full band; predict_motion resamples for the motion model itself.
        wave, rate = to_mono16k(audio, 16000), int(sample_rate)
    else:
        wave, rate = load_speech(audio, text)
    drive = avatar.drive(wave, rate, pose, blinks, seed)
    n = len(drive)
    t0 = time.perf_counter()
    frames = avatar.render_drive(drive, size)
    if progress:
        frames = tqdm(frames, total=n, desc="render", unit="frame", dynamic_ncols=True, mininterval=1.0)
    written = media.write_video(out, frames, avatar.fps, audio=wave, audio_rate=rate)
    secs = time.perf_counter() - t0
    return RenderResult(Path(out), written, secs, written / max(secs, 1e-9), len(wave) / rate)


# The lip model preprocessing asks for a clip's sound/lip offset (PreprocessConfig.offset_model): the shipped generic
# motion model (what it changed on the validation speakers: docs/MOTION_MODEL.md).
OFFSET_MODEL = "nerf_talk.motion.lead:offset_by_default_model"


def preprocess(video: str | os.PathLike, out: str | os.PathLike, cfg=None):
    """What `nerf-talk preprocess` does: VIDEO -> the dataset folder OUT (preprocess.pipeline.run, resumable), with
    the generic motion model measuring the sound/lip offset the clip's own lips leave (short clips). Every front end
    preprocesses through here. cfg: a PreprocessConfig (default settings when None); its offset_model is set to
    OFFSET_MODEL unless it names another. Returns the preprocess.dataset.Dataset."""
    from dataclasses import replace

    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    cfg = cfg or PreprocessConfig()
    return pipeline.run(video, out, replace(cfg, offset_model=cfg.offset_model or OFFSET_MODEL))


def pose_from(source: str | os.PathLike, avatar: Avatar, cache_dir: str | os.PathLike, say=print) -> np.ndarray:
    """Camera-to-head poses [M, 4, 4] of another recording, moved onto the avatar (`--pose-from`; pass them as
    render_video's `pose`): a dataset directory's poses, or a video preprocessed at the avatar's frame rate into
    `cache_dir` (reused by a later call)."""
    from nerf_talk.motion.generate import retarget_poses
    from preprocess.dataset import Dataset

    path = Path(source)
    ds = Dataset(path)
    if not (path.is_dir() and ds.exists()):
        from preprocess.config import PreprocessConfig

        say(f"preprocessing {path} for its head motion (cached in {cache_dir}/)")
        ds = preprocess(path, Path(cache_dir), PreprocessConfig(fps=avatar.fps))
    if abs(ds.fps - avatar.fps) > 1e-6:
        raise UserError(f"{path} is at {ds.fps:g} fps, the avatar at {avatar.fps:g}",
                        "preprocess it with --fps equal to the avatar's frame rate.")
    return retarget_poses(ds.load_array("poses"), avatar.person.pose_track)


def require_gpu_kernels(phases: list[tuple[str, Path]], overrides: list[str] | None = None) -> None:
    """Refuses to train on a GPU through the pure-PyTorch reference kernels by accident (many times slower): when a
    phase would train on CUDA with backend "auto" and our CUDA kernels cannot be built, raises UserError with the
    build error and the way out. A recipe or --set that names the backend (backend=torch) is obeyed as asked."""
    if not torch.cuda.is_available():
        return
    import cuda_ext
    from nerf_talk.config import load_config

    for name, path in phases:
        cfg = load_config(path, overrides)
        if cfg.device == "cpu" or cfg.backend != "auto":
            continue
        error = cuda_ext.build_error("cuda")
        if error is not None:
            raise UserError(f"training '{name}' would run on the GPU through the slow torch reference, because the "
                            f"CUDA kernels cannot be built: {error}",
                            "fix that (docs/cuda_ext.md, Build), or pass --set backend=torch to train on the "
                            "reference anyway.")


def fit(video: str | os.PathLike | None, out: str | os.PathLike, recipe: str | os.PathLike | None = None,
        overrides: list[str] | None = None, audio: str | os.PathLike | None = None, motion_model=None,
        dataset: str | os.PathLike | None = None, preprocess_config=None, say=print) -> Path:
    """What `nerf-talk fit` does: preprocess VIDEO into OUT.work/dataset (or use `dataset`, an existing one), train
    into OUT.work/<phase>, fit the personal adapter and write the avatar file OUT atomically.

    Every stage resumes: preprocessing skips finished steps, a training run continues from its last checkpoint, a
    finished run is not repeated. Returns OUT."""
    from nerf_talk.train import train
    from nerf_talk.train import checkpoint as ck

    out = Path(out)
    from nerf_talk.media import check_output_file

    check_output_file(out)
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    phases = fit_phases(recipe)
    require_gpu_kernels(phases, overrides)
    if dataset is None:
        from preprocess.config import PreprocessConfig

        if video is None:
            raise UserError("fit needs a video (or an existing dataset)")
        cfg = preprocess_config or PreprocessConfig(audio=str(audio) if audio else None)
        say(f"[fit] preprocessing {video} into {work / 'dataset'}")
        dataset = preprocess(video, work / "dataset", cfg).root
    prev = None
    for name, path in phases:
        run_dir = work / name
        if (run_dir / "avatar.json").exists():
            say(f"[fit] training '{name}' already finished in {run_dir}")
        else:
            extra = list(overrides or [])
            if prev is not None:  # the torso run starts from the finished head run's weights
                extra.append(f"init_from={json.dumps(str(prev.resolve()))}")
            if ck.find_checkpoint(run_dir / "checkpoints") is not None:
                say(f"[fit] resuming training '{name}' in {run_dir}")
                train(dataset, run_dir, None, extra, resume=True)
            else:
                say(f"[fit] training '{name}' ({path.name}) in {run_dir}")
                train(dataset, run_dir, path, extra)
            if not (run_dir / "avatar.json").exists():
                state = ck.load_state(ck.find_checkpoint(run_dir / "checkpoints"))
                raise UserError(f"training '{name}' stopped at step {state['step']} before its end",
                                "run the same command again to continue where it stopped.")
        prev = run_dir
    say(f"[fit] fitting the personal adapter and writing {out}")
    av.export_avatar(prev, out, dataset, motion_model)
    return out


__all__ = ["Avatar", "Drive", "RenderResult", "fit", "fit_phases", "load_speech", "pose_from", "render_video"]

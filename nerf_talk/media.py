"""Reading and writing video and audio with PyAV (its wheels carry their own FFmpeg: no system ffmpeg needed).

Everything that touches a media container goes through here, so that corrupt files, missing streams and rotation
metadata are handled once, with errors that say what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from nerf_talk.errors import UserError

AUDIO_RATE = 16000


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as the viewer sees it (width/height after rotation)."""

    path: Path
    width: int
    height: int
    rotation: int  # degrees, counter-clockwise, as stored in the display matrix
    duration: float  # seconds
    avg_fps: float
    codec: str
    has_audio: bool


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise UserError(f"file not found: {path}", "check the path (and the current directory).")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a media file", "give the path of a video or audio file.")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise UserError(
            f"cannot read {path}: {e}", "the file is corrupt or not a media file; re-export or re-download it."
        ) from e


def _rotation_of(stream) -> int:
    """The display rotation in degrees: phone videos store portrait frames as rotated landscape."""
    frame_rotation = 0
    side = getattr(stream, "side_data", None)
    if side is not None and hasattr(side, "get"):
        val = side.get("DISPLAYMATRIX") or side.get("display_matrix")
        if isinstance(val, (int, float)):
            frame_rotation = int(round(val))
    if not frame_rotation:
        try:
            frame_rotation = int(float(stream.metadata.get("rotate", 0)))
        except ValueError:
            frame_rotation = 0
    return frame_rotation


def probe_video(path: str | os.PathLike) -> VideoInfo:
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise UserError(f"{path} has no video stream", "give a video file (mp4/mov/mkv/webm).")
        s = c.streams.video[0]
        duration = None
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        if not duration and c.duration is not None:
            duration = c.duration / av.time_base
        # Decode the first frame: it proves the stream is readable and gives the true rotation.
        try:
            first = next(c.decode(s))
        except (StopIteration, av.error.FFmpegError) as e:
            raise UserError(
                f"cannot decode any frame of {path}", "the file is corrupt or truncated; re-export it."
            ) from e
        rotation = int(round(getattr(first, "rotation", 0) or 0)) or _rotation_of(s)
        w, h = first.width, first.height
        if rotation % 180:
            w, h = h, w
        fps = float(s.average_rate) if s.average_rate else 0.0
        return VideoInfo(
            path=path,
            width=w,
            height=h,
            rotation=rotation,
            duration=float(duration or 0.0),
            avg_fps=fps,
            codec=s.codec_context.name,
            has_audio=bool(c.streams.audio),
        )


def _upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Undo a display rotation (counter-clockwise degrees) so the person stands upright."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def iter_frames(
    path: str | os.PathLike, fps: float, max_side: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, RGB uint8 HxWx3) resampled to a constant `fps`, rotation applied.

    Variable-frame-rate input is handled by timestamps: output frame k shows the source frame that is on screen at
    k/fps after the first frame. Only emitted frames are converted to RGB, so a low `fps` scans a long clip quickly;
    `max_side` downscales (in FFmpeg) so that the longer side is at most that. A decode error mid-way raises a
    UserError naming the frame reached.
    """
    path = Path(path)
    rotation = probe_video(path).rotation
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        state = {"k": 0}

        def convert(frame):
            if max_side and max(frame.width, frame.height) > max_side:
                r = max_side / max(frame.width, frame.height)
                frame = frame.reformat(width=max(2, round(frame.width * r)), height=max(2, round(frame.height * r)))
            return _upright(frame.to_ndarray(format="rgb24"), rotation)

        def emit_until(t_end, frame, cache):
            while state["k"] / fps < t_end - 1e-6:
                if cache[0] is None:
                    cache[0] = convert(frame)
                yield state["k"], cache[0]
                state["k"] += 1

        t0 = None
        prev_t, prev_frame, cache = 0.0, None, [None]
        try:
            for frame in c.decode(s):
                if frame.time is None:
                    t = prev_t + 1.0 / fps if prev_frame is not None else 0.0
                else:
                    t0 = frame.time if t0 is None else t0
                    t = frame.time - t0
                if prev_frame is not None:
                    yield from emit_until(t, prev_frame, cache)
                prev_t, prev_frame, cache = t, frame, [None]
        except av.error.FFmpegError as e:
            raise UserError(
                f"decoding {path} failed after {state['k']} frames: {e}",
                "the file is corrupt or truncated; re-export it.",
            ) from e
        if prev_frame is not None:
            src_rate = float(s.average_rate) if s.average_rate else fps
            yield from emit_until(prev_t + 1.0 / src_rate, prev_frame, cache)


def read_audio(path: str | os.PathLike, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the first audio stream of any media file to float32 mono at `rate` Hz (any input rate or layout)."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            raise UserError(
                f"{path} has no audio track",
                "pass the speech as a separate file with --audio FILE (wav/mp3/m4a/flac).",
            )
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        try:
            for frame in c.decode(c.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise UserError(f"decoding the audio of {path} failed: {e}", "the file is corrupt; re-export it.") from e
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise UserError(f"the audio track of {path} is empty", "give a file that holds speech.")
    return audio


TEMP_MARK = ".nerf-tmp-"  # in every temporary file's name: .NAME.nerf-tmp-PID-RANDOM.SUFFIX
_TEMP_NAME = re.compile(re.escape(TEMP_MARK) + r"(\d+)-[0-9a-f]+(\.[^.]*)?$")
_swept: set[Path] = set()


def put_title(img: np.ndarray, text: str, y: int = 18, scale: float = 0.5) -> np.ndarray:
    """Writes `text` in white with a dark outline at the top left of `img` (uint8 [H, W, 3], in place; returned).
    Outline and text are both drawn at thickness 1, the outline shifted one pixel each way: cv2 lays out a thicker
    stroke wider, and over a long title an outline drawn at thickness 3 drifted a letter right of the white text."""
    shifts = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    for (dx, dy), colour in [(s, (0, 0, 0)) for s in shifts] + [((0, 0), (255, 255, 255))]:
        cv2.putText(img, text, (6 + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return img


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files that killed runs (SIGKILL, power loss) left in `folder`: those whose writer's pid
    is gone. Returns what was removed. Runs once per folder per process (callers write many files into one)."""
    folder = Path(folder)
    removed: list[Path] = []
    if folder in _swept or not folder.is_dir():
        return removed
    _swept.add(folder)
    for p in folder.glob(f".*{TEMP_MARK}*"):
        m = _TEMP_NAME.search(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output_file(path: Path) -> None:
    """Refuse, before any work, an output path that cannot become a file: a directory, a path under a file, or a
    folder this user cannot write to."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the output {path} is a directory", "give a file name, e.g. -o " + str(path / "out.mp4"))
    check_output_dir(path.parent)


def check_output_dir(folder: Path) -> None:
    """Refuse a folder that cannot be created or written: one of its parents is a file, or the nearest existing one
    is not writable."""
    folder = Path(folder).absolute()
    p = folder
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot write into {folder}: {p} is a file, not a folder", "choose another output path.")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {folder}: {p} is not writable by this user",
                        "choose a folder you can write to, or change its permissions.")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """A temporary path beside `final` to write; it is renamed onto `final` when the block ends normally and removed
    on any exception (KeyboardInterrupt and the CLI's SIGTERM included), so that a reader never sees half a file.

    The file is created with mode 0666 minus the umask, as `final` would be (mkstemp's 0600 would hide every output
    from other users); the suffix is kept (writers such as OpenCV pick the format from it). The name holds the pid,
    so that stale files of killed runs are recognised and swept by the next write into the folder.
    """
    final = Path(final)
    check_output_file(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(final.parent)
    while True:
        tmp = final.with_name(f".{final.stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{final.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    mode = os.stat(tmp).st_mode & 0o777  # 0666 minus the umask, read without changing the process's umask
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers replace the file with their own 0600 one (safetensors' save_file)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write) -> None:
    """write(tmp) to a temporary path beside `path`, then move it into place (see atomic_output)."""
    with atomic_output(Path(path)) as tmp:
        write(tmp)


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """Write float mono audio as 16-bit PCM wav, atomically."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with atomic_output(Path(path)) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_video(
    path: str | os.PathLike,
    frames,
    fps: float,
    audio: np.ndarray | None = None,
    audio_rate: int = AUDIO_RATE,
    crf: int = 18,
) -> int:
    """Encode RGB uint8 frames (an iterable) as H.264 (+ AAC when `audio` is given) mp4, atomically.

    Returns the number of frames written. The audio starts at time 0 with the first frame.
    """
    with atomic_output(Path(path)) as tmp:
        return _encode_mp4(tmp, frames, fps, audio, audio_rate, crf)


def _encode_mp4(tmp: Path, frames, fps: float, audio, audio_rate: int, crf: int) -> int:
    n = 0
    with av.open(str(tmp), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "medium"}
        as_ = c.add_stream("aac", rate=audio_rate, layout="mono") if audio is not None else None
        for img in frames:
            img = np.ascontiguousarray(img)
            if n == 0:
                vs.height, vs.width = img.shape[0] - img.shape[0] % 2, img.shape[1] - img.shape[1] % 2
            img = img[: vs.height, : vs.width]
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
            n += 1
        for pkt in vs.encode():
            c.mux(pkt)
        if as_ is not None:
            pcm = np.clip(np.asarray(audio, np.float32), -1, 1).reshape(1, -1)
            step = 1024 * 16
            for i in range(0, pcm.shape[1], step):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i : i + step]), format="flt", layout="mono")
                fr.sample_rate = audio_rate
                fr.pts = i
                for pkt in as_.encode(fr):
                    c.mux(pkt)
            for pkt in as_.encode():
                c.mux(pkt)
    return n

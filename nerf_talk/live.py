"""The live engine: one avatar driven by one audio stream, composed of the streaming drive and the renderer.

    stream = LiveStream(avatar, sample_rate=48000)            # api.Avatar; any input rate
    for frame in stream.push(pcm_chunk):                      # int16 / float samples, any chunk size
        jpeg = stream.render_jpeg(frame)                      # or stream.render(frame) -> uint8 [H, W, 3]
    for frame in stream.finish(): ...                         # the end of the audio: the last frames

Audio chunks go through motion/stream.py (resampling, features, running statistics, motion: the stages and the
algorithmic delay are described there), head pose and blinks through the person's causal generators
(motion/drive.py's Person.pose_stream / blink_stream); each ready frame is rendered by the avatar's FrameRenderer
and, for the browser, JPEG-encoded. `LiveStream.algorithmic_delay_s` states the delay of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nerf_talk import audio_features as af
from nerf_talk.errors import UserError
from nerf_talk.motion.drive import POSE_MODES, eye_vector, motion_coefficients
from nerf_talk.motion.stream import MODEL_FPS, FeatureStream, MotionStream, StreamConfig, StreamResampler, pcm_to_float


@dataclass
class LiveFrame:
    """One output frame, ready to render."""

    index: int
    t: float  # its start in the audio, seconds
    pose: np.ndarray  # [4, 4]
    coeffs: np.ndarray  # [C] the avatar's motion coefficients
    eyes: np.ndarray  # [3]
    speech: bool
    samples_in: int  # input samples received when it became ready (the audio it waited for)


class LiveStream:
    """One avatar driven by one audio stream: push chunks, get frames (see the module docstring)."""

    def __init__(self, avatar, sample_rate: int, pose: str = "generate", blinks: bool = True, seed: int = 0,
                 size: int | tuple[int, int] | None = None, cfg: StreamConfig = StreamConfig(),
                 max_seconds: float | None = None):
        if pose not in POSE_MODES:
            raise UserError(f"pose must be 'generate' or 'still', is {pose!r}")
        self.avatar, self.rate, self.cfg = avatar, int(sample_rate), cfg
        self.resampler = StreamResampler(self.rate)
        self.features = FeatureStream(cfg)
        self.motion = MotionStream(avatar.motion_model, avatar.fps, avatar.adapter, None, cfg)
        self.person = avatar.person
        self.pose = self.person.pose_stream(pose, seed)
        self.blinks = self.person.blink_stream(seed) if blinks else None
        self.max_samples = None if max_seconds is None else int(max_seconds * self.rate)
        self.n_in = 0
        self.n16 = 0
        self.frames = 0
        self.ended = False
        self._size = size
        self._renderer = None

    @property
    def fps(self) -> float:
        return self.avatar.fps

    @property
    def algorithmic_delay_s(self) -> float:
        """The longest wait, after the end of a frame's audio, before the frame can be computed (the module
        docstring): resampler + feature look-ahead + network / gate look-ahead + the hop's blocking (the first frame
        of a block waits for hop_frames - 1 more). Compute and transport come on top."""
        return (self.resampler.delay_s + self.features.lookahead_s + self.motion.lookahead_s
                + (self.cfg.hop_frames - 1) / MODEL_FPS)

    def push(self, pcm: np.ndarray | bytes) -> list[LiveFrame]:
        """A chunk of mono audio at sample_rate: int16 PCM (array or little-endian bytes) or float in [-1, 1]."""
        if self.ended:
            raise UserError("the stream has ended", "start a new one")
        x = pcm_to_float(pcm)
        if self.max_samples is not None and self.n_in + len(x) > self.max_samples:
            raise UserError(f"the stream is over its limit of {self.max_samples / self.rate:.0f} s",
                            "start a new stream")
        self.n_in += len(x)
        a = self.resampler.push(x)
        self.n16 += len(a)
        return self._frames(*self.motion.push(self.features.push(a)))

    def finish(self) -> list[LiveFrame]:
        """The end of the audio: the remaining frames (ceil(duration * fps) in all, as offline)."""
        if self.ended:
            return []
        self.ended = True
        a = self.resampler.push(np.zeros(0, np.float32), final=True)
        self.n16 += len(a)
        if self.n16 < af.MIN_SECONDS * af.SAMPLE_RATE:
            raise UserError(f"the stream held {self.n16 / af.SAMPLE_RATE:.2f} s of audio, under the minimum of "
                            f"{af.MIN_SECONDS} s", "speak (or send) at least a second of speech")
        return self._frames(*self.motion.push(self.features.push(a, final=True), final=True,
                                              seconds=self.n16 / af.SAMPLE_RATE))

    def _frames(self, motion: np.ndarray, speech: np.ndarray) -> list[LiveFrame]:
        if len(motion) == 0:
            return []
        poses = self.pose.step(speech)
        b = self.blinks.step(speech) if self.blinks is not None else np.zeros(len(speech), np.float32)
        eyes = eye_vector(self.person.eyes_open, b)
        coeffs = motion_coefficients(self.avatar.model, motion)
        out = []
        for i in range(len(motion)):
            k = self.frames + i
            out.append(LiveFrame(k, k / self.fps, poses[i], coeffs[i], eyes[i], bool(speech[i]), self.n_in))
        self.frames += len(motion)
        return out

    def render(self, frame: LiveFrame) -> np.ndarray:
        """uint8 [H, W, 3]."""
        if self._renderer is None:
            self._renderer = self.avatar.renderer(self._size)
        return self._renderer.render(frame.pose, frame.coeffs, frame.eyes)

    def render_jpeg(self, frame: LiveFrame, quality: int = 85) -> bytes:
        """The frame rendered and JPEG-encoded (what the live page shows)."""
        ok, buf = cv2.imencode(".jpg", self.render(frame)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()

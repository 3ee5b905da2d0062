"""Preprocessing settings: one dataclass, set from the command line or from Python (as a dict or a TOML file:
nerf_talk.config.load(PreprocessConfig, "pre.toml") or load(PreprocessConfig, data={"fps": 30}))."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PreprocessConfig:
    fps: float = 25.0  # output frame rate; every per-frame array is at this rate
    size: int = 512  # side of the square crop, in pixels
    val_fraction: float = 1.0 / 11.0  # the last fraction of frames is held out for validation
    min_duration: float = 5.0  # seconds; shorter clips are refused
    max_missing_face: float = 0.5  # refuse when the face is not found in more than this fraction of frames
    crop_scale: float = 2.6  # crop side as a multiple of the face's size (head and shoulders)
    jpeg_quality: int = 95
    audio: str | None = None  # separate audio file, for clips without (usable) sound
    audio_offset: float | None = None  # seconds the audio lags the video; None: measure it
    # A lip model that also measures the offset, as "module:function" with the signature of
    # nerf_talk.motion.lead.offset_by_default_model: (16 kHz audio, tracked mouth opening [N], fps) -> (seconds the
    # sound still comes late, confidence >= 1 when sure). Named, not imported: preprocessing sits below the models'
    # layer. nerf_talk.api.preprocess, which every front end calls, names the shipped motion model's. None: the
    # clip's own lips only (their regression is unsure on clips under 15-20 s).
    offset_model: str | None = None
    force: list[str] = field(default_factory=list)  # steps to redo even when cached

    def validate(self) -> None:
        """Refuse settings no dataset can be made with, before any work."""
        from nerf_talk.errors import UserError

        if not 128 <= self.size <= 2048:
            raise UserError(f"--size {self.size}: the crop side must be 128 to 2048 pixels",
                            "the default 512 suits most videos.")
        if not 1 <= self.fps <= 120:
            raise UserError(f"--fps {self.fps:g}: the frame rate must be 1 to 120", "the default 25 suits most videos.")
        if not 0 <= self.val_fraction < 0.5:
            raise UserError(f"--val-fraction {self.val_fraction:g}: it must be at least 0 and below 0.5",
                            "the default 1/11 holds out the last 11th of the clip.")


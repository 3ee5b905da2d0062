"""Preprocessing settings: one dataclass, overridable from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


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
    force: list[str] = field(default_factory=list)  # steps to redo even when cached

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing settings: {unknown}; known: {sorted(known)}")
        return cls(**d)

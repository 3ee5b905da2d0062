"""The motion model's input: per-frame audio features (nerf_talk.audio_features) made speaker- and level-independent.

input_features(features) -> [N, D] float32, D = P + 80 + 4 (P = 191 posteriorgram columns):
  ppg        [N, P]  as computed (already speaker-independent: a posterior over phonemes)
  mel        [N, 80] log-mel minus the utterance's per-band median, / 5 (removes microphone colour and level)
  log f0     [N, 1]  log(f0 / the utterance's median voiced f0) * 4 (0 where unvoiced): intonation, not voice height
  voiced     [N, 1]  voiced probability
  level      [N, 1]  energy in dB over the utterance's speech level (95th percentile), / 20, floored at -3
  speech     [N, 1]  voice activity (audio_features.voice_activity) as 0/1

The utterance statistics (`Stats`) are the only non-local part. Offline they come from the whole input; a live caller
computes them from its first seconds (or keeps them running) and passes them in, so the features of frame t then
depend only on audio up to t plus the feature extractor's own look-ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_talk import audio_features as af

N_EXTRA = 4


@dataclass(frozen=True)
class Stats:
    """Per-utterance normalisers; see the module docstring."""

    mel_median: np.ndarray  # [80]
    f0_median: float  # Hz; 0 when nothing is voiced
    level_db: float  # dBFS of loud speech
    floor_db: float  # the noise floor (audio_features.noise_floor)


def utterance_stats(features: dict[str, np.ndarray], heard: np.ndarray | None = None) -> Stats:
    """The normalisers of these frames; `heard` [N]: af.phonemes_heard of their posteriorgram (default: computed from
    features["ppg"] when given), for the noise floor."""
    if heard is None and "ppg" in features:
        heard = af.phonemes_heard(features["ppg"])
    mel = np.asarray(features["mel"], np.float32)
    pitch = np.asarray(features["pitch"], np.float32)
    energy = np.asarray(features["energy"], np.float32)
    voiced = pitch[:, 1] > 0.5
    f0 = float(np.median(pitch[voiced, 0])) if voiced.sum() >= 3 else 0.0
    return Stats(np.median(mel, 0), f0, float(np.percentile(energy, 95)), af.noise_floor(energy, heard))


def input_dim(n_ppg: int) -> int:
    return n_ppg + af.N_MELS + N_EXTRA


def input_features(features: dict[str, np.ndarray], stats: Stats | None = None) -> np.ndarray:
    """[N, D] float32 model input from compute_features' dict (see the module docstring)."""
    stats = stats or utterance_stats(features)
    ppg = np.asarray(features["ppg"], np.float32)
    mel = (np.asarray(features["mel"], np.float32) - stats.mel_median) / 5.0
    pitch = np.asarray(features["pitch"], np.float32)
    voiced = pitch[:, 1:2]
    if stats.f0_median > 0:
        logf0 = np.where(pitch[:, :1] > 0, np.log(np.maximum(pitch[:, :1], 1.0) / stats.f0_median) * 4.0, 0.0)
    else:
        logf0 = np.zeros_like(voiced)
    level = np.maximum((np.asarray(features["energy"], np.float32)[:, None] - stats.level_db) / 20.0, -3.0)
    speech = speech_mask(features, stats)[:, None].astype(np.float32)
    return np.concatenate([ppg, mel, logf0.astype(np.float32), voiced, level, speech], 1).astype(np.float32)


SILENCE_DB = -60.0  # quieter frames are silence whatever their relative level (room tone of a quiet file)


def speech_mask(features: dict[str, np.ndarray], stats: Stats | None = None) -> np.ndarray:
    """[N] bool audio_features.voice_activity with the floor taken from `stats` (so that a chunk of a stream is judged
    like the whole), and never below SILENCE_DB."""
    active = af.voice_activity(features, stats.floor_db if stats is not None else None)
    return active & (np.asarray(features["energy"], np.float64) > SILENCE_DB)


def interp_frames(values: np.ndarray, t_src: np.ndarray, t_out: np.ndarray) -> np.ndarray:
    """Per-frame values [M, ...] at times t_src [M] -> [len(t_out), ...] at times t_out, linearly interpolated
    (held at the ends): how motion moves from the model's frame centres to the video's."""
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    out = np.stack([np.interp(t_out, t_src, flat[:, j]) for j in range(flat.shape[1])], 1)
    return out.reshape((len(t_out),) + np.shape(values)[1:])

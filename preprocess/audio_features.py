"""Step: correct the audio/lip offset, then compute the per-frame audio features.

Reads audio_source.wav (ingest: 16 kHz mono, sample 0 = frame 0 as the file had it) and mouth_opening.npy
(face_motion). Measures how late the sound is relative to the mouth (nerf_talk.av_sync, a regression on the clip's
own lips; then, where the configuration names one, a lip model measures what offset is left: offset_model_residual)
unless --audio-offset gives it, shifts the audio by that much (and, where the offset drifts steadily along the clip,
resamples it), and writes
  audio.wav            16 kHz mono, exactly n_frames / fps seconds, in sync with the frames
  audio_ppg.npy        [N, P] float32 phoneme posteriorgram (columns: result["phoneme_vocabulary"])
  audio_mel.npy        [N, 80] float32 log-mel
  audio_pitch.npy      [N, 2] float32 (f0 Hz of the voiced part, voiced probability)
  audio_energy.npy     [N] float32 RMS dBFS
with the alignment convention of nerf_talk.audio_features (row k = the audio of [k/fps, (k+1)/fps)).

In the pipeline this step runs in the helper process (preprocess.parallel) once face_motion is done and the steps
that use both cores are over, beside the background and torso steps; `run` then takes its result.
"""

from __future__ import annotations

import importlib
import logging
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from nerf_talk import audio_features as af
from nerf_talk import media
from nerf_talk.av_sync import SyncEstimate, measure_sync
from nerf_talk.errors import UserError
from preprocess import parallel
from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")

MIN_CONFIDENCE = 0.4  # below this the measured offset is not applied (see av_sync: unrelated audio scores < 0.25)
# The lip model's residual is added from this confidence on (its scale: 1 = what unrelated audio reaches 1 time in
# 100, motion.lead). On a clip's own audio the peak is rarely a wrong one: on 408 pieces of 6-14 s of the GRID files
# (which never trained the shipped model) with their audio moved by known amounts, its measure fell within a frame of
# the truth on 89-90 % of the pieces at 0.5-1 (96 % at 1-1.5), against 65-71 % under 0.5; correcting from 0.5 instead
# of 1 left a mean error of 0.54 frame instead of 0.95, and 0.39 instead of 0.40 on the pieces not moved
# (`bench/bench_motion.py offsets --every 4`, docs/MOTION_MODEL.md).
MODEL_MIN_CONFIDENCE = 0.5
LARGE_OFFSET_S = 0.3  # real recordings are rarely this far off: worth a look by a person
MIN_SPEECH_FRACTION = 0.1


def shift_audio(audio: np.ndarray, offset_s: float, n_samples: int, rate: int = media.AUDIO_RATE) -> np.ndarray:
    """The audio moved `offset_s` earlier (positive: it came after the mouth, drop its start; negative: pad silence
    before it), then padded with silence or trimmed to exactly `n_samples`."""
    shift = int(round(offset_s * rate))
    if shift >= 0:
        out = audio[shift:]
    else:
        out = np.concatenate([np.zeros(-shift, np.float32), audio])
    if len(out) < n_samples:
        out = np.concatenate([out, np.zeros(n_samples - len(out), np.float32)])
    return np.ascontiguousarray(out[:n_samples], dtype=np.float32)


def align_audio(audio: np.ndarray, sync: SyncEstimate, n_samples: int, rate: int = media.AUDIO_RATE) -> np.ndarray:
    """The audio in step with the frames: sample k of the result is the source at k/rate + sync.offset_at(k/rate).
    Without drift this is shift_audio; with it the audio is resampled by 1 + drift first (polyphase, band-limited)."""
    if sync.drift == 0.0:
        return shift_audio(audio, sync.offset_s, n_samples, rate)
    stretch = 1.0 + sync.drift  # source seconds per video second
    ratio = Fraction(1.0 / stretch).limit_denominator(2000)  # 1e-6 of the rate: 0.1 frame over 3 hours
    resampled = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    return shift_audio(resampled, sync.offset_s / stretch, n_samples, rate)


def offset_model_residual(name: str, audio: np.ndarray, mouth: np.ndarray, fps: float) -> tuple[float, float]:
    """(seconds, confidence) from the lip model `name` ("module:function", PreprocessConfig.offset_model) on audio
    already moved by the lips' own estimate: the offset that is left. The generic motion model knows how speech moves
    lips without learning it from this clip, so on short clips it can be sure where the regression is not: on the 10
    validation speakers (3-71 s) it was sure on 6 and moved interview_07's sound by +79 ms, whose own lips had left
    it uncorrected (docs/MOTION_MODEL.md)."""
    module, _, func = name.partition(":")
    try:
        measure = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise UserError(f"offset_model {name!r} cannot be loaded: {e}",
                        "name a function as 'module:function', or leave offset_model unset") from None
    seconds, confidence = measure(audio, mouth, fps)
    return float(seconds), float(confidence)


def _ahead_key(ds: Dataset) -> tuple:
    return ("audio_features", str(ds.root))


def prefetch(ds: Dataset, cfg: PreprocessConfig) -> None:
    """Compute (and write) this step's outputs in the helper process while this one goes on with the torso."""
    parallel.submit_ahead(_ahead_key(ds), compute, (ds, cfg))


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    result = parallel.take_ahead(_ahead_key(ds))  # the outputs are written when it was computed ahead
    return compute(ds, cfg) if result is None else result


def compute(ds: Dataset, cfg: PreprocessConfig) -> dict:
    n, fps = ds.n_frames, ds.fps
    src = ds.path("audio_source.wav")
    if not src.exists():
        raise UserError(f"{src} is missing", "the ingest step did not finish: run preprocess again.")
    audio = media.read_audio(src)
    mouth = ds.load_array("mouth_opening")

    n_samples = int(round(n * media.AUDIO_RATE / fps))
    estimate_s = confidence = model_s = model_confidence = None
    drift = 0.0
    if cfg.audio_offset is not None:
        offset_s, measured = float(cfg.audio_offset), False
        log.info("audio offset set to %+.3f s (not measured)", offset_s)
    else:
        # Only the log-mel is needed to measure: the posteriorgram waits until the audio is in place.
        probe = af.compute_features(audio, fps, n, include=("mel",))
        found = measure_sync(mouth, probe, fps, MIN_CONFIDENCE)
        estimate_s, confidence = found.offset_s, found.confidence
        measured = confidence >= MIN_CONFIDENCE
        offset_s = estimate_s if measured else 0.0
        drift = found.drift if measured else 0.0
        if cfg.offset_model and not drift:
            moved = align_audio(audio, SyncEstimate(offset_s, 0.0, 0.0), n_samples)
            model_s, model_confidence = offset_model_residual(cfg.offset_model, moved, mouth, fps)
            if model_confidence >= MODEL_MIN_CONFIDENCE:
                offset_s, measured = offset_s + model_s, True
        how = f"the clip's lips: {estimate_s:+.3f} s, confidence {confidence:.2f}"
        if model_s is not None:
            how += (f"; then the lip model: {model_s:+.3f} s more, confidence {model_confidence:.2f} "
                    f"(applied from {MODEL_MIN_CONFIDENCE:g})")
        if drift:
            log.warning(
                "the audio drifts against the pictures: %+.3f s at the start, %+.3f s at the end (%+.2f %% rate); "
                "resampling it to follow the lips", offset_s, float(found.offset_at(n / fps)), 100 * drift,
            )
        if not measured:
            log.warning("the audio/lip offset could not be measured reliably (%s): leaving the audio as it is; if the "
                        "lips look out of sync, pass --audio-offset SECONDS", how)
        elif abs(offset_s) > LARGE_OFFSET_S and not drift:
            log.warning("the audio is %+.3f s off the lips (%s); correcting it. Check the report, and pass "
                        "--audio-offset SECONDS if this is wrong", offset_s, how)
        elif not drift:
            log.info("audio/lip offset %+.3f s (%s): corrected", offset_s, how)

    synced = align_audio(audio, SyncEstimate(offset_s, drift, confidence or 0.0), n_samples)
    media.write_wav(ds.path("audio.wav"), synced)  # atomic
    feats = af.compute_features(synced, fps, n)
    for name, arr in feats.items():
        ds.save_array(f"audio_{name}", arr)

    speech = af.voice_activity(feats)
    speech_fraction = float(speech.mean())
    if speech_fraction < MIN_SPEECH_FRACTION:
        log.warning(
            "only %.0f%% of the frames hold speech: the lip motion will have little to learn from",
            100 * speech_fraction,
        )
    return {
        "offset_s": round(offset_s, 4),
        "offset_measured": measured,
        "drift": round(drift, 6),
        "offset_estimate_s": None if estimate_s is None else round(estimate_s, 4),
        "offset_confidence": None if confidence is None else round(confidence, 3),
        "offset_model": cfg.offset_model if model_s is not None else None,
        "offset_model_residual_s": None if model_s is None else round(model_s, 4),
        "offset_model_confidence": None if model_confidence is None else round(model_confidence, 3),
        "speech_fraction": round(speech_fraction, 3),
        "feature_dims": af.feature_dims(),
        "phoneme_vocabulary": af.phoneme_vocabulary(),
        "silence_columns": af.silence_columns(),
    }


STEP = Step(
    name="audio_features",
    version=3,  # 2: the offset's drift along the clip is measured and corrected; 3: the lip model from 0.5
    requires=("ingest", "face_motion"),
    outputs=("audio.wav", "audio_ppg.npy", "audio_mel.npy", "audio_pitch.npy", "audio_energy.npy"),
    run=run,
    describe="measure and correct the audio/lip offset and drift, compute per-frame audio features",
    uses=("audio_offset", "offset_model"),
    prefetch=prefetch,
)

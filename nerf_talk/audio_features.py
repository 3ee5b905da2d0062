"""Per-video-frame audio features: the input of the audio-to-motion model, at preprocessing and at render time.

`compute_features(audio, fps, n_frames)` turns 16 kHz mono speech into one row per video frame of
  ppg     [N, P]  phoneme posteriorgram: softmax posteriors of hama's CTC phoneme recogniser (IPA, multilingual),
                  P = len(phoneme_vocabulary()) = 191; rows sum to 1
  mel     [N, 80] log mel power (natural log), 25 ms Hann window, 10 ms hop, 0-8 kHz
  pitch   [N, 2]  column 0: f0 in Hz of the voiced part of the frame (0 where nothing is voiced);
                  column 1: voiced probability in [0, 1]   (YIN, 60-500 Hz)
  energy  [N]     RMS level in dB full scale (a full-scale sine is -3 dB; digital silence is -100 dB)
The same function runs on the training clip and on any new speech, so the motion model sees identical features.

Alignment convention (the contract every consumer relies on):
  - audio sample 0 is time 0, which is the start of video frame 0; video frame k covers [k/fps, (k+1)/fps).
  - every analysis frame has a time span: the 10 ms mel/pitch frame j covers [j*0.01 - 0.005, j*0.01 + 0.005)
    (its window is centred on sample 160*j); hama's 20 ms output frame i covers [i*0.02 - 0.01, i*0.02 + 0.01)
    (its model runs a centred STFT with a 160-sample hop and subsamples by 2, so frame i is centred on sample 320*i).
  - row k of a feature is the average of the analysis frames over [k/fps, (k+1)/fps), each weighted by how much of
    its span lies in that interval. That is exact for any fps, including fps > 50 where a video frame is shorter
    than a posteriorgram frame. `energy` is computed from the samples of the interval directly.
  - the audio is padded with silence to cover n_frames/fps (or trimmed to it): rows past the end of the speech
    hold the features of silence, never copies of the last spoken frame.
  - n_frames defaults to ceil(duration * fps): every sample belongs to some frame.

Streaming: mel, pitch and energy look at most 21 ms ahead of a frame. The posteriorgram model attends over its whole
input (and refuses inputs over 30 s), so it runs on chunks of `PPG_CHUNK_S` with `PPG_CONTEXT_S` of context on each
side; that bounds memory and time for long audio, and is the look-ahead a streaming caller needs (chunk + context).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

from nerf_talk.errors import UserError

SAMPLE_RATE = 16000
MIN_SECONDS = 0.2  # below this there is not one phoneme to recognise

# log-mel / pitch analysis frames
HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_FFT = 512
N_MELS = 80
F_MIN, F_MAX = 0.0, 8000.0
LOG_FLOOR = 1e-10  # power floor before the log, so that digital silence gives a finite value
ENERGY_FLOOR_DB = -100.0

# pitch (YIN)
F0_MIN, F0_MAX = 60.0, 500.0
YIN_WIN = 400  # integration window, samples
YIN_THRESHOLD = 0.15  # de Cheveigné & Kawahara's absolute threshold on the normalised difference
VOICED_MIN_DB = -50.0  # quieter frames are unvoiced whatever their periodicity (hum, room tone)

# phoneme posteriorgram (hama)
PPG_HOP_S = 0.02  # one hama output frame per 320 samples
PPG_FRAME_SAMPLES = 320
PPG_CHUNK_S = 20.0  # core of each chunk; the model's input limit is 30 s
PPG_CONTEXT_S = 2.0  # context on each side of a chunk, discarded after inference (measured: argmax agrees 99.7%)
BLANK = "<blank>"
WORD_BOUNDARY = "<wb>"

FEATURE_NAMES = ("ppg", "mel", "pitch", "energy")


# ------------------------------------------------------------------------------------------------ the public API
def compute_features(
    audio: np.ndarray, fps: float, n_frames: int | None = None, include: tuple[str, ...] = FEATURE_NAMES
) -> dict[str, np.ndarray]:
    """Per-video-frame features of 16 kHz mono float audio (see the module docstring for the alignment).

    Returns {"ppg": [N, P], "mel": [N, 80], "pitch": [N, 2], "energy": [N]}, all float32 with N rows; `include`
    picks a subset (the posteriorgram is most of the cost; offset measurement needs only "mel").
    Raises UserError for empty, too short or non-finite audio.
    """
    unknown = set(include) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURE_NAMES}")
    audio = check_audio(audio)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, is {fps}")
    if n_frames is None:
        n_frames = math.ceil(len(audio) / SAMPLE_RATE * fps - 1e-6)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, is {n_frames}")
    audio = _fit_length(audio, fps, n_frames)
    out = {}
    if "ppg" in include:
        out["ppg"] = frame_average(phoneme_posteriors(audio), PPG_HOP_S, fps, n_frames).astype(np.float32)
    if "mel" in include or "pitch" in include:
        logmel, f0, voiced = analysis_frames(audio, pitch="pitch" in include)
        if "mel" in include:
            out["mel"] = frame_average(logmel, HOP / SAMPLE_RATE, fps, n_frames).astype(np.float32)
        if "pitch" in include:
            out["pitch"] = _frame_pitch(f0, voiced, fps, n_frames)
    if "energy" in include:
        out["energy"] = frame_energy_db(audio, fps, n_frames)
    return out


def phoneme_vocabulary() -> list[str]:
    """Names of the `ppg` columns: hama's phoneme tokens, then "<wb>" (word boundary) and "<blank>" (CTC blank)."""
    return list(_asr_model().decoder_tokens)


def silence_columns() -> list[int]:
    """The `ppg` columns that mean "no phoneme here": the CTC blank and the word boundary."""
    vocab = phoneme_vocabulary()
    return [vocab.index(BLANK), vocab.index(WORD_BOUNDARY)]


def feature_dims() -> dict[str, int]:
    """Width of each feature (energy is one column, stored as [N])."""
    return {"ppg": len(phoneme_vocabulary()), "mel": N_MELS, "pitch": 2, "energy": 1}


# When the phoneme recogniser hears phonemes, the noise floor lies at least this far under the clip's loud speech (its
# 95th percentile level). A clip of speech without pauses (a loud, compressed broadcast interview) has no quiet frame:
# its 10th percentile is speech, 7 dB under the loud speech, and no frame cleared the floor by the 15 dB that
# voice_activity asks. The validation clip interview_04 read as 0 % speech over 10 s of talking, and the motion model
# held its mouth closed; with this rule it reads 76 %, and the shipped model's held-out opening correlation there rises
# 0.000 -> 0.305 (validation mean 0.243 -> 0.277, `bench/bench_motion.py table`). No other clip of the corpus,
# validation or shared clips changes except lecturer_25s (1.4 % of its frames): their loud speech clears their 10th
# percentile by 23-59 dB. Of the 598 synthetic training utterances (noise at 5-40 dB SNR), 43 change: their frames
# agree with the truth (the phoneme timings) 0.554 -> 0.638 of the time. Only with phonemes heard: steady noise
# (white, pink, hum, a fan) has a level distribution as narrow as compressed speech, and without the gate read as
# 60-100 % speech.
LOUD_OVER_FLOOR_DB = 20.0
# "Hears phonemes": at least this share of the frames has a phoneme as its most likely token. The validation and
# shared clips: 4-27 %; steady noise, tones and hum: 0 %.
PHONEME_SHARE = 0.05


def phonemes_heard(ppg: np.ndarray) -> np.ndarray:
    """[N] bool: the frames whose most likely posteriorgram token is a phoneme (not the blank or a word boundary)."""
    return ~np.isin(np.asarray(ppg).argmax(1), silence_columns())


def noise_floor(energy: np.ndarray, heard: np.ndarray | None = None) -> float:
    """dB: the 10th percentile of the frame levels (so a noisy room does not count as speech), at least -90 dB; when
    the frames `heard` [N] (phonemes_heard) hold speech, at most LOUD_OVER_FLOOR_DB under the 95th percentile (a
    clip without pauses has no quiet frame to measure)."""
    e = np.asarray(energy, np.float64)
    floor = float(np.percentile(e, 10))
    if heard is not None and len(heard) and float(np.mean(heard)) >= PHONEME_SHARE:
        floor = min(floor, float(np.percentile(e, 95)) - LOUD_OVER_FLOOR_DB)
    return max(floor, ENERGY_FLOOR_DB + 10.0)


def voice_activity(features: dict[str, np.ndarray], floor_db: float | None = None) -> np.ndarray:
    """[N] bool: frames with speech, from level relative to the noise floor and voicing.

    A frame is speech when it is 15 dB over the floor, or voiced and 8 dB over it (soft vowels at the end of a
    phrase). The floor is the clip's own (`noise_floor`) unless given: a stream passes its utterance's floor so that
    each chunk is judged like the whole.
    """
    energy = np.asarray(features["energy"], np.float64)
    voiced = np.asarray(features["pitch"], np.float64)[:, 1]
    if floor_db is None:
        floor = noise_floor(energy, phonemes_heard(features["ppg"]) if "ppg" in features else None)
    else:
        floor = floor_db
    return (energy > floor + 15.0) | ((voiced > 0.5) & (energy > floor + 8.0))


def check_audio(audio: np.ndarray) -> np.ndarray:
    """The audio as contiguous float32 [S]; a UserError when it is empty, under MIN_SECONDS or not finite."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [samples], got shape {audio.shape}; decode it with media.read_audio")
    if audio.size == 0:
        raise UserError("the audio is empty", "give a recording of speech (at least a second).")
    if audio.size < MIN_SECONDS * SAMPLE_RATE:
        raise UserError(
            f"the audio is {audio.size / SAMPLE_RATE:.3f} s long, under the minimum of {MIN_SECONDS} s",
            "give a longer recording of speech.",
        )
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise UserError("the audio holds NaN or infinite samples", "the file is damaged; re-export it.")
    return audio


# ------------------------------------------------------------------------------------------------ time alignment
def frame_average(values: np.ndarray, hop_s: float, fps: float, n_frames: int) -> np.ndarray:
    """Average analysis frames (row j spans [(j - 0.5) hop_s, (j + 0.5) hop_s)) over video frame intervals.

    values [T, D] or [T] -> [n_frames, D] or [n_frames], float64. Each analysis frame is weighted by the overlap of
    its span with [k/fps, (k+1)/fps): the integral of the piecewise-constant signal over the interval, divided by
    the interval's length. Intervals past the analysed span are clamped to it (the caller pads the audio, so this
    only trims fractions of a frame at the ends).
    """
    values = np.asarray(values, np.float64)
    flat = values.ndim == 1
    v = values[:, None] if flat else values
    T = v.shape[0]
    # Integral of the signal from the start of the first span, at each span edge: piecewise linear in between.
    integral = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0) * hop_s])
    start, end = -0.5 * hop_s, (T - 0.5) * hop_s
    t = np.clip(np.arange(n_frames + 1) / fps, start, end)
    pos = (t - start) / hop_s
    i = np.minimum(np.floor(pos).astype(np.int64), T - 1)
    frac = (pos - i)[:, None]
    at_t = integral[i] + frac * (integral[i + 1] - integral[i])
    length = np.diff(t)
    out = np.empty((n_frames, v.shape[1]))
    ok = length > 1e-9
    out[ok] = (at_t[1:][ok] - at_t[:-1][ok]) / length[ok, None]
    # A zero-length interval (only possible when clamped at an end) takes the nearest analysis frame.
    out[~ok] = v[np.clip(np.round(t[:-1][~ok] / hop_s).astype(np.int64), 0, T - 1)]
    return out[:, 0] if flat else out


def _fit_length(audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """Pad with silence to cover n_frames, or trim what lies beyond them (keeping the posteriorgram's context)."""
    need = math.ceil(n_frames * SAMPLE_RATE / fps)
    if len(audio) < need:
        return np.concatenate([audio, np.zeros(need - len(audio), np.float32)])
    keep = need + int(PPG_CONTEXT_S * SAMPLE_RATE)
    return audio[:keep] if len(audio) > keep else audio


def frame_energy_db(audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """[n_frames] RMS in dBFS of the samples in [k/fps, (k+1)/fps); samples past the end count as silence."""
    sq = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    edges = np.round(np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(np.int64)
    n = np.maximum(np.diff(edges), 1)
    total = sq[np.minimum(edges[1:], len(audio))] - sq[np.minimum(edges[:-1], len(audio))]
    rms = np.sqrt(np.maximum(total, 0.0) / n)
    return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-12)), ENERGY_FLOOR_DB).astype(np.float32)


# ------------------------------------------------------------------------------------------------ log-mel
@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters evenly spaced on the HTK mel scale, each of unit area (Slaney
    normalisation), so that a band's value does not grow with its width."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)

    fft_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    band_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = band_hz[:-2, None], band_hz[1:-1, None], band_hz[2:, None]
    rising = (fft_hz[None] - lo) / (mid - lo)
    falling = (hi - fft_hz[None]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb *= (2.0 / (hi - lo))  # unit area
    return fb.astype(np.float32)


def _framed(audio: np.ndarray, length: int) -> np.ndarray:
    """[T, length] windows centred on samples 0, HOP, 2 HOP, ... (zero padded at both ends), T = len // HOP + 1."""
    T = len(audio) // HOP + 1
    left = length // 2
    padded = np.zeros(left + (T - 1) * HOP + length, np.float32)
    padded[left:left + len(audio)] = audio
    return np.lib.stride_tricks.sliding_window_view(padded, length)[::HOP][:T]


def analysis_frames(
    audio: np.ndarray, block: int = 2048, pitch: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """10 ms analysis frames: (log-mel [T, 80], f0 Hz [T], voiced probability [T]), frame j centred on 160 j.

    With pitch=False the last two are None (YIN is half the cost). Runs in blocks of `block` frames so memory stays bounded on long audio.
    """
    fb = mel_filterbank()
    window = np.hanning(WIN + 1)[:-1].astype(np.float32)  # periodic Hann
    mel_frames = _framed(audio, WIN)
    yin_len = YIN_WIN + int(math.ceil(SAMPLE_RATE / F0_MIN)) + 1
    yin_frames = _framed(audio, yin_len)
    T = mel_frames.shape[0]
    logmel = np.empty((T, fb.shape[0]), np.float32)
    f0 = np.empty(T, np.float32) if pitch else None
    voiced = np.empty(T, np.float32) if pitch else None
    for s in range(0, T, block):
        e = min(T, s + block)
        spec = np.fft.rfft(mel_frames[s:e] * window, n=N_FFT)
        power = spec.real ** 2 + spec.imag ** 2
        logmel[s:e] = np.log(np.maximum(power @ fb.T, LOG_FLOOR))
        if pitch:
            f0[s:e], voiced[s:e] = yin(yin_frames[s:e])
    return logmel, f0, voiced


# ------------------------------------------------------------------------------------------------ pitch
def yin(frames: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """YIN (de Cheveigné & Kawahara 2002) on [T, W + max_lag + 1] frames -> (f0 Hz [T], voiced probability [T]).

    The difference function d(tau) = sum_{j<W} (x_j - x_{j+tau})^2 is computed for all lags at once as
    E(0) + E(tau) - 2 r(tau), with the cross term r from one FFT per frame. The voiced probability maps the
    aperiodicity (the normalised difference at the chosen lag: 0 for a pure tone, ~1 for noise) linearly to [0, 1]
    between 0.45 and 0.1, and is 0 below VOICED_MIN_DB.
    """
    frames = np.asarray(frames, np.float64)
    T, L = frames.shape
    W = YIN_WIN
    max_lag = L - W - 1
    min_lag = int(sr / F0_MAX)
    if T == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    n = 1 << int(math.ceil(math.log2(L)))
    head = frames[:, :W]
    # r(tau) = sum_j head_j x_{j+tau}: no wrap-around for tau <= max_lag because n >= L.
    r = np.fft.irfft(np.conj(np.fft.rfft(head, n)) * np.fft.rfft(frames, n), n)[:, : max_lag + 1]
    csq = np.concatenate([np.zeros((T, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    e0 = csq[:, W:W + 1]
    e_tau = csq[:, lags + W] - csq[:, lags]
    d = np.maximum(e0 + e_tau - 2.0 * r, 0.0)
    # Cumulative mean normalised difference; eps makes digital silence read as aperiodic (1), not as perfect (0/0).
    eps = 1e-9 * W
    cum = np.cumsum(d[:, 1:], axis=1)
    dn = np.ones_like(d)
    dn[:, 1:] = (d[:, 1:] * lags[1:] + eps) / (cum + eps)

    search = dn[:, min_lag:max_lag]  # lags min_lag .. max_lag - 1 (the last lag has no right neighbour)
    below = search < YIN_THRESHOLD
    # The first dip under the threshold, followed down to its local minimum (YIN step 4).
    local_min = np.zeros_like(below)
    local_min[:, 1:] = (search[:, 1:] <= search[:, :-1]) & (search[:, 1:] <= dn[:, min_lag + 2:max_lag + 1])
    first_below = np.where(below.any(axis=1), below.argmax(axis=1), search.shape[1])
    after = np.arange(search.shape[1])[None] >= first_below[:, None]
    cand = local_min & after
    best = np.where(cand.any(axis=1), cand.argmax(axis=1), search.argmin(axis=1))
    tau = best + min_lag
    # Parabolic interpolation of the minimum for sub-sample period accuracy.
    rows = np.arange(T)
    a, b, c = dn[rows, tau - 1], dn[rows, tau], dn[rows, np.minimum(tau + 1, max_lag)]
    denom = a - 2.0 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    period = tau + np.clip(shift, -1.0, 1.0)
    f0 = sr / period
    aperiodicity = b
    prob = np.clip((0.45 - aperiodicity) / 0.35, 0.0, 1.0)
    level_db = 10.0 * np.log10(np.maximum(e0[:, 0] / W, 1e-20))
    prob[level_db < VOICED_MIN_DB] = 0.0
    return f0.astype(np.float32), prob.astype(np.float32)


def _frame_pitch(f0: np.ndarray, voiced: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """[n_frames, 2]: voicing-weighted mean f0 (0 where nothing is voiced) and mean voiced probability."""
    hop_s = HOP / SAMPLE_RATE
    p = frame_average(voiced, hop_s, fps, n_frames)
    pf = frame_average(f0.astype(np.float64) * voiced, hop_s, fps, n_frames)
    hz = np.where(p > 1e-3, pf / np.maximum(p, 1e-3), 0.0)
    return np.stack([hz, p], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ posteriorgram
_asr_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _asr_model_cached():
    # Imported here so that importing this module stays cheap; the model weights ship in hama's wheel.
    from hama.asr import ASRModel

    return ASRModel()


def _asr_model():
    with _asr_lock:
        return _asr_model_cached()


def _log_probs(audio: np.ndarray) -> np.ndarray:
    model = _asr_model()
    wav = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), np.float32).reshape(1, -1)
    # The session is hama's native engine; the call is what ASRModel.transcribe_waveform does before decoding.
    with _asr_lock:
        log_probs, out_lengths = model.session.run(
            ["log_probs", "out_lengths"], {"waveform": wav, "waveform_lengths": np.array([wav.shape[1]], np.int64)}
        )
    return np.asarray(log_probs[0][: int(np.asarray(out_lengths).reshape(-1)[0])], np.float32)


def phoneme_posteriors(audio: np.ndarray) -> np.ndarray:
    """[T, P] softmax posteriors of hama's recogniser at 50 fps, frame i centred on sample 320 i (T = S // 320 + 1).

    These are the raw model posteriors (temperature 1, no blank bias): hama's decoder sharpens them for its
    transcripts, which is not what a motion model needs. Long audio runs in chunks aligned to the 320-sample frame
    grid, each with PPG_CONTEXT_S of context on both sides, keeping only the chunk's own frames.
    """
    audio = np.asarray(audio, np.float32)
    T = len(audio) // PPG_FRAME_SAMPLES + 1
    chunk = int(PPG_CHUNK_S * SAMPLE_RATE) // PPG_FRAME_SAMPLES  # frames
    ctx = int(PPG_CONTEXT_S * SAMPLE_RATE) // PPG_FRAME_SAMPLES
    out = np.empty((T, len(phoneme_vocabulary())), np.float32)
    for f0 in range(0, T, chunk):
        f1 = min(T, f0 + chunk)
        a0 = max(0, f0 - ctx)
        a1 = min(T, f1 + ctx)
        piece = audio[a0 * PPG_FRAME_SAMPLES: a1 * PPG_FRAME_SAMPLES]
        lp = _log_probs(piece)
        rows = lp[f0 - a0: f1 - a0]
        if rows.shape[0] != f1 - f0:  # the engine returns S // 320 + 1 frames; guard the contract
            raise RuntimeError(f"hama returned {lp.shape[0]} frames for {piece.size} samples, expected more")
        out[f0:f1] = rows
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)  # exact normalisation after float32 exp
    return out

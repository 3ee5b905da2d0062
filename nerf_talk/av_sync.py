"""Audio/lip offset: how late the sound is relative to the mouth, measured from the clip itself.

Phone and broadcast videos are often a few frames out of sync. Training lip motion on out-of-sync audio teaches the
avatar to move its lips early or late, so preprocessing measures the offset and shifts the audio before anything
learns from it.

Method: for every candidate lag L (frames, positive = the audio comes after the mouth), predict the mouth opening at
frame t from the log-mel spectrum at frame t + L with ridge regression, and score the lag by the cross-validated
correlation of prediction and truth (5 contiguous folds, so neighbouring frames cannot leak between train and test).
The regression learns which spectral shapes go with an open mouth (open vowels) and a closed one (/m b p/, pauses),
which makes the peak far sharper than correlating the opening with loudness alone. Both signals are high-passed
(1 s moving average removed) first: slow drifts (a speaker leaning in, room tone changing) correlate by chance and
would otherwise give confident answers for unrelated audio. The best lag is refined to a fraction of a frame by a
parabola through its neighbours.

Confidence is the peak's margin over the best score more than 3 frames away, scaled so that 1 means a margin of 0.3.
On the shared clips the true pairs give margins of 0.32-0.42; mismatched audio, noise or time-reversed audio give
under 0.07 (measured on obama, lieu, reagan crossed with each other).

Drift (`measure_sync`): some files' sound runs at a slightly different rate from their pictures, so the offset grows
along the clip. The corpus's GRID files (sentences joined end to end) drift by 0.5 frame per 3 s sentence: 10 frames
(0.4 s) by the end of a minute, which no single offset can fix. On clips of 40 s or more the offset is measured in
20 s windows (hop 10 s) and a straight line is fitted to them. A line that changes by two frames or more over the
clip, far from flat (slope over 3 standard errors) and close to its windows, is then checked on the whole clip: with
the drift taken out, the offset must be measured more confidently than without. Then the audio is resampled as well
as shifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

MAX_OFFSET_S = 0.5
HIGHPASS_S = 1.0  # length of the moving average removed from both signals
RIDGE = 0.1  # ridge strength relative to the (z-scored) features' variance
N_FOLDS = 5
MARGIN_FOR_FULL_CONFIDENCE = 0.3
PEAK_EXCLUSION_FRAMES = 3  # the runner-up must be this far from the peak to count as a rival
MIN_SECONDS = 4.0  # below this there are too few syllables to tell lags apart
DRIFT_WINDOW_S, DRIFT_HOP_S = 20.0, 10.0  # a GRID window of 20 s gives confidence 0.4-0.8 (one in five under 0.4)
MIN_DRIFT_WINDOWS = 3  # windows needed to fit a line
# A window's offset is used for the line from this confidence on: inside a drifting window the peak is smeared (GRID:
# windows at 0.04-0.5 still sit on the line). The line itself is then checked on the whole clip.
DRIFT_WINDOW_MIN_CONFIDENCE = 0.1
DRIFT_MIN_FRAMES = 2.0  # a drift worth correcting changes the offset by at least this much over the clip (80 ms)
DRIFT_MAX_RESIDUAL_FRAMES = 1.5  # windows further than this (RMS) from the line: not a steady drift


@dataclass(frozen=True)
class SyncEstimate:
    """How the sound lies relative to the mouth: at video time t (s) the sound of the mouth is at audio time
    t + offset_s + drift * t. confidence in [0, 1]; `windows` are (centre s, offset s, confidence) of the windowed
    measurement (empty for clips too short to look for drift)."""

    offset_s: float
    drift: float
    confidence: float
    windows: tuple[tuple[float, float, float], ...] = ()

    def offset_at(self, t_s):
        return self.offset_s + self.drift * np.asarray(t_s)


def measure_offset(
    mouth_opening: np.ndarray, features: dict[str, np.ndarray], fps: float, max_offset_s: float = MAX_OFFSET_S
) -> tuple[float, float]:
    """(offset_s, confidence in [0, 1]): positive offset_s = the audio comes after the mouth.

    mouth_opening [N] (NaN where the face was not seen); features: per-frame audio features at the same fps, of which
    "mel" [N, 80] is used (compute_features(..., include=("mel",)) suffices). Clips too short or without any
    mouth/audio variation return (0.0, 0.0). The peak at the edge of the range returns confidence 0: the real offset
    may lie beyond it.
    """
    lags, scores = sync_curve(mouth_opening, features, fps, max_offset_s)
    if scores.size == 0 or not np.isfinite(scores).any():
        return 0.0, 0.0
    lag, margin, inside = peak_lag(lags, scores)
    confidence = float(np.clip(margin / MARGIN_FOR_FULL_CONFIDENCE, 0.0, 1.0)) if inside else 0.0
    return lag / fps, confidence


def peak_lag(lags: np.ndarray, scores: np.ndarray) -> tuple[float, float, bool]:
    """(lag, margin, inside) of a score curve over integer lags: the best lag refined to a fraction of a frame by a
    parabola through its neighbours, its score's margin over the best one more than PEAK_EXCLUSION_FRAMES away, and
    whether the peak lies inside the range (at an edge the true peak may lie beyond it)."""
    scores = np.where(np.isfinite(scores), scores, -1.0)
    i = int(np.argmax(scores))
    far = np.abs(lags - lags[i]) > PEAK_EXCLUSION_FRAMES
    margin = float(scores[i] - (scores[far].max() if far.any() else 0.0))
    if i == 0 or i == len(scores) - 1:
        return float(lags[i]), margin, False
    a, b, c = scores[i - 1], scores[i], scores[i + 1]
    denom = a - 2.0 * b + c
    frac = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return float(lags[i] + np.clip(frac, -0.5, 0.5)), margin, True


def measure_sync(
    mouth_opening: np.ndarray, features: dict[str, np.ndarray], fps: float, min_confidence: float = 0.4,
    max_offset_s: float = MAX_OFFSET_S,
) -> SyncEstimate:
    """Offset and drift (module docstring). Without a steady drift this is measure_offset's constant offset
    (drift 0); with one, the line's slope and the offset and confidence measured on the whole clip with the drift
    taken out."""
    offset, confidence = measure_offset(mouth_opening, features, fps, max_offset_s)
    n = min(len(mouth_opening), len(features["mel"]))
    win, hop = int(round(DRIFT_WINDOW_S * fps)), int(round(DRIFT_HOP_S * fps))
    if n < win + 2 * hop:
        return SyncEstimate(offset, 0.0, confidence)
    windows = []
    for start in range(0, n - win + 1, hop):
        end = start + win if start + win + hop <= n else n  # the last window takes the rest
        o, c = measure_offset(mouth_opening[start:end], {"mel": features["mel"][start:end]}, fps, max_offset_s)
        windows.append(((start + end) / 2.0 / fps, o, c))
        if end == n:
            break
    constant = SyncEstimate(offset, 0.0, confidence, tuple(windows))
    used = [(t, o, c) for t, o, c in windows if c >= DRIFT_WINDOW_MIN_CONFIDENCE]
    if len(used) < MIN_DRIFT_WINDOWS:
        return constant
    t, o, c = (np.array(v, np.float64) for v in zip(*used))
    # A window that holds little clear speech can land anywhere (GRID's grid_s1_03 opens with one at -10 frames
    # among -4 to -10 along the line), and one such window tilts a least-squares line: take the line through two
    # windows that most others agree with (within DRIFT_MAX_RESIDUAL_FRAMES), then refit on those.
    tol = DRIFT_MAX_RESIDUAL_FRAMES / fps
    best = None
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            slope = (o[j] - o[i]) / (t[j] - t[i])
            inliers = np.abs(o - (o[i] + slope * (t - t[i]))) <= tol
            key = (int(inliers.sum()), float(c[inliers].sum()))
            if best is None or key > best[0]:
                best = (key, inliers)
    inliers = best[1]
    if inliers.sum() < max(MIN_DRIFT_WINDOWS, int(np.ceil(2 * len(t) / 3))):
        return constant
    t, o, c = t[inliers], o[inliers], c[inliers]
    a, b, resid, rms_frames = _fit_line(t, o, c, fps)
    # Standard error of the slope from the residuals (floored at a quarter frame: four collinear points are luck).
    sigma = max(float(np.sqrt((resid ** 2).sum() / max(len(t) - 2, 1))), 0.25 / fps)
    se = sigma / np.sqrt(((t - t.mean()) ** 2).sum())
    # abs(b) * n: the change over the clip in frames (b s/s over n / fps s, times fps).
    steady = abs(b) * n >= DRIFT_MIN_FRAMES and abs(b) > 3.0 * se and rms_frames <= DRIFT_MAX_RESIDUAL_FRAMES
    if not steady:
        return constant
    # The check that counts: with the drift taken out of the audio, the whole clip must agree on one offset more
    # surely than it did as it was. Its offset and confidence are the answer.
    k = np.arange(n, dtype=np.float64)
    at = np.clip(k + b * k, 0, n - 1)  # frame k's sound, less the constant part of the offset
    mel = np.asarray(features["mel"], np.float64)[:n]
    dedrifted = np.stack([np.interp(at, k, col) for col in mel.T], 1)
    offset2, confidence2 = measure_offset(mouth_opening[:n], {"mel": dedrifted}, fps, max_offset_s)
    if confidence2 < min_confidence or confidence2 <= confidence:
        return constant
    return SyncEstimate(offset2, float(b), confidence2, tuple(windows))


def _fit_line(t, o, c, fps) -> tuple[float, float, np.ndarray, float]:
    """Weighted (by confidence) line o = a + b t; (a, b, residuals, weighted RMS residual in frames)."""
    A = np.stack([np.ones_like(t), t], 1)
    sw = np.sqrt(c)
    (a, b), *_ = np.linalg.lstsq(A * sw[:, None], o * sw, rcond=None)
    resid = o - A @ (a, b)
    return float(a), float(b), resid, float(np.sqrt(np.average(resid ** 2, weights=c)) * fps)


def sync_curve(
    mouth_opening: np.ndarray, features: dict[str, np.ndarray], fps: float, max_offset_s: float = MAX_OFFSET_S
) -> tuple[np.ndarray, np.ndarray]:
    """(lags [L] in frames, scores [L]): cross-validated correlation of the mouth opening predicted from the audio
    L frames later. Empty arrays when the clip is too short to judge."""
    y = np.asarray(mouth_opening, np.float64).reshape(-1)
    X = np.asarray(features["mel"], np.float64)
    n = min(len(y), len(X))  # tolerate a frame of difference at the end; callers normally pass equal lengths
    y, X = y[:n], X[:n]
    max_lag = int(round(max_offset_s * fps))
    lags = np.arange(-max_lag, max_lag + 1)
    valid = np.isfinite(y)
    if n < max(MIN_SECONDS * fps, 2 * max_lag + 4 * N_FOLDS) or valid.sum() < MIN_SECONDS * fps:
        return np.zeros(0, np.int64), np.zeros(0)
    # Fill gaps for the high-pass only; the gap frames themselves are left out of the fit below.
    t = np.arange(n)
    y = np.interp(t, t[valid], y[valid])
    win = max(3, int(round(HIGHPASS_S * fps)) | 1)
    y = _zscore(y - uniform_filter1d(y, win, mode="nearest"))
    X = _zscore(X - uniform_filter1d(X, win, axis=0, mode="nearest"))
    if not np.any(y) or not np.any(X):
        return np.zeros(0, np.int64), np.zeros(0)
    # The same target frames for every lag, so that the scores compare like with like.
    core = t[max_lag: n - max_lag]
    core = core[valid[core]]
    scores = np.array([_cv_correlation(y[core], X[core + lag]) for lag in lags])
    return lags, scores


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    sd = x.std(axis=0)
    return x / np.where(sd > 1e-12, sd, 1.0)


def _cv_correlation(y: np.ndarray, X: np.ndarray) -> float:
    """Correlation between y and its ridge prediction from X, each fold predicted by a model fit on the others."""
    A = np.concatenate([X, np.ones((len(X), 1))], axis=1)  # unpenalised intercept
    folds = np.array_split(np.arange(len(y)), N_FOLDS)
    # Gram matrices per fold: a training set's Gram is the total minus its fold's, one pass over the data.
    grams = [A[f].T @ A[f] for f in folds]
    rhs = [A[f].T @ y[f] for f in folds]
    gram_all, rhs_all = sum(grams), sum(rhs)
    penalty = np.full(A.shape[1], RIDGE)
    penalty[-1] = 0.0
    pred = np.empty_like(y)
    for f, g, r in zip(folds, grams, rhs):
        n_train = len(y) - len(f)
        w = np.linalg.solve(gram_all - g + np.diag(penalty * n_train), rhs_all - r)
        pred[f] = A[f] @ w
    if pred.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(pred, y)[0, 1])

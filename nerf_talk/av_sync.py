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
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d

MAX_OFFSET_S = 0.5
HIGHPASS_S = 1.0  # length of the moving average removed from both signals
RIDGE = 0.1  # ridge strength relative to the (z-scored) features' variance
N_FOLDS = 5
MARGIN_FOR_FULL_CONFIDENCE = 0.3
PEAK_EXCLUSION_FRAMES = 3  # the runner-up must be this far from the peak to count as a rival
MIN_SECONDS = 4.0  # below this there are too few syllables to tell lags apart


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
    scores = np.where(np.isfinite(scores), scores, -1.0)
    i = int(np.argmax(scores))
    far = np.abs(lags - lags[i]) > PEAK_EXCLUSION_FRAMES
    rival = scores[far].max() if far.any() else 0.0
    confidence = float(np.clip((scores[i] - rival) / MARGIN_FOR_FULL_CONFIDENCE, 0.0, 1.0))
    if i == 0 or i == len(scores) - 1:
        return float(lags[i] / fps), 0.0
    a, b, c = scores[i - 1], scores[i], scores[i + 1]
    denom = a - 2.0 * b + c
    frac = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return float((lags[i] + np.clip(frac, -0.5, 0.5)) / fps), confidence


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

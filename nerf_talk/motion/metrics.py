"""Evaluation figures for lower-face motion, all model-free (nothing downloaded, nothing trained here).

  mouth_opening(motion, points)     [N] change of the inner-lip gap (13 -> 14, vertical) over face size
  correlation(a, b)                 Pearson correlation
  landmark_error(pred, true)        mean Euclidean distance per landmark, in percent of face size
  bilabial_closure(...)             mouth opening inside /p b m/ against the clip's speech frames
  sync_figure(motion, features)     the offline mouth-sync figure (MSF), defined below

The mouth-sync figure (MSF)
---------------------------
SyncNet's LSE scores need weights from a drive; this figure needs none. It asks whether the mouth opens where the
audio says it should, with a fixed articulatory prior instead of a learned audio encoder:
  1. audio openness a[t] = sum_v P(viseme v | t) * OPENNESS[v], where P comes from the clip's phoneme posteriorgram
     (visemes.ppg_to_visemes: CTC spikes spread over +-2 frames, silence where there is no voice activity) and
     OPENNESS is the documented mouth opening of each viseme class (open vowels 1, /p b m/ and silence 0);
  2. motion openness m[t] = the mouth opening of the motion (inner-lip gap change);
  3. both are high-passed (a 1 s moving average removed: slow drifts of posture or level correlate by chance),
     then MSF = Pearson correlation of a and m, averaged over 4 s windows (hop 2 s) so one long pause does not
     dominate.
MSF is in [-1, 1]; higher = better sync. Because the prior is coarse, compare MSF between motions for the same audio
(real vs generated, shifted, mismatched), not across clips. The sync_offset_curve gives MSF at each lag; a true pair
peaks near lag 0.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d

from nerf_talk.motion import visemes as vz

UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
MSF_WINDOW_S, MSF_HOP_S, HIGHPASS_S = 4.0, 2.0, 1.0


def mouth_opening(motion: np.ndarray, points) -> np.ndarray:
    """[N] the inner lips' vertical separation change (lower lip 14 minus upper lip 13, y is down) over face size,
    from identity-normalised motion [N, K, 3] whose K points are the mesh indices `points`. 0 = the neutral gap."""
    pts = list(points)
    m = np.asarray(motion)
    return (m[:, pts.index(LOWER_LIP_INNER), 1] - m[:, pts.index(UPPER_LIP_INNER), 1]).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def landmark_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean Euclidean distance per landmark per frame between [N, K, 3] motions, in percent of face size."""
    return float(np.linalg.norm(np.asarray(pred) - np.asarray(true), axis=-1).mean() * 100.0)


def highpass(x: np.ndarray, fps: float, seconds: float = HIGHPASS_S) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x - uniform_filter1d(x, max(1, int(round(seconds * fps))), mode="nearest")


def audio_openness(features: dict, vocab) -> np.ndarray:
    """[N] expected mouth openness from the audio alone (step 1 of the MSF)."""
    from nerf_talk.motion.features import speech_mask

    vis = vz.ppg_to_visemes(np.asarray(features["ppg"]), speech_mask(features), tuple(vocab))
    return vis @ vz.OPENNESS


def sync_figure(opening: np.ndarray, features: dict, vocab, fps: float, lag: int = 0,
                expected: np.ndarray | None = None) -> float:
    """MSF of a mouth-opening track [N] against the audio features at `fps`; `lag` frames shifts the motion later
    (the motion at t is compared with the audio at t - lag). `expected` may pass a precomputed audio_openness."""
    a = audio_openness(features, vocab) if expected is None else expected
    m = np.asarray(opening, np.float64)
    n = min(len(a), len(m))
    a, m = highpass(a[:n], fps), highpass(m[:n], fps)
    if lag > 0:
        a, m = a[:-lag], m[lag:]
    elif lag < 0:
        a, m = a[-lag:], m[:lag]
    win, hop = int(MSF_WINDOW_S * fps), int(MSF_HOP_S * fps)
    if len(a) <= win:
        return correlation(a, m)
    scores = [correlation(a[s:s + win], m[s:s + win]) for s in range(0, len(a) - win + 1, hop)]
    return float(np.mean(scores))


def sync_offset_curve(opening, features, vocab, fps, max_lag: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """(lags [L], MSF [L]) for lags -max_lag..max_lag frames."""
    a = audio_openness(features, vocab)
    lags = np.arange(-max_lag, max_lag + 1)
    return lags, np.array([sync_figure(opening, features, vocab, fps, int(l), a) for l in lags])


def bilabial_closure(opening: np.ndarray, features: dict, vocab, speech_percentile: float = 50.0) -> dict:
    """How closed the mouth is on frames the recogniser is sure hold /p b m/ (bilabial viseme posterior > 0.5),
    against speech frames in general: {"n": frames, "bilabial_mean": mean opening there, "speech_median": median
    opening over speech, "closed_fraction": share of bilabial frames below the speech median}."""
    from nerf_talk.motion.features import speech_mask

    speech = speech_mask(features)
    vis = vz.ppg_to_visemes(np.asarray(features["ppg"]), speech, tuple(vocab), spread=1)
    bil = vis[:, vz.V["bilabial"]] > 0.5
    o = np.asarray(opening)
    n = min(len(o), len(bil))
    o, bil, speech = o[:n], bil[:n], speech[:n]
    ref = float(np.percentile(o[speech], speech_percentile)) if speech.any() else 0.0
    return {"n": int(bil.sum()), "bilabial_mean": float(o[bil].mean()) if bil.any() else float("nan"),
            "speech_median": ref, "closed_fraction": float((o[bil] < ref).mean()) if bil.any() else float("nan")}

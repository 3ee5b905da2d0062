"""Model-free evaluation figures on frames and per-frame signals (no network weights, nothing downloaded).

Images are uint8 [H, W, 3] (or float in [0, 1]); masks are bool [H, W]. Every function here is pure, so each can be
tested on known cases without an avatar: identical inputs give the maximal score (PSNR inf, SSIM 1, distance 0,
correlation 1, F1 1).

  psnr(pred, true, mask)            dB over the masked pixels; inf when they are identical
  ssim(pred, true, mask)            kornia's 11x11 Gaussian SSIM map, averaged over the masked pixels
  mouth_distance(a, b, points, s)   mean landmark distance over `points`, in % of the face size s
  blink_events / blink_agreement    blink events by hysteresis; F1 of matched events and the signal correlation
  landmark_jitter(points, s)        what frame-to-frame landmark motion has beyond constant velocity, % face size
  region_flicker(frames, keep)      the same for pixel values inside a region, 0-255 grey levels
  sync_scores(opening, features)    the offline mouth-sync figure (motion.metrics.sync_figure), its lag curve, a
                                    time-shifted control, and the /p b m/ closure fraction
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from nerf_talk.motion.metrics import bilabial_closure, correlation, sync_figure, audio_openness

# Blink hysteresis, as preprocess.face_motion counts blinks: an event starts above ON and ends below OFF.
BLINK_ON, BLINK_OFF = 0.5, 0.25
BLINK_TOLERANCE = 2  # frames: a rendered blink this close to a real one counts as the same blink
SYNC_SHIFTS = (5, 10)  # frames (200 and 400 ms at 25 fps): the shifted-audio control of the sync figure
SYNC_MAX_LAG = 10


def to_float(img: np.ndarray) -> np.ndarray:
    """[H, W, C] float64 in [0, 1] from uint8 (divided by 255) or float (as is)."""
    a = np.asarray(img)
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def psnr(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB (peak 1 on [0, 1] images) of the squared error averaged over the masked pixels and channels;
    inf for identical pixels, nan for an empty mask."""
    p, t = to_float(pred), to_float(true)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    se = ((p - t) ** 2).mean(-1) if p.ndim == 3 else (p - t) ** 2
    if mask is not None:
        se = se[np.asarray(mask, bool)]
    if se.size == 0:
        return math.nan
    mse = float(se.mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def ssim_map(pred: np.ndarray, true: np.ndarray, window: int = 11) -> np.ndarray:
    """[H, W] SSIM (kornia.metrics.ssim: Gaussian window, sigma 1.5, 'same' padding) averaged over channels. The
    window shrinks to the image on frames smaller than it."""
    import torch
    from kornia.metrics import ssim as kssim

    p, t = to_float(pred), to_float(true)
    if p.ndim == 2:
        p, t = p[..., None], t[..., None]
    x, y = (torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float() for a in (p, t))
    w = min(window, (min(p.shape[:2]) // 2) * 2 - 1)
    return kssim(x, y, window_size=max(w, 1), max_val=1.0)[0].mean(0).numpy().astype(np.float64)


def ssim(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the image or over the masked pixels of the full-image SSIM map (so the face score sees the
    face's own neighbourhood, not a crop's border effects); nan for an empty mask."""
    m = ssim_map(pred, true)
    if mask is not None:
        m = m[np.asarray(mask, bool)]
    return float(m.mean()) if m.size else math.nan


def mean_finite(values) -> float:
    """Mean of the values that are not nan (inf kept: identical frames make a mean PSNR infinite)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def mouth_distance(a: np.ndarray, b: np.ndarray, points, face_size: float) -> float:
    """Mean Euclidean distance between landmarks a and b [N, 478, D] over `points`, in percent of `face_size` (the
    same unit as the landmarks); frames where either is nan are left out (nan when none is left)."""
    idx = list(points)
    a, b = np.asarray(a, np.float64)[:, idx], np.asarray(b, np.float64)[:, idx]
    ok = np.isfinite(a).all((1, 2)) & np.isfinite(b).all((1, 2))
    if not ok.any():
        return math.nan
    return float(np.linalg.norm(a[ok] - b[ok], axis=-1).mean() / face_size * 100.0)


def correlation_finite(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the frames where both are finite; nan with fewer than 3 such frames or a flat
    signal (a correlation is undefined there, and 0 would read as a measured 'no relation')."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-12 or np.std(b[ok]) < 1e-12:
        return math.nan
    return correlation(a[ok], b[ok])


def blink_events(blink: np.ndarray, on: float = BLINK_ON, off: float = BLINK_OFF) -> list[tuple[int, int]]:
    """[(first frame, last frame)] of each blink in a [N] closure signal (1 = closed), with hysteresis so that
    landmark noise around one threshold does not split a blink. Nan frames end nothing and start nothing."""
    events, start = [], None
    for i, v in enumerate(np.asarray(blink, np.float64)):
        if not np.isfinite(v):
            continue
        if start is None and v > on:
            start = i
        elif start is not None and v < off:
            events.append((start, i - 1))
            start = None
    if start is not None:
        events.append((start, len(blink) - 1))
    return events


def blink_agreement(pred: np.ndarray, true: np.ndarray, tolerance: int = BLINK_TOLERANCE) -> dict:
    """How the blinks of a rendered video [N] match the real one's: events are matched one to one when they overlap
    after widening by `tolerance` frames. Returns precision, recall, F1 (nan when neither has a blink: there is
    nothing to agree on), the event counts and the correlation of the two closure signals."""
    ep, et = blink_events(pred), blink_events(true)
    used, matched = set(), 0
    for a0, a1 in ep:
        for j, (b0, b1) in enumerate(et):
            if j not in used and a0 - tolerance <= b1 and b0 - tolerance <= a1:
                used.add(j)
                matched += 1
                break
    precision = matched / len(ep) if ep else math.nan
    recall = matched / len(et) if et else math.nan
    if not ep and not et:
        f1 = math.nan
    else:
        f1 = 2 * matched / (len(ep) + len(et))
    return {"f1": f1, "precision": precision, "recall": recall, "events_rendered": len(ep), "events_real": len(et),
            "closure_corr": correlation_finite(pred, true)}


def _second_difference(x: np.ndarray) -> np.ndarray:
    """[N-2, ...] x[t] - (x[t-1] + x[t+1]) / 2: zero for any constant-velocity motion, so smooth head turns and
    steady drifts do not count, only the part that changes direction from one frame to the next."""
    return x[1:-1] - 0.5 * (x[:-2] + x[2:])


def landmark_jitter(points: np.ndarray, face_size: float) -> float:
    """Mean over frames and points of |second difference| of 2D landmark positions [N, P, 2] (nan rows = not
    detected; triples touching one are left out), in % of `face_size` (pixels). nan with no complete triple."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return math.nan
    d = _second_difference(p)  # nan wherever a frame of the triple is missing
    ok = np.isfinite(d).all((1, 2))
    if not ok.any():
        return math.nan
    return float(np.linalg.norm(d[ok], axis=-1).mean() / face_size * 100.0)


def region_flicker(frames: np.ndarray, keep: np.ndarray) -> float:
    """Mean |second difference| of pixel values (grey levels 0-255, averaged over RGB) over the pixels where `keep`
    [N, H, W] holds in all three frames of a triple. Temporal noise and popping in a region that should move smoothly
    (background, torso): a static region scores 0, a steady slide scores nearly 0, flicker scores its amplitude."""
    f = np.asarray(frames, np.float32)
    k = np.asarray(keep, bool)
    if len(f) < 3:
        return math.nan
    total, count = 0.0, 0
    for t in range(1, len(f) - 1):
        m = k[t - 1] & k[t] & k[t + 1]
        if not m.any():
            continue
        d = np.abs(f[t] - 0.5 * (f[t - 1] + f[t + 1])).mean(-1)
        total += float(d[m].sum())
        count += int(m.sum())
    if count == 0:
        return math.nan
    scale = 255.0 if np.asarray(frames).dtype == np.uint8 else 1.0
    return total / count * (255.0 / scale)


def seam_band(labels: np.ndarray, head, body, half_width: int) -> np.ndarray:
    """[N, H, W] bool: the pixels within `half_width` of where a `head` label (face, hair, ...) meets a `body` label
    (neck, torso) in label maps [N, H, W]: where a head/torso seam would show."""
    head_lut, body_lut = np.zeros(256, bool), np.zeros(256, bool)
    head_lut[[int(c) for c in head]] = True
    body_lut[[int(c) for c in body]] = True
    k3, kb = np.ones((3, 3), np.uint8), np.ones((2 * half_width + 1,) * 2, np.uint8)
    out = np.zeros(labels.shape, bool)
    for i, lab in enumerate(labels):
        h, b = head_lut[lab].astype(np.uint8), body_lut[lab].astype(np.uint8)
        edge = (cv2.dilate(h, k3) & b) | (cv2.dilate(b, k3) & h)
        out[i] = cv2.dilate(edge, kb).astype(bool)
    return out


def seam_energy(frames: np.ndarray, band: np.ndarray) -> float:
    """Mean image-gradient magnitude (Sobel on grey, grey levels per pixel) of frames [N, H, W, 3] over `band`
    [N, H, W]: a seam (an edge or a bright line the real frames do not have) raises it; a blurred boundary lowers
    it. nan when the band is empty."""
    total, count = 0.0, 0
    for f, m in zip(frames, band):
        if not m.any():
            continue
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY).astype(np.float32)
        mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)) / 8.0
        total += float(mag[m].sum())
        count += int(m.sum())
    return total / count if count else math.nan


def fill_gaps(x: np.ndarray) -> np.ndarray:
    """[N] with nan frames linearly interpolated from their finite neighbours (held at the ends); the sync figure
    needs a continuous track. All nan stays all nan."""
    x = np.asarray(x, np.float64).copy()
    ok = np.isfinite(x)
    if ok.all() or not ok.any():
        return x
    idx = np.arange(len(x))
    x[~ok] = np.interp(idx[~ok], idx[ok], x[ok])
    return x


def sync_scores(opening: np.ndarray, features: dict, vocab, fps: float, shifts=SYNC_SHIFTS,
                max_lag: int = SYNC_MAX_LAG) -> dict:
    """The offline mouth-sync figure (MSF) of a mouth-opening track [N] against the audio features of the same N
    frames, with what makes it readable:
      msf                 MSF at lag 0 (motion.metrics.sync_figure)
      msf_shifted_max     the best MSF with the motion shifted by +-`shifts` frames: a video in sync scores msf
                          above it; one that does not is no better than the audio moved 200-400 ms
      best_lag, lags, lag_curve   MSF at every lag in -max_lag..max_lag (a true pair peaks near 0)
      bilabial_closed_fraction    share of /p b m/ frames whose opening is under the speech median (lips closed
                                  where they must be); bilabial_frames = how many such frames there are
    Nan frames of `opening` (no face found) are interpolated; all-nan gives nan figures."""
    o = fill_gaps(opening)
    n = min(len(o), len(features["energy"]))
    feats = {k: np.asarray(v)[:n] for k, v in features.items()}
    o = o[:n]
    lags = np.arange(-max_lag, max_lag + 1)
    if not np.isfinite(o).all() or n < 3:
        nan = math.nan
        return {"msf": nan, "msf_shifted_max": nan, "best_lag": None, "lags": lags.tolist(),
                "lag_curve": [nan] * len(lags), "bilabial_closed_fraction": nan, "bilabial_frames": 0}
    a = audio_openness(feats, vocab)
    curve = np.array([sync_figure(o, feats, vocab, fps, int(l), a) for l in lags])
    shifted = [sync_figure(o, feats, vocab, fps, s * sign, a) for s in shifts for sign in (1, -1) if s < n - 2]
    closure = bilabial_closure(o, feats, vocab)
    return {"msf": float(curve[max_lag]), "msf_shifted_max": float(max(shifted)) if shifted else math.nan,
            "best_lag": int(lags[int(np.argmax(curve))]), "lags": lags.tolist(), "lag_curve": curve.tolist(),
            "bilabial_closed_fraction": closure["closed_fraction"], "bilabial_frames": closure["n"]}

"""Held-out evaluation of audio-to-motion on a preprocessed clip the models were not trained on.

evaluate_clip(models, dataset_dir, fit_fraction) splits the clip in time: the first `fit_fraction` of its frames fits
the personal adapter and the baselines, the rest is the test part. On the test part, each method's predicted
lower-face motion is compared with the real one (`score`):
  opening_corr   Pearson correlation of the mouth opening (metrics.mouth_opening) with the real one, both high-passed
                 at 1 s (metrics.highpass: slow posture drift would otherwise count as lip motion)
  landmark_err   mean landmark distance, % of face size (metrics.landmark_error)
  msf            offline mouth-sync figure of the prediction against the clip's audio (metrics.sync_figure)
  msf_shifted    the same with the motion shifted by +-5 and +-10 frames, the best of the four: the control a
                 synchronised motion must beat
  pbm_closed     share of /p b m/ frames with the lips closed (metrics.bilabial_closure's closed_fraction)
  opening_std_ratio  spread of the predicted opening over the real one's
  silence_open   mean opening in silence (frames over 200 ms from speech) over the real speech opening's spread
  silence_move   mean frame-to-frame change of the opening in silence over the real one's in speech (0 = still)
Methods: each generic model alone (by its name), "<name>+adapter" (the last model + the linear adapter fitted on the
first part), "<name>+finetune" (what `nerf-talk fit` builds: the last model fine-tuned on the first part, early-stopped
on that part's own tail, kept only if it wins there (motion.finetune), then the adapter that wins on that tail,
fitted or generic: adapter.select_adapter), and three baselines fitted on the first part: "mean" (the person's mean
motion, constant),
"energy_jaw" (each landmark coordinate a quadratic function of the smoothed speech level: a jaw that opens with
loudness), "ridge" (ridge regression of the motion on the model's own input features at -4..4 frames, its strength
chosen by a two-fold split of the first part). "real" scores the true motion. With align=True, before any of it,
the clip's sound/lip offset is measured on the first part by the last model (lead.offset_from_motion) and, where
sure, taken out of the whole clip: what preprocessing would give a short clip if it asked the motion model (it does
not: preprocessing sits below the motion layer).

sync_ranking(...) checks that the mouth-sync figure ranks the true audio/motion pair above the same pair time-shifted
and above motion paired with other clips' audio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d

from nerf_talk.motion import corpus as cp
from nerf_talk.motion import features as mf
from nerf_talk.motion import metrics as mx
from nerf_talk.motion.adapter import fit_adapter, select_adapter
from nerf_talk.motion.finetune import finetune
from nerf_talk.motion.lead import offset_from_motion, read_ahead
from nerf_talk.motion.model import MODEL_FPS, MotionModel
from nerf_talk.motion.predict import motion_coeffs, silence_gate
from preprocess.audio_features import MODEL_MIN_CONFIDENCE


def _slice(features: dict, a: int, b: int) -> dict:
    return {k: np.asarray(v)[a:b] for k, v in features.items()}


def energy_jaw(features: dict, motion_fit: np.ndarray, fit: slice, test: slice) -> np.ndarray:
    """Baseline: motion [T, K, 3] on the test frames as a linear function of the smoothed level, fitted on `fit`."""
    level = mf.input_features({k: features[k] for k in features})[:, -2]
    level = uniform_filter1d(level, 3, mode="nearest")
    X = np.stack([np.ones_like(level), level, level ** 2], 1)
    y = motion_fit.reshape(len(motion_fit), -1)
    coef, *_ = np.linalg.lstsq(X[fit], y, rcond=None)
    return (X[test] @ coef).reshape(-1, *motion_fit.shape[1:])


def ridge_baseline(features: dict, motion_fit: np.ndarray, fit: slice, test: slice,
                   context=(-4, -2, 0, 2, 4), alphas=(1.0, 10.0, 100.0, 1000.0)) -> np.ndarray:
    """Baseline: the person's own ridge regression from input features (at the `context` frame offsets, z-scored on
    the fit part) to their motion; motion [T, K, 3] on the test frames. The strength is the alpha of `alphas`
    (times the frame count) that predicts the second half of the fit part best from its first half."""
    x = mf.input_features(features)
    n = len(x)
    X = np.concatenate([x[np.clip(np.arange(n) + c, 0, n - 1)] for c in context], 1).astype(np.float64)
    mu, sd = X[fit].mean(0), X[fit].std(0)
    sd = np.where(sd > 1e-4, sd, np.inf)  # a column constant over the fit part carries nothing (and would explode)
    X = (X - mu) / sd
    y = motion_fit.reshape(len(motion_fit), -1).astype(np.float64)
    ym = y.mean(0)

    def solve(Xa, ya, alpha):
        return np.linalg.solve(Xa.T @ Xa + alpha * len(Xa) * np.eye(Xa.shape[1]), Xa.T @ (ya - ym))

    Xf = X[fit]
    h = len(Xf) // 2
    errs = [float(((Xf[h:] @ solve(Xf[:h], y[:h], a) + ym - y[h:]) ** 2).mean()) for a in alphas]
    W = solve(Xf, y, alphas[int(np.argmin(errs))])
    return (X[test] @ W + ym).reshape(-1, *motion_fit.shape[1:]).astype(np.float32)


def score(pred: np.ndarray, real: np.ndarray, points, features: dict, vocab, speech: np.ndarray | None = None) -> dict:
    """The figures of the module docstring for one predicted motion against the real one on the same frames;
    `speech` [N] the voice activity the predictions were gated with (default: from `features`)."""
    o_pred, o_real = mx.mouth_opening(pred, points), mx.mouth_opening(real, points)
    closure = mx.bilabial_closure(o_pred, features, vocab)
    expected = mx.audio_openness(features, vocab)
    speech = mf.speech_mask(features) if speech is None else np.asarray(speech, bool)
    silent = silence_gate(speech) == 0
    real_spread = max(float(np.std(o_real[speech])) if speech.sum() > 1 else float(np.std(o_real)), 1e-9)
    steps = np.abs(np.diff(o_real))
    real_step = max(float(steps[speech[1:]].mean() if speech[1:].sum() >= 5 else steps.mean()), 1e-9)
    quiet = silent.sum() >= 5
    return {"opening_corr": mx.correlation(mx.highpass(o_pred, MODEL_FPS), mx.highpass(o_real, MODEL_FPS)),
            "landmark_err": mx.landmark_error(pred, real),
            "msf": mx.sync_figure(o_pred, features, vocab, MODEL_FPS, expected=expected),
            "msf_shifted": max(mx.sync_figure(o_pred, features, vocab, MODEL_FPS, lag, expected)
                               for lag in (-10, -5, 5, 10)),
            "pbm_closed": closure["closed_fraction"],
            "opening_std_ratio": float(np.std(o_pred) / max(np.std(o_real), 1e-9)),
            "silence_open": float(np.abs(o_pred[silent]).mean() / real_spread) if quiet else float("nan"),
            "silence_move": float(np.abs(np.diff(o_pred))[silent[1:]].mean() / real_step) if quiet else float("nan")}


def fit_path(model: MotionModel, feats: dict, motion: np.ndarray, k: int, cfg=None):
    """What `nerf-talk fit` builds from frames [:k]: the model fine-tuned there (its own tail early-stops it and
    decides whether it is kept; motion.finetune with `cfg`), then the adapter that wins on that tail
    (adapter.select_adapter). Returns (its motion [N, K, 3] on every frame, the fine-tune's report, the adapter)."""
    tuned, report = finetune(model, _slice(feats, 0, k), motion[:k], model.basis.points, cfg)
    coeffs = motion_coeffs(tuned, feats)[0]
    chosen = select_adapter(tuned.basis, coeffs[:k], motion[:k], model.basis.points, MODEL_FPS)
    return chosen.apply(coeffs), report, chosen


def evaluate_clip(models: dict[str, MotionModel], dataset_dir: str | Path, fit_fraction: float = 0.5,
                  align: bool = False) -> dict:
    """{method: {figure: value}} on the test part of the clip; see the module docstring. `models` is an ordered
    {name: generic model}; the last one is adapted. align: the clip's sound/lip offset measured on the first part
    by the last model (lead.offset_from_motion) and, where it is sure, taken out of the whole clip before anything
    is fitted or scored; _info["av_offset_frames"] says what was applied."""
    if not models:
        raise ValueError("evaluate_clip needs at least one model")
    last = list(models.values())[-1]
    src = cp.load_real(Path(dataset_dir), last.vocab)
    feats = {k: np.asarray(v) for k, v in src.features.items()}
    motion = np.asarray(src.motion, np.float32)
    n = len(motion)
    k = int(n * fit_fraction)
    fit, test = slice(0, k), slice(k, n)
    offset = {"frames": 0.0, "measured": None, "confidence": None}
    if align:
        opening = mx.mouth_opening(last.basis.decode(motion_coeffs(last, _slice(feats, 0, k))[0]), last.basis.points)
        lag, confidence = offset_from_motion(opening, mx.mouth_opening(motion[fit], last.basis.points), MODEL_FPS)
        offset.update(measured=round(lag, 3), confidence=round(confidence, 3))
        if confidence >= MODEL_MIN_CONFIDENCE:  # the lips at t belong with the sound at t + lag: move them later
            motion = read_ahead(motion, -lag).astype(np.float32)
            offset["frames"] = round(lag, 3)
    preds = {}
    for name, model in models.items():
        preds[name] = model.basis.decode(motion_coeffs(model, feats)[0][test])
    coeffs = motion_coeffs(last, feats)[0]
    adapter = fit_adapter(coeffs[fit], motion[fit], last.basis.points)
    # applied to the whole clip: the test part's first frames see their real past (the adapter reads 4 past frames)
    preds[f"{list(models)[-1]}+adapter"] = adapter.apply(coeffs)[test]
    fitted, ft_report, chosen = fit_path(last, feats, motion, k)
    preds[f"{list(models)[-1]}+finetune"] = fitted[test]
    preds.update({
        "mean": np.broadcast_to(motion[fit].mean(0), motion[test].shape),
        "energy_jaw": energy_jaw(feats, motion[fit], fit, test),
        "ridge": ridge_baseline(feats, motion[fit], fit, test),
        "real": motion[test],
    })
    tf = _slice(feats, k, n)
    speech = mf.speech_mask(feats)[test]  # as motion_coeffs gated the predictions: judged on the whole clip
    out = {name: score(p, motion[test], last.basis.points, tf, last.vocab, speech) for name, p in preds.items()}
    out["_info"] = {"clip": Path(dataset_dir).name, "frames_fit": k, "frames_test": n - k, "adapter": adapter.info,
                    "av_offset_frames": offset, "finetune": {key: v for key, v in ft_report.items() if key != "config"},
                    "chosen_adapter": chosen.info}
    return out


def sync_ranking(clips: dict[str, Path], vocab, shifts=(3, 5, 10)) -> dict:
    """MSF of each clip's real motion with its own audio, the same shifted by +-shifts frames, and with every other
    clip's audio. Returns {"true": [...], "shifted": [...], "mismatched": [...], "true_beats_all": bool per clip}."""
    data = {}
    for name, d in clips.items():
        s = cp.load_real(Path(d), vocab)
        data[name] = ({k: np.asarray(v) for k, v in s.features.items()}, mx.mouth_opening(np.asarray(s.motion), _points(d)))
    res = {"true": {}, "shifted": {}, "mismatched": {}, "true_beats_all": {}}
    for name, (f, o) in data.items():
        t = mx.sync_figure(o, f, vocab, MODEL_FPS)
        sh = [mx.sync_figure(o, f, vocab, MODEL_FPS, lag=s * sign) for s in shifts for sign in (1, -1)]
        mm = [mx.sync_figure(o2, f, vocab, MODEL_FPS) for n2, (_, o2) in data.items() if n2 != name]
        res["true"][name], res["shifted"][name], res["mismatched"][name] = t, sh, mm
        res["true_beats_all"][name] = bool(t > max(sh + mm))
    return res


def _points(dataset_dir) -> list[int]:
    from preprocess.dataset import Dataset

    return list(Dataset(dataset_dir).step_result("face_motion")["lower_face_points"])

"""Held-out evaluation of audio-to-motion on a preprocessed clip the model was not trained on.

evaluate_clip(model, dataset_dir, fit_fraction) splits the clip in time: the first `fit_fraction` of its frames fits
the personal adapter and the baselines, the rest is the test part. On the test part, each method's predicted
lower-face motion is compared with the real one:
  opening_corr   Pearson correlation of mouth opening (metrics.mouth_opening) with the real one
  landmark_err   mean landmark distance, % of face size (metrics.landmark_error)
  msf            offline mouth-sync figure of the prediction against the clip's audio (metrics.sync_figure)
  bilabial       mean mouth opening on /p b m/ frames over the real speech median (< 1: lips closer than usual)
Methods: "generic" (the model alone), "adapted" (model + adapter fitted on the first part), and two baselines fitted
on the first part: "mean" (the person's mean motion, constant) and "energy_jaw" (each landmark coordinate a linear
function of the smoothed speech level, i.e. a jaw that opens with loudness). "real" scores the true motion.

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
from nerf_talk.motion.adapter import fit_adapter
from nerf_talk.motion.model import MODEL_FPS, MotionModel
from nerf_talk.motion.predict import close_bilabials, run_network, silence_gate


def generic_coeffs(model: MotionModel, features: dict) -> np.ndarray:
    """[N, C] the generic model's coefficients for per-frame features at MODEL_FPS, silence-gated and with the
    bilabial closures, as in predict_motion."""
    coeffs, _ = run_network(model, mf.input_features(features))
    speech = mf.speech_mask(features)
    return close_bilabials(model, (coeffs * silence_gate(speech)[:, None]).astype(np.float32), features, speech)


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


def score(pred: np.ndarray, real: np.ndarray, points, features: dict, vocab) -> dict:
    o_pred, o_real = mx.mouth_opening(pred, points), mx.mouth_opening(real, points)
    closure = mx.bilabial_closure(o_pred, features, vocab)
    real_closure = mx.bilabial_closure(o_real, features, vocab)
    return {"opening_corr": mx.correlation(o_pred, o_real), "landmark_err": mx.landmark_error(pred, real),
            "msf": mx.sync_figure(o_pred, features, vocab, MODEL_FPS),
            "bilabial": closure["bilabial_mean"] / max(real_closure["speech_median"], 1e-6),
            "opening_std_ratio": float(np.std(o_pred) / max(np.std(o_real), 1e-9))}


def evaluate_clip(model: MotionModel, dataset_dir: str | Path, fit_fraction: float = 0.5) -> dict:
    """{method: {figure: value}} on the test part of the clip; see the module docstring."""
    src = cp.load_real(Path(dataset_dir), model.vocab)
    feats = {k: np.asarray(v) for k, v in src.features.items()}
    motion = np.asarray(src.motion, np.float32)
    n = len(motion)
    k = int(n * fit_fraction)
    fit, test = slice(0, k), slice(k, n)
    coeffs = generic_coeffs(model, feats)
    adapter = fit_adapter(coeffs[fit], motion[fit], model.basis.points)
    preds = {
        "generic": model.basis.decode(coeffs[test]),
        "adapted": adapter.apply(coeffs)[test],  # applied to the whole clip: the test part's first frames
                                                 # see their real past (the adapter reads 4 past frames)
        "mean": np.broadcast_to(motion[fit].mean(0), motion[test].shape),
        "energy_jaw": energy_jaw(feats, motion[fit], fit, test),
        "real": motion[test],
    }
    tf = _slice(feats, k, n)
    out = {name: score(p, motion[test], model.basis.points, tf, model.vocab) for name, p in preds.items()}
    out["_info"] = {"clip": Path(dataset_dir).name, "frames_fit": k, "frames_test": n - k, "adapter": adapter.info}
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

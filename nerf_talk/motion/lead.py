"""The model's timing against real lips: measure how late its mouth comes, and move it earlier in the weights.

Real lips move before the sound they make (they close before a /b/ is heard, part before a vowel). A network trained
mostly on synthetic speech, whose targets follow the exact phoneme timings, learns no such anticipation: on people it
never saw, the shipped network's mouth opened 0.42 frame (17 ms) after the real one (the median over nine speakers of
the corpus it was not trained on; `bench/bench_motion.py lag`, docs/MOTION_MODEL.md). The shipped weights have 0.65
frame baked in, which left +0.02 on those speakers (the copy learns most of the shift, not all of it).

    r = model_lag(model, dataset_dir)          # {"lag": frames late (+) or early (-), "corr", "margin", "frames"}
    baked, report = bake_lead(model, inputs, frames)   # the same network, its output `frames` earlier
    lag, confidence = offset_from_motion(predicted_opening, tracked_opening, fps)   # a clip's sound/lip offset
    seconds, confidence = offset_by_model(model, audio, tracked_opening, fps)   # the same from a clip's audio

bake_lead distils the network into a copy of itself whose output at frame t is the original's at t + frames (linear
interpolation between frames). The copy keeps the architecture and its look-ahead: the anticipation comes from what
the network already sees ahead, so the live path's delay does not grow (reading the output ahead at run time would
have cost a whole frame, 40 ms, of extra look-ahead). No labels are needed, only speech: any corpus's input features.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from nerf_talk.motion import corpus as cp
from nerf_talk.motion import features as mf
from nerf_talk.motion import metrics as mx
from nerf_talk.motion.model import MODEL_FPS, MotionModel


def read_ahead(values: np.ndarray, frames: float) -> np.ndarray:
    """values [N, ...] per frame -> the same track read `frames` later (negative: earlier), linearly interpolated
    and held at the ends: row t of the result is the track at t + frames."""
    values = np.asarray(values)
    if frames == 0 or len(values) == 0:
        return values
    t = np.arange(len(values), dtype=np.float64)
    return mf.interp_frames(values, t, t + frames).astype(values.dtype)


# An unrelated pair (one clip's predicted opening against another clip's lips) still shows a peak: the 99th
# percentile of its margin over lags of +-6 frames was 0.53, 0.33, 0.25 and 0.16 on 5, 10, 20 and 40 s of speech
# (600, 156, 72 and 30 pairs of the corpus and validation clips), about 1.1 / sqrt(seconds).
NULL_MARGIN_1S = 1.1
SYNC_MAX_LAG_S = 0.24  # +-6 frames at 25 fps: the offsets phone and broadcast clips show (the corpus: up to 4.8)


def lag_curve(pred: np.ndarray, real: np.ndarray, max_lag: int, fps: float = MODEL_FPS
              ) -> tuple[np.ndarray, np.ndarray]:
    """(lags, scores): the correlation of the real mouth opening at t with the predicted one at t + lag, both
    high-passed at 1 s, over the same frames at every lag (NaN in `real`, a frame without a face, is filled in)."""
    real = np.asarray(real, np.float64)
    ok = np.isfinite(real)
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros(0)
    t = np.arange(len(real))
    real = mx.highpass(np.interp(t, t[ok], real[ok]), fps)
    pred = mx.highpass(pred, fps)
    n = min(len(real), len(pred))
    if n <= 2 * max_lag + 2:
        return np.zeros(0, np.int64), np.zeros(0)
    lags = np.arange(-max_lag, max_lag + 1)
    core = real[max_lag: n - max_lag]
    return lags, np.array([mx.correlation(pred[max_lag + lag: n - max_lag + lag], core) for lag in lags])


def offset_from_motion(pred: np.ndarray, real: np.ndarray, fps: float) -> tuple[float, float]:
    """(lag in frames, confidence): how late the sound comes after the lips, judged by a motion model's mouth
    opening predicted from the sound (`pred`) against the tracked one (`real`, same frames at `fps`). confidence is
    the peak's margin (av_sync.peak_lag) over what unrelated audio reaches on a clip this long 1 time in 100
    (NULL_MARGIN_1S). On a clip's own audio a peak from 0.5 on is nearly always the true one (within a frame on 89-96 %
    of 6-14 s GRID pieces with known offsets: preprocess.audio_features.MODEL_MIN_CONFIDENCE). A peak at the edge of
    the +-SYNC_MAX_LAG_S range gives 0."""
    from nerf_talk.av_sync import peak_lag

    lags, scores = lag_curve(pred, real, max(1, int(round(SYNC_MAX_LAG_S * fps))), fps)
    if scores.size == 0:
        return 0.0, 0.0
    lag, margin, inside = peak_lag(lags, scores)
    seconds = np.isfinite(np.asarray(real, np.float64)).sum() / fps
    return lag, float(margin / (NULL_MARGIN_1S / np.sqrt(seconds))) if inside else 0.0


def offset_by_model(model: MotionModel, audio: np.ndarray, mouth: np.ndarray, fps: float) -> tuple[float, float]:
    """(seconds, confidence): how late the sound of a clip comes after its lips, judged by `model`'s mouth opening
    predicted from the 16 kHz `audio` against the tracked `mouth` opening [N] at `fps` (offset_from_motion's
    confidence). (0, 0) when the audio is too short or silent to predict from."""
    from nerf_talk.errors import UserError
    from nerf_talk.media import AUDIO_RATE
    from nerf_talk.motion.predict import predict_motion

    try:
        pred = predict_motion(model, audio, AUDIO_RATE, fps)["mouth_opening"]
    except UserError:  # too short or silent: nothing to measure with
        return 0.0, 0.0
    lag, confidence = offset_from_motion(pred, np.asarray(mouth, np.float64), fps)
    return lag / fps, confidence


def offset_by_default_model(audio: np.ndarray, mouth: np.ndarray, fps: float) -> tuple[float, float]:
    """offset_by_model with the shipped generic model. Preprocessing calls it by name where the layer above asks it to
    (PreprocessConfig.offset_model, set by nerf_talk.api.preprocess): preprocessing sits below the motion layer and
    cannot import it."""
    from nerf_talk.motion.predict import load_default_model

    return offset_by_model(load_default_model(), audio, mouth, fps)


def model_lag(model: MotionModel, dataset_dir: str | Path, max_lag: int = 8) -> dict:
    """How late the model's mouth opening comes against a preprocessed clip's real lips: {"lag": frames at
    MODEL_FPS (positive: the model is late; refined by av_sync.peak_lag's parabola), "corr": the correlation at the
    best whole lag, "margin": its lead over the best lag more than 3 frames away, "frames"}. Both openings are
    high-passed at 1 s and compared over the same frames at every lag. The model runs as predict_motion runs it
    (silence gate and bilabial closures included)."""
    from nerf_talk.av_sync import peak_lag
    from nerf_talk.motion.predict import motion_coeffs

    src = cp.load_real(Path(dataset_dir), model.vocab)
    feats = {k: np.asarray(v) for k, v in src.features.items()}
    real = mx.mouth_opening(np.asarray(src.motion), model.basis.points)
    pred = mx.mouth_opening(model.basis.decode(motion_coeffs(model, feats)[0]), model.basis.points)
    n = min(len(real), len(pred))
    if n <= 2 * max_lag + 25:
        raise ValueError(f"{dataset_dir}: {n} frames are too few to measure a lag of up to {max_lag} frames")
    lags, scores = lag_curve(pred, real, max_lag)
    lag, margin, _ = peak_lag(lags, scores)
    return {"lag": lag, "corr": float(scores.max()), "margin": margin, "frames": int(n)}


def bake_lead(model: MotionModel, inputs: list[np.ndarray], frames: float, steps: int = 1500, lr: float = 3e-4,
              batch: int = 16, window: int = 150, seed: int = 0, progress=None) -> tuple[MotionModel, dict]:
    """(a copy of `model` whose coefficients come `frames` earlier, a report). inputs: model input frames [N, D]
    (features.input_features) of any speech, one array per utterance. The copy learns, on windows drawn in
    proportion to the utterances' lengths, the original's coefficients read `frames` ahead (read_ahead) and its
    blink logits unchanged, with dropout off (it copies a function, it does not learn from data). The loss counts
    only frames whose whole receptive field lies inside the window. `progress(step, loss)` is called every step.
    The report gives the coefficient error (in the basis's unit, squared) against the target before and after, over
    the inputs; meta["lead_baked_frames"] adds `frames` to what the model already had baked in."""
    if not inputs:
        raise ValueError("bake_lead needs input features of some speech")
    teacher = model.net.eval()
    lengths = np.array([len(x) for x in inputs], np.float64)
    with torch.no_grad():
        outs = [teacher(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]) for x in inputs]
    targets = [torch.from_numpy(read_ahead(c[0].numpy(), frames)) for c, _ in outs]
    blinks = [b[0] for _, b in outs]
    student = copy.deepcopy(teacher).eval()
    unit = float(np.sqrt(np.mean(model.basis.scale ** 2)))
    left, look = student.receptive_left, student.cfg.lookahead
    if window <= left + look + 1:
        raise ValueError(f"window must exceed the receptive field ({left} + {look} frames), is {window}")
    scored = slice(left, window - look)

    def error() -> float:
        with torch.no_grad():
            errs = [float((((student(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None])[0][0] - y) / unit)
                           ** 2).mean()) for x, y in zip(inputs, targets)]
        return float(np.average(errs, weights=lengths))

    def pad(t: torch.Tensor) -> torch.Tensor:  # an utterance shorter than the window: its last frame held
        return torch.cat([t, t[-1:].expand(window - len(t), *t.shape[1:])]) if len(t) < window else t

    before = error()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        xs, ys, bs = [], [], []
        for i in rng.choice(len(inputs), batch, p=lengths / lengths.sum()):
            s = int(rng.integers(0, max(1, len(inputs[i]) - window + 1)))
            xs.append(pad(torch.from_numpy(np.ascontiguousarray(inputs[i][s:s + window], np.float32))))
            ys.append(pad(targets[i][s:s + window]))
            bs.append(pad(blinks[i][s:s + window]))
        coeffs, logits = student(torch.stack(xs))
        loss = ((((coeffs - torch.stack(ys)) / unit) ** 2)[:, scored].mean()
                + 0.1 * ((logits - torch.stack(bs)) ** 2)[:, scored].mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    baked = MotionModel(student, model.basis, model.vocab, model.viseme_motion,
                        dict(model.meta, lead_baked_frames=round(float(model.meta.get("lead_baked_frames", 0.0))
                                                                 + frames, 4)))
    report = {"frames": frames, "steps": steps, "utterances": len(inputs), "input_frames": int(lengths.sum()),
              "error_before": round(before, 6), "error_after": round(error(), 6)}
    return baked, report

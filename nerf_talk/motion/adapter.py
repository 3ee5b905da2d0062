"""The personal adapter: generic motion coefficients -> one person's lower-face motion.

People differ in how far they open their mouth, how much they round or spread their lips, and which landmarks move
together. The adapter learns that from the person's own dataset (their speech and their lip motion):

  1. the person's basis: PCA of their lower_face_motion [N, K, 3] (mean fixed at 0 = their neutral face), Cp components;
  2. a linear map A [len(CONTEXT) * C, Cp] from the generic model's coefficients g at frames t + CONTEXT (the current
     and past frames only: no look-ahead is added) to their coefficients p [N, Cp], by ridge regression without an
     intercept, so that silence (g = 0) stays their neutral, closed mouth. The past frames let it learn the
     person's timing (some lead or trail the sound) and smoothness: on held-out lieu, 0.29 -> 0.33 opening
     correlation against the current frame alone;
  3. amplitude calibration: a regression towards the mean shrinks its output by the correlation (the classic
     "mouth barely moves" failure), so the whole output is rescaled by one gain until the mouth opening's spread
     over the fitting frames equals the person's real one (capped at MAX_GAIN). One gain, not one per component:
     the weakly predicted minor components would otherwise be inflated into noise.

Fitting is closed-form: milliseconds for minutes of video. A fitted map needs data to beat the generic model's own
motion (`generic_adapter`: steps 1 and 3, no map learnt); `select_adapter`, which `nerf-talk fit` runs, keeps the
fitted one only when it scores higher on the clip's held-out tail. The adapter runs at the model's frame rate
(MODEL_FPS); predict.py applies it before resampling to the video's rate. Saved as tensors + JSON metadata (to_tensors / from_tensors) for the avatar file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_GAIN = 4.0
CONTEXT = (-4, -3, -2, -1, 0)  # frame offsets of the generic coefficients the adapter reads
RIDGE = 1e-2  # relative to the mean variance of the generic coefficients


@dataclass
class PersonalAdapter:
    points: list[int]  # landmark indices (same as the generic basis)
    components: np.ndarray  # [Cp, K*3] the person's basis (orthonormal rows)
    A: np.ndarray  # [len(context) * C, Cp] generic (stacked over the context frames) -> person coefficients
    gain: np.ndarray  # [Cp] amplitude calibration (one value repeated; a vector so a later fit may differ)
    info: dict  # fit figures
    context: tuple[int, ...] = CONTEXT

    def person_coeffs(self, generic: np.ndarray) -> np.ndarray:
        """[N, C] generic coefficients -> [N, Cp] the person's PCA coefficients (what the renderer conditions on)."""
        return (stack_context(generic, self.context) @ self.A) * self.gain

    def apply(self, generic: np.ndarray) -> np.ndarray:
        """[N, C] generic coefficients -> [N, K, 3] lower-face motion in the person's space."""
        p = self.person_coeffs(generic)
        return (p @ self.components).reshape(len(p), -1, 3).astype(np.float32)

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict]:
        return ({"components": self.components.astype(np.float32), "A": self.A.astype(np.float32),
                 "gain": self.gain.astype(np.float32)},
                {"points": self.points, "info": self.info, "context": list(self.context)})

    @staticmethod
    def from_tensors(tensors: dict, meta: dict) -> "PersonalAdapter":
        return PersonalAdapter(list(meta["points"]), np.asarray(tensors["components"]), np.asarray(tensors["A"]),
                               np.asarray(tensors["gain"]), dict(meta.get("info", {})),
                               tuple(meta.get("context", CONTEXT)))


def stack_context(generic: np.ndarray, context=CONTEXT) -> np.ndarray:
    """[N, C] -> [N, len(context) * C]: row t holds generic[t + c] for each offset c (<= 0), zeros before the
    start (the coefficients of silence)."""
    g = np.asarray(generic, np.float32)
    out = []
    for c in context:
        if c > 0:
            raise ValueError(f"the adapter reads no future frames, got offset {c}")
        shifted = np.zeros_like(g)
        if -c < len(g):
            shifted[-c:] = g[: len(g) + c]
        out.append(shifted)
    return np.concatenate(out, 1)


def _fitting_frames(generic: np.ndarray, motion: np.ndarray, n_components: int, context
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(g stacked over the context [N, len(context) * C], y the person's motion [N, K*3], their components [Cp, K*3]
    (step 1: PCA with the mean fixed at 0), the fit's info) for either adapter."""
    g = stack_context(generic, context).astype(np.float64)
    y = np.asarray(motion, np.float64).reshape(len(motion), -1)
    if len(g) != len(y):
        raise ValueError(f"generic has {len(g)} frames, motion {len(y)}")
    if len(g) < 25:
        raise ValueError(f"the adapter needs at least 25 frames to fit, got {len(g)}")
    vals, vecs = np.linalg.eigh(y.T @ y / len(y))
    order = np.argsort(vals)[::-1][:n_components]
    info = {"frames": int(len(g)), "n_components": int(n_components),
            "explained_variance": float(vals[order].sum() / max(vals.sum(), 1e-12))}
    return g, y, vecs[:, order].T, info


def _adapter(A: np.ndarray, comps: np.ndarray, g: np.ndarray, y: np.ndarray, points, context, info: dict
             ) -> PersonalAdapter:
    """The adapter of map A with step 3's amplitude gain, calibrated on the fitting frames (g stacked, y real)."""
    from nerf_talk.motion.metrics import mouth_opening

    o_true = mouth_opening(y.reshape(len(y), -1, 3), points)
    o_pred = mouth_opening((g @ A @ comps).reshape(len(y), -1, 3), points)
    g0 = float(np.clip(np.std(o_true) / max(float(np.std(o_pred)), 1e-9), 0.0, MAX_GAIN))
    gain = np.full(comps.shape[0], g0)
    return PersonalAdapter(list(points), comps.astype(np.float32), A.astype(np.float32), gain.astype(np.float32),
                           {**info, "gain": round(g0, 3)}, tuple(context))


def fit_adapter(generic: np.ndarray, motion: np.ndarray, points, n_components: int = 12,
                ridge: float = RIDGE, context=CONTEXT) -> PersonalAdapter:
    """Fit on aligned frames: generic coefficients [N, C] (the generic model run on the person's audio) and the
    person's real lower_face_motion [N, K, 3]."""
    g, y, comps, info = _fitting_frames(generic, motion, n_components, context)
    p = y @ comps.T  # [N, Cp]
    lam = ridge * float(np.mean(np.sum(g * g, 0))) + 1e-12
    A = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ p)  # [C, Cp]
    return _adapter(A, comps, g, y, points, context, {"kind": "fitted", **info})


def generic_adapter(basis, generic: np.ndarray, motion: np.ndarray, points, n_components: int = 12,
                    context=CONTEXT) -> PersonalAdapter:
    """No map learnt: the generic model's own motion (basis: its GenericMotionBasis, whose coefficients `generic`
    [N, C] are) in the person's components, with the amplitude gain of step 3 fitted on these frames. The
    person's neutral face and lip shapes come from their basis; the timing is the generic model's."""
    g, y, comps, info = _fitting_frames(generic, motion, n_components, context)
    c = np.asarray(generic).shape[1]
    A = np.zeros((g.shape[1], comps.shape[0]))
    now = list(context).index(0)
    A[now * c:(now + 1) * c] = np.asarray(basis.components, np.float64) @ comps.T
    return _adapter(A, comps, g, y, points, context, {"kind": "generic", **info})


# A fitted adapter maps 5 x 16 generic coefficients to 12 of the person's: on a short clip it learns that clip's
# noise. Held out from training, it lowered the opening correlation on reagan (13 s to fit: 0.39 -> 0.30) and on
# the ten public clips (2.5-10 s: 0.447 -> 0.391; docs/MOTION_MODEL.md). So it is fitted only when the clip's tail can
# judge it (the fine-tune's 10 s), and kept only when it beats the generic motion there.
MIN_JUDGE_FRAMES = 250
TAIL_FRACTION = 0.2


def select_adapter(basis, generic: np.ndarray, motion: np.ndarray, points, fps: float, n_components: int = 12
                   ) -> PersonalAdapter:
    """What `nerf-talk fit` embeds: the fitted adapter (fit_adapter) when, fitted on the first 80 % of these frames,
    its mouth opening on the last 20 % correlates better (1 s high-pass) with the real one than the generic
    motion's (generic_adapter) does; else the generic adapter. Either is then fitted on all the frames. Clips under
    MIN_JUDGE_FRAMES get the generic adapter. info["kind"], info["reason"] and info["tail"] say what was chosen and
    why."""
    from nerf_talk.motion import metrics as mx

    n = len(generic)
    n_components = min(n_components, n - 1)
    if n < MIN_JUDGE_FRAMES:
        a = generic_adapter(basis, generic, motion, points, n_components)
        a.info["reason"] = f"clip too short to judge a fitted adapter ({n} frames < {MIN_JUDGE_FRAMES})"
        return a
    make = {"fitted": lambda g, m, c: fit_adapter(g, m, points, c),
            "generic": lambda g, m, c: generic_adapter(basis, g, m, points, c)}
    split = int(round(n * (1 - TAIL_FRACTION)))
    real = mx.highpass(mx.mouth_opening(np.asarray(motion)[split:], points), fps)
    tail = {}
    for kind, fit in make.items():
        pred = fit(generic[:split], motion[:split], min(n_components, split - 1)).apply(generic)[split:]
        tail[kind] = round(mx.correlation(mx.highpass(mx.mouth_opening(pred, points), fps), real), 4)
    kind = "fitted" if tail["fitted"] > tail["generic"] else "generic"
    a = make[kind](generic, motion, n_components)
    a.info["reason"] = (f"the fitted adapter scores higher on the clip's tail ({tail['fitted']:.3f} > "
                        f"{tail['generic']:.3f})" if kind == "fitted" else
                        f"the fitted adapter does not score higher on the clip's tail ({tail['fitted']:.3f} <= "
                        f"{tail['generic']:.3f})")
    a.info["tail"] = tail
    return a

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

Fitting is closed-form: milliseconds for minutes of video. The adapter runs at the model's frame rate (MODEL_FPS);
predict.py applies it before resampling to the video's rate. Saved as tensors + JSON metadata (to_tensors / from_tensors) for the avatar file.
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


def fit_adapter(generic: np.ndarray, motion: np.ndarray, points, n_components: int = 12,
                ridge: float = RIDGE, context=CONTEXT) -> PersonalAdapter:
    """Fit on aligned frames: generic coefficients [N, C] (the generic model run on the person's audio) and the
    person's real lower_face_motion [N, K, 3]."""
    g = stack_context(generic, context).astype(np.float64)
    y = np.asarray(motion, np.float64).reshape(len(motion), -1)
    if len(g) != len(y):
        raise ValueError(f"generic has {len(g)} frames, motion {len(y)}")
    if len(g) < 25:
        raise ValueError(f"the adapter needs at least 25 frames to fit, got {len(g)}")
    vals, vecs = np.linalg.eigh(y.T @ y / len(y))
    order = np.argsort(vals)[::-1][:n_components]
    comps = vecs[:, order].T  # [Cp, K*3]
    p = y @ comps.T  # [N, Cp]
    lam = ridge * float(np.mean(np.sum(g * g, 0))) + 1e-12
    A = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ p)  # [C, Cp]
    pred = g @ A
    from nerf_talk.motion.metrics import mouth_opening

    o_true = mouth_opening(y.reshape(len(y), -1, 3), points)
    o_pred = mouth_opening((pred @ comps).reshape(len(y), -1, 3), points)
    g0 = float(np.clip(np.std(o_true) / max(float(np.std(o_pred)), 1e-9), 0.0, MAX_GAIN))
    gain = np.full(comps.shape[0], g0)
    info = {"frames": int(len(g)), "n_components": int(n_components),
            "explained_variance": float(vals[order].sum() / max(vals.sum(), 1e-12)),
            "gain": round(g0, 3)}
    return PersonalAdapter(list(points), comps.astype(np.float32), A.astype(np.float32), gain.astype(np.float32), info,
                           tuple(context))

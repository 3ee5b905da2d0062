"""The two linear bases of lower-face motion. Their maths differ on purpose, so they carry different names:

* `GenericMotionBasis`: what the generic audio-to-motion network predicts in. Pooled over the corpus (each clip
  weighted equally), mean fixed at zero (every person's neutral face is coefficients 0, so silence maps to 0 exactly),
  each coefficient with its own spread (the network's output scale); encode/decode without scaling.
* `PersonalMotionBasis`: what one avatar's head field is conditioned on. A PCA of that person's training frames with
  their own mean, all coefficients divided by one scale (the first component's spread): normalising each to unit
  variance would blow the near-noise trailing components up to the size of the real motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GenericMotionBasis:
    """The generic motion basis: motion [T, K*3] = mean + coeffs [T, C] @ components [C, K*3]."""

    points: list[int]  # mesh landmark indices of the K points (preprocess.mesh_topology.LOWER_FACE)
    mean: np.ndarray  # [K*3]
    components: np.ndarray  # [C, K*3] orthonormal rows
    scale: np.ndarray  # [C] std of each coefficient over the corpus (training normalises by it)

    def encode(self, motion: np.ndarray) -> np.ndarray:
        """[T, K, 3] -> [T, C]"""
        flat = np.asarray(motion, np.float32).reshape(len(motion), -1)
        return (flat - self.mean) @ self.components.T

    def decode(self, coeffs: np.ndarray) -> np.ndarray:
        """[T, C] -> [T, K, 3]"""
        return (self.mean + np.asarray(coeffs, np.float32) @ self.components).reshape(len(coeffs), -1, 3)

    @staticmethod
    def fit(motions: list[np.ndarray], points: list[int], n: int) -> "GenericMotionBasis":
        """PCA of the pooled motion [sum T, K*3]; each clip weighted equally so a long clip does not own the basis.

        The mean is fixed at zero: zero motion is every person's neutral face, which must stay reachable as
        coeffs = 0 (silence maps to 0 exactly).
        """
        covs = []
        for m in motions:
            flat = np.asarray(m, np.float64).reshape(len(m), -1)
            covs.append(flat.T @ flat / len(flat))
        cov = np.mean(covs, 0)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:n]
        comps = vecs[:, order].T
        # Sign convention: each component's largest entry positive, so retraining gives comparable bases.
        comps *= np.sign(comps[np.arange(n), np.abs(comps).argmax(1)])[:, None]
        return GenericMotionBasis(list(points), np.zeros(cov.shape[0], np.float32), comps.astype(np.float32),
                                  np.sqrt(np.maximum(vals[order], 1e-12)).astype(np.float32))


@dataclass
class PersonalMotionBasis:
    """A per-person linear (PCA) basis of the lower-face motion: coefficients = (x - mean) @ components.T / scale
    (see the module docstring for why one scale)."""

    mean: torch.Tensor  # [D] (D = K * 3)
    components: torch.Tensor  # [C, D] orthonormal rows
    scale: torch.Tensor  # [C] the first coefficient's standard deviation over the training frames, repeated

    @classmethod
    def fit(cls, motion: np.ndarray, n_components: int) -> "PersonalMotionBasis":  # motion [N, K, 3] training frames
        x = torch.from_numpy(np.asarray(motion, np.float64).reshape(len(motion), -1))
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        c = max(1, min(n_components, int((s > 1e-9 * max(float(s[0]), 1e-30)).sum())))
        scale = (s[:1] / max(len(x) - 1, 1) ** 0.5).expand(c)
        return cls(mean.float(), vh[:c].float(), scale.clamp(min=1e-8).float().contiguous())

    @classmethod
    def of_model(cls, model) -> "PersonalMotionBasis":
        """The basis an AvatarModel carries (its motion_mean / motion_components / motion_scale buffers), on the CPU."""
        return cls(*(t.detach().cpu() for t in (model.motion_mean, model.motion_components, model.motion_scale)))

    def coefficients(self, motion: np.ndarray | torch.Tensor) -> torch.Tensor:  # [N, K, 3] -> [N, C]
        x = torch.as_tensor(np.asarray(motion, np.float32)).reshape(len(motion), -1)
        if x.shape[1] != self.components.shape[1]:
            raise ValueError(f"motion has {x.shape[1] // 3} points, the basis {self.components.shape[1] // 3}")
        return (x - self.mean) @ self.components.T / self.scale

    def explained(self, motion: np.ndarray) -> float:
        """Fraction of the motion's variance the basis reconstructs."""
        x = torch.as_tensor(np.asarray(motion, np.float32)).reshape(len(motion), -1) - self.mean
        rec = (x @ self.components.T) @ self.components
        return float(1 - ((x - rec) ** 2).sum() / (x**2).sum().clamp(min=1e-20))

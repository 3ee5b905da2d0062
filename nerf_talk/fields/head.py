"""The head's radiance field in the head's canonical frame (metres, OpenCV-like axes, head at the origin).

Split as nerfstudio splits fields: `get_density(positions, motion)` is the geometry, `get_outputs(geo_features, codes)`
the colour, where the per-frame codes enter:
  * mouth geometry: inside the mouth region (below) the motion coefficients also change the density and the
    geometry features, through a residual MLP over (hash features, motion) whose last layer starts at 0. Without it
    the density is the same for every frame, an open mouth can only be painted dark on closed lips by the colour
    branch, and a short fit does not learn that: the mouth then barely follows the motion. The occupancy grid asks
    `density_fn`, which in the mouth region takes the largest density over a few probe motions, so no mouth shape
    of the person's range is culled;
  * motion: the lower face's PCA coefficients, embedded, then gated per point by a "region attention" computed from
    the point's geometry features, so a coefficient can only act where the field learns that motion shows (lips, jaw),
    and by the mouth region's feathered box (it cannot act on the cheeks, eyes or forehead at all);
  * eyes: (left openness, right openness, blink), cut to the eye region's feathered box (the template's eye contours
    and lids): fed everywhere, a short fit spread the code over the whole face as a faint tint and never learnt to
    close the eyes (an open and a closed eye code rendered a held-out pose within 4 grey levels);
  * latent: a small per-frame code for what motion does not explain (lighting drift, small misfits). It cannot carry
    lip motion: it is switched off inside the mouth region (a box around the template's lip and jaw landmarks, so
    also where an open mouth would be in a frame whose mouth is closed); the trainer also drops it on random rays (so
    the field renders well with the code 0 that unseen frames get), decays it and decorrelates it from the motion.
Codes are arguments of every call and are never stored on the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cuda_ext import HashGrid, HashGridConfig, box_weight, linear_layers, mlp_forward, unit_box_density
from nerf_talk.config import HeadConfig
from nerf_talk.fields.mlp import mlp, run_mlp
from nerf_talk.fields.warp import FaceWarp

N_EYE = 3  # left openness, right openness, blink
MOUTH_FEATHER = 0.2  # share of the mouth box's size (per axis, per side) over which the motion residual fades out
EYE_FEATHER = 0.2  # the same for the eye code in the eye box
NO_BOX = [-1e3, -1e3, -1e3, 1e3, 1e3, 1e3]  # "everywhere" (metres): a field built without an eye box
# The occupancy grid probes motions this far (metres) around the mouth box: the warp moves the chin and lower lip
# below and in front of where they rest (a jaw drop of 1-1.5 cm at the chin in speech), into cells that the neutral
# face leaves empty.
PROBE_GROW = 0.02


@dataclass
class HeadCodes:
    """Per-ray conditioning of the head field (gathered per sample by the renderer), or one row shared by every ray
    (a whole frame: the field then embeds the motion once, not once per sample)."""

    motion: torch.Tensor  # [R, K] motion coefficients, or [1, K]
    eyes: torch.Tensor  # [R, 3], or [1, 3]
    latent: torch.Tensor | None = None  # [R, latent_dim] (or [1, latent_dim]), or None for 0 (unseen frames)

    def index(self, idx: torch.Tensor) -> "HeadCodes":
        """The codes of rays `idx` [S] (one row per sample); shared codes stay shared."""
        if self.motion.shape[0] == 1:
            return self
        return HeadCodes(self.motion[idx], self.eyes[idx], None if self.latent is None else self.latent[idx])


def head_box(template: np.ndarray, padding: float, neck_extension: float) -> list[float]:
    """Axis-aligned box (xmin, ymin, zmin, xmax, ymax, zmax) around the landmark template [478, 3], grown by
    `padding` x its size on each side (hair, ears, the back of the head) and by `neck_extension` x its height
    downwards (+y in the head frame: the chin and the top of the neck)."""
    t = np.asarray(template, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 3 or not np.isfinite(t).all():
        raise ValueError(f"template must be a finite [P, 3] array, got shape {t.shape}")
    lo, hi = t.min(0), t.max(0)
    ext = hi - lo
    # The face landmarks cover only the front of the head; its depth is about its width, so size z like x.
    ext[2] = max(ext[2], ext[0])
    lo2 = lo - padding * ext
    hi2 = hi + padding * ext
    hi2[1] += neck_extension * ext[1]
    hi2[2] = max(hi2[2], lo[2] + (1 + padding) * ext[2])
    return [float(v) for v in np.concatenate([lo2, hi2])]


def mouth_region(template: np.ndarray, margin: float = 0.01, depth: float = 0.05) -> list[float]:
    """Box around the template's lips and jaw landmarks, grown by `margin` metres and extended `depth` metres into the
    head (+z) for the mouth interior: where lip motion shows, hence where the per-frame latent is switched off."""
    from preprocess.mesh_topology import LOWER_FACE

    t = np.asarray(template, dtype=np.float64)[list(LOWER_FACE)]
    lo, hi = t.min(0) - margin, t.max(0) + margin
    hi[2] += depth
    return [float(v) for v in np.concatenate([lo, hi])]


def eye_region(template: np.ndarray, margin: float = 0.01, depth: float = 0.015) -> list[float]:
    """Box around the template's two eye contours, grown by `margin` metres (the lids above and below, the corners)
    and extended `depth` metres into the head (+z) and `margin` out of it: where a blink shows, hence where the eye
    code acts."""
    from preprocess.mesh_topology import LEFT_EYE_LOOP, RIGHT_EYE_LOOP

    t = np.asarray(template, dtype=np.float64)[list(LEFT_EYE_LOOP + RIGHT_EYE_LOOP)]
    lo, hi = t.min(0) - margin, t.max(0) + margin
    hi[2] += depth - margin
    return [float(v) for v in np.concatenate([lo, hi])]


class HeadField(nn.Module):
    def __init__(self, cfg: HeadConfig, aabb: list[float], n_motion: int, n_frames: int,
                 mouth_box: list[float] | None = None, backend: str | None = None,
                 eye_box: list[float] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_motion = n_motion
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32))
        # No mouth box: an empty one (min > max), the latent acts everywhere.
        self.register_buffer("mouth_box", torch.tensor(mouth_box or [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]))
        # No eye box: the eye code acts everywhere. (A stored avatar's own box replaces this one when it is loaded.)
        self.register_buffer("eye_box", torch.tensor(eye_box or NO_BOX, dtype=torch.float32))
        self.grid = HashGrid(HashGridConfig(3, cfg.n_levels, cfg.n_features_per_level, cfg.log2_table_size,
                                            cfg.base_resolution, cfg.finest_resolution), backend=backend)
        enc = self.grid.cfg.out_dim
        self.density_mlp = mlp(enc, cfg.hidden, 1 + cfg.geo_features)
        self.motion_embed = mlp(n_motion, cfg.hidden, cfg.motion_code)
        self.attention = nn.Linear(cfg.geo_features, cfg.motion_code)
        self.color_mlp = mlp(cfg.geo_features + cfg.motion_code + N_EYE + cfg.latent_dim, cfg.hidden, 3, n_hidden=2)
        # Motion -> density and geometry features inside the mouth box. The raw coefficients go in unembedded (they
        # are already scaled to ~unit size by the basis); zero last layer: training starts from the motion-free field.
        self.mouth_mlp = mlp(enc + n_motion, cfg.hidden, 1 + cfg.geo_features)
        nn.init.zeros_(self.mouth_mlp[-1].weight)
        nn.init.zeros_(self.mouth_mlp[-1].bias)
        # Per-frame latents start at 0 = the code every unseen frame gets.
        self.latents = nn.Parameter(torch.zeros(max(n_frames, 1), cfg.latent_dim))
        # The tracked landmarks move samples back to the neutral face (identity until filled: FaceWarp).
        self.warp = FaceWarp(n_motion, backend)
        self.backend = backend  # cuda_ext's, for the fused MLPs and the box weights (the grid and warp keep their own)

    def normalize(self, positions: torch.Tensor) -> torch.Tensor:  # [N, 3] head frame -> [N, 3] in [0, 1]
        lo, hi = self.aabb[:3], self.aabb[3:]
        return (positions - lo) / (hi - lo)

    def get_density(self, positions: torch.Tensor, motion: torch.Tensor | None = None,
                    eyes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N, 3] (head frame), motion [N, K] (or [1, K] shared) coefficients and eyes [N, 3] (or [1, 3]) of
        each sample's frame (None: the neutral face) -> density [N] (1/metre), geometry features [N, geo_features].
        The positions are warped to the neutral face first (FaceWarp; the gap between parted lips into the mouth
        interior's slab); the mouth residual then adds what the warp cannot make."""
        x = self.normalize(self.warp(positions, motion, eyes))
        enc = self.grid(x)  # (the encoding clamps to the box itself; the density is 0 outside it, below)
        h = run_mlp(self.density_mlp, enc, backend=self.backend)
        if motion is not None:
            # Only the samples in the mouth box pay for the residual (a few percent of a frame's samples; its
            # feathered weight is 0 on the box's faces and outside).
            w = self.mouth_weight(positions)
            idx = torch.nonzero(w > 0).reshape(-1)
            if idx.numel():
                res = run_mlp(self.mouth_mlp, enc.index_select(0, idx), motion if motion.shape[0] == 1 else motion[idx],
                              self.backend)
                h.index_add_(0, idx, res * w.index_select(0, idx)[:, None])
        # exp gives the large densities an opaque surface needs within a few 4 mm steps; clamp keeps it finite.
        sigma = unit_box_density(h[:, 0], x, self.cfg.density_bias, 15.0, backend=self.backend)
        return sigma, h[:, 1:]

    def in_mouth_region(self, positions: torch.Tensor, grow: float = 0.0) -> torch.Tensor:  # [N, 3] -> [N] bool
        """Inside the mouth box, grown by `grow` metres on every side."""
        return ((positions >= self.mouth_box[:3] - grow) & (positions <= self.mouth_box[3:] + grow)).all(-1)

    def mouth_weight(self, positions: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N] in [0, 1]
        """The mouth box's feathered weight (box_weight): a residual cut off at a hard face draws the box's outline
        across the cheeks and chin when the motion changes the density inside it."""
        return box_weight(positions, self.mouth_box, MOUTH_FEATHER, backend=self.backend)

    def eye_weight(self, positions: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N] in [0, 1]
        """The eye box's feathered weight: how much of the eye code a sample's colour sees."""
        return box_weight(positions, self.eye_box, EYE_FEATHER, backend=self.backend)

    def get_outputs(self, positions: torch.Tensor, geo: torch.Tensor, codes: HeadCodes) -> torch.Tensor:
        """positions [N, 3], geo [N, G] (from get_density) with the codes of the N samples (or one shared row) -> rgb
        [N, 3] in [0, 1]."""
        one_frame = codes.motion.shape[0] == 1 and codes.eyes.shape[0] == 1 and codes.latent is None
        if one_frame and not torch.is_grad_enabled():
            return self._outputs_one_frame(positions, geo, codes)
        n = geo.shape[0]
        # The region attention alone, learnt from scratch, leaves the motion acting on the whole face in a short fit
        # (an open-mouth code tinted cheeks and forehead); the lower-face motion shows only in the mouth box, so
        # the code is also cut to it (feathered like the density residual). It is computed on the samples the box
        # leaves a weight only (a few percent; 0 elsewhere, exactly as the product with a weight of 0 would be):
        # running the attention and the motion embedding on every sample was ~20 % of a CPU training step.
        mw = self.mouth_weight(positions)
        idx = torch.nonzero(mw > 0).reshape(-1)
        motion = geo.new_zeros(n, self.cfg.motion_code)
        if idx.numel():
            gate = torch.sigmoid(self.attention(geo.index_select(0, idx))) * mw.index_select(0, idx)[:, None]
            m = codes.motion if codes.motion.shape[0] == 1 else codes.motion.index_select(0, idx)
            motion = motion.index_put((idx,), self.motion_embed(m) * gate)
        # The eye code only where a blink shows: given to every sample, a short fit learnt a faint whole-face tint
        # from it and left the eyes open (blinks are a few percent of frames, the eyes a fraction of a percent of
        # the pixels); cut to the eye box, the closed code darkens and covers the eyes (docs/TRAINING.md).
        parts = [geo, motion, codes.eyes * self.eye_weight(positions)[:, None]]
        if self.cfg.latent_dim:
            if codes.latent is None:
                lat = geo.new_zeros(n, self.cfg.latent_dim)
            else:
                lat = codes.latent.expand(n, -1) * (~self.in_mouth_region(positions)).to(geo.dtype)[:, None]
            parts.append(lat)
        return torch.sigmoid(self.color_mlp(torch.cat(parts, -1)))

    def _outputs_one_frame(self, positions: torch.Tensor, geo: torch.Tensor, codes: HeadCodes) -> torch.Tensor:
        """get_outputs for one frame's shared codes and no latent (whole-frame inference), in fewer passes over the
        samples: the colour MLP's first layer is split by its inputs' blocks, so the motion and eye codes are added
        only where their feathered boxes leave them a weight (the mouth and the eyes: a few percent of a frame's
        samples), and the MLP runs fused (cuda_ext.mlp_forward, the codes added to its first layer's pre-activations on
        those samples only). The same function as the general path up to float rounding (the
        frames agree within 1e-6: tests/test_fit_render.py, bench/bench_render.py)."""
        first = self.color_mlp[0]
        blocks = [geo.shape[1], self.cfg.motion_code, N_EYE]  # then the latent's columns, unused (latent 0)
        w_geo, w_motion, w_eyes, _ = first.weight.split(blocks + [first.weight.shape[1] - sum(blocks)], 1)
        rows, adds = [], []
        mw = self.mouth_weight(positions)
        idx = torch.nonzero(mw > 0).reshape(-1)
        if idx.numel():
            gate = torch.sigmoid(self.attention(geo.index_select(0, idx))) * mw.index_select(0, idx)[:, None]
            rows.append(idx)
            adds.append(gate @ (w_motion * self.motion_embed(codes.motion)).t())
        ew = self.eye_weight(positions)
        idx = torch.nonzero(ew > 0).reshape(-1)
        if idx.numel():
            rows.append(idx)
            adds.append(ew.index_select(0, idx)[:, None] * (codes.eyes @ w_eyes.t()))
        weights, biases = linear_layers(self.color_mlp)
        return mlp_forward(geo, [w_geo, *weights[1:]], biases, torch.cat(rows) if rows else None,
                           torch.cat(adds) if adds else None, sigmoid=True, backend=self.backend)

    def density_fn(self, positions: torch.Tensor, probes: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3] -> [N], for the occupancy grid: the neutral face's density, and in and around the mouth box the
        largest density over `probes` [M, K] (motion coefficients spanning the person's range): there the density
        depends on the motion (warp and residual), and a cell empty for the neutral face may be filled by an open
        mouth. (Marking the whole box
        occupied instead would keep its untrained fog in every render, tinted frame by frame by the motion.)"""
        sigma, _ = self.get_density(positions)
        idx = torch.nonzero(self.in_mouth_region(positions, PROBE_GROW)).reshape(-1)
        if probes is None or not idx.numel():
            return sigma
        x = positions[idx]
        best = sigma[idx]
        for m in probes:
            best = torch.maximum(best, self.get_density(x, m[None])[0])
        return sigma.index_put((idx,), best)

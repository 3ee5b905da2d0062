"""The face's landmark warp: per frame, the tracked lips, jaw and eyelids move sample points back to the neutral face.

The head field holds one face, the neutral one (canonical space). A frame's lower-face motion coefficients decode to
the displacement of every lip and jaw landmark from the neutral face (the person's PCA basis, times the face size);
its eye openness gives the eyelid landmarks' displacement (a per-point linear fit of displacement on openness over the
training frames). A sample at x in the frame is looked up at x - D(x), where D interpolates the landmarks'
displacements around their displaced positions (normalised Gaussian weights, fading to 0 a few sigma away from every
landmark). The skin around the lips (philtrum, cheeks, chin, the lips between their loops) moves too, each point by a
linear fit of its tracked displacement on the motion coefficients. Each warp has two sides that part: the upper lip
from the lower one (the corners and the jaw move with both), the upper lid from the lower one; a sample follows the
side it lies on. So a mouth opens and an eye closes by construction, including openings never seen in training: the
hash grid does not have to learn one face per motion. Between parted lips the warp looks into the mouth: a sample in
its frame's gap is looked up in an interior slab of its own, deep inside the head (mouth_gap), where the field learns
one mouth interior (dark, teeth) that the tracked lips uncover. What is left (the tongue, teeth that do not follow the
lips) is the head field's motion-conditioned mouth residual's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cuda_ext.warp import WarpControls
from preprocess.mesh_topology import LEFT_EYE_LOOP, LIPS_INNER_LOOP, LIPS_OUTER_LOOP, LOWER_FACE, RIGHT_EYE_LOOP

EYE_POINTS = LEFT_EYE_LOOP + RIGHT_EYE_LOOP
EYE_SIDE = (0,) * len(LEFT_EYE_LOOP) + (1,) * len(RIGHT_EYE_LOOP)  # which openness (left, right) moves each point
# Each loop starts at a corner, runs along the lower lid to the other corner (index 8), then along the upper lid.
# 1: upper lid, 0: lower lid, 2: a corner (both).
EYE_LID = tuple(2 if i in (0, 8) else int(i > 8) for loop in (LEFT_EYE_LOOP, RIGHT_EYE_LOOP) for i in range(len(loop)))
# The lids are interpolated apart (cuda_ext.warp_points, two-sided): a sample follows the upper lid when it lies above
# the midpoint of the two lids' nearest points in the face's plane (x, y). Blended over both, the middle of a closed
# eye (1-2 mm above the closed lid line) followed the lower lid half-way and was looked up in the open eye's iris: a
# rendered blink stayed open. Nearest in the plane, not in 3D: the lids close along y over an eyeball that lies 3-4 mm
# behind their edges, and in 3D the eyeball's front was nearer the lower lid's edge even above a closed lid.
# The lips part too: 1 the upper lip, 0 the lower lip, 2 the mouth corners and the jaw (both sides). Each lip loop
# starts at the top of the upper lip, reaches a corner at index 5, runs along the lower lip to the other corner (index
# 15), then back along the upper lip. Blended over both lips (one-sided), a point on the lower lip took about half its
# weight from the upper lip 6-7 mm above it: the warp opened the mouth by 0.13x (reagan) and 0.02x (lieu) of the
# tracked inner-lip gap, and the motion residual had to paint every opening (rendered openings 20-30 % too small on
# training frames). Two-sided: 0.95x on reagan (one-off check: the landmarks moved through the warp's inverse).
# Unlike a lid, which slides over the eye, the parted lips stretch what lay between them at rest (the warp's
# `stretch`): switched at the gap's middle instead, the gap was looked up on the lips' own skin, which then had to be
# dark in open frames and lip in closed ones (reagan's held-out tracked-motion opening correlation 0.80 -> 0.51).
_LIP_SIDE = {i: 2 if k in (5, 15) else int(k < 5 or k > 15) for loop in (LIPS_OUTER_LOOP, LIPS_INNER_LOOP)
             for k, i in enumerate(loop)}
# Only the lips are the sides' guides (the points whose heights the blend across the gap runs between); the jaw moves
# with both sides. With the jaw as a lower guide, a sample between the lower lip and the chin lay "between" the upper
# lip and a chin point and took part of the upper lip's displacement: creases across the chin wherever its nearest
# lower point changed. With the jaw on the lower side only, the cheeks beside the mouth split along the corners'
# height (the lower side there held the jaw, the upper side nothing).
# The mesh's other points within 15 mm of the outer lip line (the mean of obama's, lieu's and reagan's neutral faces,
# in the face's plane): the lips' own skin between the loops, the philtrum, the cheeks beside the corners and the chin
# under the lower lip. Each moves by a least-squares linear fit of its tracked displacement on the motion coefficients
# (over the training frames), so the warp knows where the skin around the lips goes instead of spreading the lips'
# displacement over it. Each training frame's tracked landmarks mapped through the warp, mean distance from their
# neutral positions, without -> with these points: obama's philtrum (164, 167, 393) 2.25 -> 0.68 mm (it had moved
# 1.00), its nose base (2, 94, 97, 326, 98, 327; no control points) 1.29 -> 0.48 (moved 0.82); reagan's philtrum
# 1.46 -> 0.16. The price: the kernel blends each point with its neighbours, so the outer lip loop lands a little
# further off (obama 0.65 -> 0.78 mm, reagan 0.53 -> 0.56).
MOUTH_CONTEXT = (11, 12, 15, 16, 38, 41, 42, 43, 57, 62, 72, 73, 74, 76, 77, 85, 86, 89, 90, 92, 96, 106, 164, 165,
                 167, 179, 180, 182, 183, 184, 186, 194, 202, 204, 212, 268, 271, 272, 273, 287, 292, 302, 303, 304,
                 306, 307, 315, 316, 319, 320, 322, 325, 335, 391, 393, 403, 404, 406, 407, 408, 410, 418, 422, 424,
                 432)
# Their sides: the side of the nearest outer-lip point for the lips' own skin (within 8 mm of the outer loop on those
# faces), both sides beyond it (like the jaw: a side-0 cheek beside a corner split the cheek along the corners' height).
_CONTEXT_SIDE = {11: 1, 12: 1, 15: 0, 16: 0, 38: 1, 41: 1, 42: 1, 43: 2, 62: 2, 72: 1, 73: 1, 74: 1, 76: 2, 77: 0,
                 85: 0, 86: 0, 89: 0, 90: 0, 96: 0, 106: 0, 179: 0, 180: 0, 182: 0, 183: 1, 184: 1, 268: 1, 271: 1,
                 272: 1, 273: 0, 292: 2, 302: 1, 303: 1, 304: 1, 306: 2, 307: 0, 315: 0, 316: 0, 319: 0, 320: 0,
                 325: 0, 335: 0, 403: 0, 404: 0, 406: 0, 407: 1, 408: 1}
# The warp's lower control points: the tracked lower face (whose displacement the motion decodes exactly), then the
# context.
WARP_LOWER = LOWER_FACE + MOUTH_CONTEXT
LOWER_SIDE = tuple(_LIP_SIDE.get(i, 2) for i in LOWER_FACE) + tuple(_CONTEXT_SIDE.get(i, 2) for i in MOUTH_CONTEXT)
LOWER_GUIDE = tuple(i in _LIP_SIDE for i in WARP_LOWER)
# LID_SWITCH: over how much height (metres) a sample between the lids switches from the upper lid to the lower: the
# lash line of a closed eye is an edge, not a blend.
LID_SWITCH = 0.00025
# LIP_SWITCH: the least height of the lips' blend from one side to the other (the kernel also widens it to the
# distance from the sides' nearest guides, so a cheek beside a mouth corner blends the sides instead of creasing). A
# mouth closed to under 3 mm moves both lips alike: they are blended, not split along a seam.
LIP_SWITCH = 0.003
# Interpolation widths (metres). Lower face 5 mm: about the spacing of the lip landmarks and lip thickness; now that
# the lips are two-sided a point need not follow both lips, and a narrower kernel mixes less of each landmark's
# neighbours into its own displacement (reagan's training motion moved through the warp's inverse: lip landmarks off by
# 0.68 mm at 8 mm, 0.51 mm at 5 mm, the inner-lip gap 0.87x -> 0.95x of the tracked one). A point 2 cm from the
# mouth (cheek, nose) barely moves. The tracked displacements go to the kernel as they are: one residual step that
# sharpened them (d + d - A d, A the kernel's mix at the landmarks) put reagan's lip landmarks 0.38 mm from their
# tracked positions instead of 0.51, but inflated the displacements between them (up to 2.6 mm over the tracked ones),
# and refitted, reagan's held-out tracked-motion opening correlation fell 0.83 -> 0.69 and lieu's face PSNR 0.16 dB.
# Eyes 3 mm: the lid's landmarks are 3-4 mm apart and a closing lid travels ~8 mm over the eye; a wider kernel dragged
# the brow.
LOWER_SIGMA, EYE_SIGMA = 0.005, 0.003
# Fade: the normalised weight is sum(w d) / (sum(w) + FADE); FADE = exp(-4.5) halves the displacement 3 sigma from
# the nearest landmark and leaves nothing at 4-5 sigma, so the warp has no edge and the rest of the head is untouched.
FADE = float(np.exp(-4.5))
# The kernels reach DEPTH_REACH times further in depth (z, into the head) than across the face: the landmarks lie on
# the skin, but a CPU fit's head is a fog whose colour builds up over 1-2 cm behind it. With a round kernel a closed
# eye's lid moved the front of that fog and left the back where it was: the open eye's iris showed through the lid
# (obama, held-out blink: densities 5-35 /m over the eye, 100 /m 8-14 mm behind the lids, where the warp did not act).
DEPTH_REACH = 4.0
# Sigmas beyond every landmark where the displacement is taken as 0 (the sample is not even looked at): there the
# faded weight leaves under 3 % of the nearest landmark's displacement (0.3 mm of a 1 cm jaw drop).
REACH = 4.0


# The parted lips' gap looks into the mouth, not onto the lips. A backward warp moves every sample of the frame to a
# point of the neutral face; between parted lips it can only find lip (the neutral mouth is closed), so the dark
# interior and the teeth had to be painted per motion by the mouth residual, which learnt the training frames' motions
# and not the ones it never saw (reagan's held-out tracked-motion correlation 0.43-0.85 over seeds of one recipe).
# Now a sample inside the gap of its frame (between the upper and the lower inner lip line in the face's plane, no
# further in front than GAP_FRONT of the lips' inner edge) is looked up in a slab of its own deep inside the head, which
# no other ray reaches: x kept, its height across the gap (0 at the upper lip, 1 at the lower) spread over GAP_HEIGHT
# below the neutral upper lip, depth GAP_DEPTH further in. The hash grid learns one mouth interior there (upper teeth
# at the top, lower teeth at the bottom), and the opening is made by the tracked lips, including openings never seen.
# The inner lip loop's two halves, corner to corner (its corners at indices 5 and 15, as _LIP_SIDE reads it).
UPPER_INNER = LIPS_INNER_LOOP[5::-1] + LIPS_INNER_LOOP[:14:-1]  # along the upper lip's inner edge
LOWER_INNER = LIPS_INNER_LOOP[5:16]  # and along the lower lip's
GAP_DEPTH = 0.08  # metres: behind the face and the 1-2 cm over which a CPU fit's colour builds up behind its skin
GAP_HEIGHT = 0.012  # metres: about the widest speech opening (reagan's 95th percentile: 0.088 x 13 cm face)
GAP_MIN = 0.001  # metres the lips stand further apart than on the neutral face before their gap is mouth, not lip
GAP_FRONT = 0.003  # metres in front of the lips' inner edge from which a sample in the gap looks inside


def _polyline(pts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The polyline pts [L, 3] (sorted by x) at abscissae x [M] -> [M, 3] (held at its ends)."""
    k = torch.searchsorted(pts[:, 0].contiguous(), x.contiguous()).clamp(1, len(pts) - 1)
    t = ((x - pts[k - 1, 0]) / (pts[k, 0] - pts[k - 1, 0]).clamp(min=1e-9)).clamp(0, 1)
    return pts[k - 1] + t[:, None] * (pts[k] - pts[k - 1])


def mouth_gap(x: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, rest_upper: torch.Tensor,
              rest_lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples x [N, 3] of one frame, its inner lip lines upper / lower [L, 3] (corner to corner, moved) and the
    neutral ones -> (the samples in the gap [M] indices, where they look inside [M, 3]). The gap is where the lips
    stand more than GAP_MIN further apart than on the neutral face (a tracked closed mouth keeps a gap of 0-1.6 mm)."""
    up, lo = upper[torch.argsort(upper[:, 0])], lower[torch.argsort(lower[:, 0])]
    r_up, r_lo = rest_upper[torch.argsort(rest_upper[:, 0])], rest_lower[torch.argsort(rest_lower[:, 0])]
    between = (x[:, 0] > torch.maximum(up[0, 0], lo[0, 0])) & (x[:, 0] < torch.minimum(up[-1, 0], lo[-1, 0]))
    idx = torch.nonzero(between).reshape(-1)
    p = x[idx]
    a, b = _polyline(up, p[:, 0]), _polyline(lo, p[:, 0])
    rest_a = _polyline(r_up, p[:, 0])
    gap = b[:, 1] - a[:, 1]
    opened = gap - (_polyline(r_lo, p[:, 0])[:, 1] - rest_a[:, 1])
    ok = (opened > GAP_MIN) & (p[:, 1] > a[:, 1]) & (p[:, 1] < b[:, 1])
    ok &= p[:, 2] > torch.minimum(a[:, 2], b[:, 2]) - GAP_FRONT
    u = (p[ok, 1] - a[ok, 1]) / gap[ok]
    inside = torch.stack([p[ok, 0], rest_a[ok, 1] + u * GAP_HEIGHT, p[ok, 2] + GAP_DEPTH], 1)
    return idx[ok], inside


# The inner lip lines' rows among the warp's lower control points.
_UPPER_ROWS = [WARP_LOWER.index(i) for i in UPPER_INNER]
_LOWER_ROWS = [WARP_LOWER.index(i) for i in LOWER_INNER]


class FaceWarp(nn.Module):
    """Buffers only (nothing learnt): where the landmarks are on the neutral face and how the drive moves them.
    All zeros (the default) is the identity warp; `tracking_tensors` computes them from a dataset's tracking."""

    def __init__(self, n_motion: int, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend  # cuda_ext's, as the hash grids'
        k, e = len(WARP_LOWER), len(EYE_POINTS)
        self.register_buffer("lower_rest", torch.zeros(k, 3))  # neutral positions (head frame, metres)
        self.register_buffer("lower_offset", torch.zeros(k, 3))  # displacement at motion coefficients 0
        self.register_buffer("lower_basis", torch.zeros(n_motion, k, 3))  # displacement per unit coefficient
        self.register_buffer("eye_rest", torch.zeros(e, 3))
        self.register_buffer("eye_offset", torch.zeros(e, 3))  # displacement = offset + slope * openness (own side)
        self.register_buffer("eye_slope", torch.zeros(e, 3))
        self.register_buffer("eye_side", torch.tensor(EYE_SIDE, dtype=torch.long))
        self.register_buffer("eye_lid", torch.tensor(EYE_LID, dtype=torch.long))
        self.register_buffer("lower_side", torch.tensor(LOWER_SIDE, dtype=torch.long))
        self.register_buffer("lower_guide", torch.tensor(LOWER_GUIDE))
        self._memo = None  # the last shared codes' plan (_plan)

    @staticmethod
    def tracking_tensors(neutral: np.ndarray, face_size: float, basis, coefficients: np.ndarray, head: np.ndarray,
                         openness: np.ndarray, frames: list[int]) -> dict[str, torch.Tensor]:
        """The buffers from a dataset's tracking: neutral face [478, 3] (head frame), its face size (metres: the
        lower-face motion's unit), the person's PersonalMotionBasis and every frame's coefficients in it [N, C], every
        frame's landmarks in the head frame [N, 478, 3] and eye openness [N, 2]; fitted on `frames` (the training
        frames)."""
        k, q = len(LOWER_FACE), len(MOUTH_CONTEXT)
        scale = basis.scale[:, None] * basis.components  # [C, K*3] per unit coefficient
        # The context points: displacement = offset + coefficients @ slope, least squares over the training frames.
        coef = np.asarray(coefficients, np.float64)[frames]
        a = np.concatenate([np.ones((len(frames), 1)), coef], 1)
        ctx = (head[frames][:, list(MOUTH_CONTEXT)] - neutral[list(MOUTH_CONTEXT)]).reshape(len(frames), -1)
        fit, *_ = np.linalg.lstsq(a, ctx, rcond=None)  # [1 + C, Q*3]
        out = {"lower_rest": neutral[list(WARP_LOWER)],
               "lower_offset": np.concatenate([basis.mean.numpy().reshape(k, 3) * face_size, fit[0].reshape(q, 3)]),
               "lower_basis": np.concatenate([scale.numpy().reshape(-1, k, 3) * face_size, fit[1:].reshape(-1, q, 3)],
                                             1),
               "eye_rest": neutral[list(EYE_POINTS)]}
        disp = head[frames][:, list(EYE_POINTS)] - neutral[list(EYE_POINTS)]  # [F, E, 3]
        off, slope = np.zeros((len(EYE_POINTS), 3)), np.zeros((len(EYE_POINTS), 3))
        for j, side in enumerate(EYE_SIDE):
            o = openness[frames, side].astype(np.float64)
            a = np.stack([np.ones_like(o), o], 1)  # least squares: disp = offset + slope * openness
            coef, *_ = np.linalg.lstsq(a, disp[:, j], rcond=None)
            off[j], slope[j] = coef
        out.update(eye_offset=off, eye_slope=slope)
        return {n: torch.as_tensor(np.asarray(v), dtype=torch.float32) for n, v in out.items()}

    def region(self, rest: torch.Tensor, reach: torch.Tensor | float) -> torch.Tensor:  # [6] box
        return torch.cat([rest.min(0).values - reach, rest.max(0).values + reach])

    def lower_displacement(self, motion: torch.Tensor) -> torch.Tensor:  # [M, C] -> [M, K, 3]
        return self.lower_offset + torch.einsum("mc,ckd->mkd", motion.to(self.lower_basis.dtype), self.lower_basis)

    def eye_displacement(self, eyes: torch.Tensor) -> torch.Tensor:  # [M, 3] -> [M, E, 3]
        o = eyes[:, :2].to(self.eye_slope.dtype)[:, self.eye_side]  # [M, E]
        return self.eye_offset + o[..., None] * self.eye_slope

    def _controls(self, rest: torch.Tensor, disp: torch.Tensor, sigma: float, sides: torch.Tensor,
                  guides: torch.Tensor | None, switch: float, stretch: bool, dtype: torch.dtype) -> WarpControls | None:
        """The kernel's control sets: the landmarks `rest` moved by `disp` [U, P, 3] (None where nothing moves), with
        the box beyond which no sample is looked at; `sides`: each point's side (upper 1, lower 0, both 2), switched
        over `switch` metres, or blended across the gap between them (`stretch`, cuda_ext.warp_points); `guides`: the
        points that give the sides' heights (None: all)."""
        if not bool(disp.abs().max() > 0):
            return None
        reach = REACH * sigma * disp.new_tensor([1.0, 1.0, DEPTH_REACH]) + disp.abs().amax(dim=(0, 1))
        return WarpControls.prepare(rest + disp, disp, sigma, sides=sides, reach_z=DEPTH_REACH, fade=FADE,
                                    switch_width=switch, box=self.region(rest, reach), backend=self.backend,
                                    dtype=dtype, stretch=stretch, guides=guides)

    def _plan(self, motion: torch.Tensor | None, eyes: torch.Tensor | None, dtype: torch.dtype,
              lower: tuple[torch.Tensor, torch.Tensor | None] | None) -> list:
        """[(WarpControls, rows)] for these codes (`lower`: the motion's _distinct rows, computed once per call): the
        lower face's, then the eyes'. Shared codes ([1, D]: one frame,
        whole-frame rendering) are prepared once and kept while the same codes come back (a frame's
        samples arrive in chunks: preparing per chunk took 0.35 ms a chunk, ~80 chunks a 512 px frame)."""
        shared = all(c is None or c.shape[0] == 1 for c in (motion, eyes))
        if shared:  # keyed by value: a few floats, and a new tensor may reuse a freed one's memory
            key = (dtype, *(None if c is None else tuple(c.reshape(-1).tolist()) for c in (motion, eyes)),
                   *((b.data_ptr(), b._version) for b in self.buffers()))
            if self._memo is not None and self._memo[0] == key:
                return self._memo[1]
        plan = []
        if lower is not None:
            m, rows = lower
            plan.append((self._controls(self.lower_rest, self.lower_displacement(m), LOWER_SIGMA, self.lower_side,
                                        self.lower_guide, LIP_SWITCH, True, dtype), rows))
        if eyes is not None:
            e, rows = self._distinct(eyes)
            plan.append((self._controls(self.eye_rest, self.eye_displacement(e), EYE_SIGMA, self.eye_lid, None,
                                        LID_SWITCH, False, dtype), rows))
        plan = [(c, rows) for c, rows in plan if c is not None]
        if shared:
            self._memo = (key, plan)
        return plan

    @staticmethod
    def _distinct(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[N, D] per-sample codes -> (distinct rows [U, D], row of each sample [N]); a shared [1, D] stays as is.
        A training batch holds a few frames, so the landmarks are decoded a few times, not once per sample. Rows
        are told apart by one float64 projection (torch.unique over rows, `dim=0`, took half of a CPU training
        step); two different frames' codes meeting on it would need an exact float64 coincidence."""
        if codes.shape[0] == 1:
            return codes, None
        weights = torch.arange(1, codes.shape[1] + 1, dtype=torch.float64, device=codes.device).sqrt().reciprocal()
        _, rows = torch.unique(codes.double() @ weights, return_inverse=True)
        first = torch.zeros(int(rows.max()) + 1, dtype=torch.long, device=codes.device)
        first.scatter_(0, rows, torch.arange(len(rows), device=codes.device))
        return codes[first], rows

    def _gap(self, x: torch.Tensor, lower: tuple[torch.Tensor, torch.Tensor | None]
             ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the samples in their frame's mouth gap [M] indices, where they look inside [M, 3]) (mouth_gap) for the
        motion's _distinct rows `lower`, or None where none is (or the warp is the identity: no tracking loaded). Only
        the samples in the box of the frames' inner lip lines are looked at (a few percent of a frame's)."""
        if not bool(self.lower_basis.abs().max() > 0):
            return None
        m, rows = lower
        moved = (self.lower_rest + self.lower_displacement(m).to(self.lower_rest.dtype)).to(x.dtype)  # [U, K, 3]
        lines = moved[:, _UPPER_ROWS + _LOWER_ROWS].reshape(-1, 3)
        lo, hi = lines.min(0).values, lines.max(0).values
        near = (x[:, 0] > lo[0]) & (x[:, 0] < hi[0]) & (x[:, 1] > lo[1]) & (x[:, 1] < hi[1])
        near &= x[:, 2] > lo[2] - GAP_FRONT
        idx = torch.nonzero(near).reshape(-1)
        if not idx.numel():
            return None
        rest = self.lower_rest.to(x.dtype)
        found, where = [], []
        near_rows = None if rows is None else rows[idx]
        for r in range(m.shape[0]):
            mine = idx if near_rows is None else idx[near_rows == r]
            sel, inside = mouth_gap(x[mine], moved[r, _UPPER_ROWS], moved[r, _LOWER_ROWS], rest[_UPPER_ROWS],
                                    rest[_LOWER_ROWS])
            found.append(mine[sel])
            where.append(inside)
        return torch.cat(found), torch.cat(where)

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None, eyes: torch.Tensor | None) -> torch.Tensor:
        """Sample positions x [N, 3] in a frame -> their positions on the neutral face [N, 3]. motion [N, C] or
        [1, C] (None: the neutral mouth), eyes [N, 3] or [1, 3] (None: the neutral eyes)."""
        with torch.no_grad():  # the warp follows the tracking; nothing in it is learnt
            lower = None if motion is None else self._distinct(motion)
            gap = None if lower is None else self._gap(x, lower)
            for controls, rows in self._plan(motion, eyes, x.dtype, lower):
                x = controls.apply(x, rows)
            if gap is not None:
                x = x.index_copy(0, gap[0], gap[1])
        return x

"""Whole frames of a trained avatar from its per-frame drive (pose, motion coefficients, eyes: motion/drive.py).

A frame is head + torso + background:
  * the head field is rendered only inside the screen box of the head's 3D box for that frame's pose (every other
    pixel's ray misses the box, so marching it would find nothing): on a head-and-shoulders crop that is a third of
    the pixels, which is most of what makes CPU rendering usable;
  * the torso field is evaluated over the whole image (it is a 2D field: one small MLP per pixel, no marching);
  * both over the background plate, resampled when rendering at another size than the trained one.
Rays go through the head field in chunks of `render.chunk` so memory stays bounded at any resolution.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from nerf_talk.fields import HeadCodes
from nerf_talk.render.cameras import Intrinsics, image_pixels, pixel_rays
from nerf_talk.render.composite import over_background


def head_screen_box(pose: torch.Tensor, aabb: torch.Tensor, intr: Intrinsics, margin: int = 2
                    ) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel bounds (exclusive ends) of the head box's projection for camera-to-head `pose` [4, 4];
    the whole image when a corner is behind the camera; None when the box is off screen."""
    lo, hi = aabb[:3].double(), aabb[3:].double()
    idx = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float64)
    corners = lo + idx * (hi - lo)  # [8, 3] head frame
    h2c = torch.linalg.inv(pose.double().cpu())
    cam = corners @ h2c[:3, :3].T + h2c[:3, 3]
    if (cam[:, 2] <= 1e-6).any():
        return 0, 0, intr.width, intr.height
    u = intr.fx * cam[:, 0] / cam[:, 2] + intr.cx
    v = intr.fy * cam[:, 1] / cam[:, 2] + intr.cy
    x0, x1 = int(np.floor(float(u.min()))) - margin, int(np.ceil(float(u.max()))) + margin
    y0, y1 = int(np.floor(float(v.min()))) - margin, int(np.ceil(float(v.max()))) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, intr.width), min(y1, intr.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


WEIGHT_EPS = 1e-4  # samples contributing less than this to a pixel get no colour evaluation


@torch.no_grad()
def render_head_two_pass(model, rays_o: torch.Tensor, rays_d: torch.Tensor, codes: HeadCodes,
                         weight_eps: float = WEIGHT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-only head rendering: density at every marched sample, colour only where the sample's compositing
    weight exceeds `weight_eps` (nerfacc's inference trick). Most samples of a trained head lie in front of the
    surface in near-empty space or behind it in its shadow; skipping their colour MLP halves the work on a CPU.
    Returns rgb [R, 3] (premultiplied) and opacity [R], over the kept samples only, so the two stay consistent;
    a pixel differs from render_rays' by at most the dropped weights (< weight_eps each)."""
    from cuda_ext import march_rays

    r = model.cfg.render
    n = rays_o.shape[0]
    rgb_out, opacity = rays_o.new_zeros(n, 3), rays_o.new_zeros(n)
    s = march_rays(rays_o, rays_d, model.grid, near=0.0, step_size=r.step_size, max_samples=r.max_samples,
                   backend=model.cfg.backend)
    if s.t_starts.numel() == 0:
        return rgb_out, opacity
    mids = (s.t_starts + s.t_ends) * 0.5
    positions = rays_o[s.ray_indices] + rays_d[s.ray_indices] * mids[:, None]
    sigma, geo = model.head.get_density(positions, codes.motion[s.ray_indices.long()])  # motion shapes the mouth
    alpha = 1.0 - torch.exp(-sigma * (s.t_ends - s.t_starts))
    # Transmittance before each sample: a running sum of log(1 - alpha) over all packed samples (float64: the sum
    # runs across rays), minus its value at each ray's first sample.
    log_keep = torch.log1p(-alpha.double().clamp(max=1.0 - 1e-12))
    excl = torch.cumsum(log_keep, 0) - log_keep
    first = s.packed_info[:, 0].long().clamp(max=len(excl) - 1)
    trans = torch.exp(excl - excl[first][s.ray_indices.long()]).to(alpha.dtype)
    weight = trans * alpha
    keep = torch.nonzero(weight > weight_eps).reshape(-1)
    if keep.numel() == 0:
        return rgb_out, opacity
    idx = s.ray_indices[keep].long()
    rgb = model.head.get_outputs(positions[keep], geo[keep], codes.index(idx))
    w = weight[keep]
    rgb_out.index_add_(0, idx, w[:, None] * rgb)
    opacity.index_add_(0, idx, w)
    return rgb_out, opacity


class FrameRenderer:
    """Renders whole frames of an AvatarModel at its trained size or any other `size` (height, width)."""

    def __init__(self, model, intrinsics: Intrinsics, size: tuple[int, int] | None = None,
                 torso: bool = True, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        h0, w0 = intrinsics.height, intrinsics.width
        h, w = size or (h0, w0)
        if abs(h / h0 - w / w0) > 1e-6:
            raise ValueError(f"size {h}x{w} changes the aspect ratio of the trained {h0}x{w0}")
        self.intr = intrinsics.scaled(h / h0) if (h, w) != (h0, w0) else intrinsics
        self.size = (h, w)
        plate = model.background.plate.cpu().numpy()
        if plate.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if h < plate.shape[0] else cv2.INTER_LINEAR
            plate = cv2.resize(plate, (w, h), interpolation=interp)
        self.background = torch.from_numpy(np.ascontiguousarray(plate)).reshape(-1, 3).to(self.device)
        self.pixels = image_pixels(h, w, self.device)  # [H*W, 2]
        self.uv = (self.pixels.float() + 0.5) / torch.tensor([w, h], dtype=torch.float32, device=self.device)
        self.torso = torso
        self.chunk = int(model.cfg.render.chunk)
        self.head_pixels = 0  # pixels marched by the last frame (for benchmarks)

    @torch.no_grad()
    def under_head(self, pose: torch.Tensor) -> torch.Tensor:  # [H*W, 3] torso over background
        if not self.torso:
            return self.background
        code = self.model.pose_code(pose[None])  # [1, 9]
        out = torch.empty_like(self.background)
        for c0 in range(0, len(self.uv), self.chunk * 4):
            uv = self.uv[c0:c0 + self.chunk * 4]
            rgb, alpha = self.model.torso(uv, code.expand(len(uv), -1))
            out[c0:c0 + len(uv)] = alpha[:, None] * rgb + (1 - alpha[:, None]) * self.background[c0:c0 + len(uv)]
        return out

    @torch.no_grad()
    def render(self, pose: np.ndarray | torch.Tensor, coeffs: np.ndarray | torch.Tensor,
               eyes: np.ndarray | torch.Tensor) -> np.ndarray:
        """One frame: pose [4, 4] camera-to-head, the avatar's motion coefficients [C], eyes [3] -> uint8 [H, W, 3]."""
        dev = self.device
        pose = torch.as_tensor(np.asarray(pose, np.float32), device=dev)
        coeffs = torch.as_tensor(np.asarray(coeffs, np.float32), device=dev)
        eyes = torch.as_tensor(np.asarray(eyes, np.float32), device=dev)
        h, w = self.size
        img = self.under_head(pose).clone()  # [H*W, 3]
        box = head_screen_box(pose, self.model.head.aabb, self.intr)
        self.head_pixels = 0
        if box is not None:
            x0, y0, x1, y1 = box
            ys = torch.arange(y0, y1, device=dev)
            idx = (ys[:, None] * w + torch.arange(x0, x1, device=dev)[None]).reshape(-1)  # flat pixel indices
            self.head_pixels = len(idx)
            for c0 in range(0, len(idx), self.chunk):
                sel = idx[c0:c0 + self.chunk]
                n = len(sel)
                rays_o, rays_d = pixel_rays(pose.expand(n, 4, 4), self.pixels[sel], self.intr)
                codes = HeadCodes(coeffs.expand(n, -1), eyes.expand(n, -1), None)  # unseen frame: latent 0
                rgb, opacity = render_head_two_pass(self.model, rays_o, rays_d, codes)
                img[sel] = over_background(rgb, opacity, img[sel])
        return (img.clamp(0, 1).reshape(h, w, 3) * 255.0).round().to(torch.uint8).cpu().numpy()

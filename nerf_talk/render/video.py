"""Whole frames of a trained avatar from its per-frame drive (pose, motion coefficients, eyes: motion/drive.py).

A frame is head + torso + background:
  * the head field is rendered only inside the screen box of the head's 3D box for that frame's pose (every other
    pixel's ray misses the box, so marching it would find nothing): on a head-and-shoulders crop that is a third of
    the pixels, which is most of what makes CPU rendering usable;
  * the torso field is evaluated over the whole image (it is a 2D field: one small MLP per pixel, no marching);
  * both over the background plate, resampled when rendering at another size than the trained one.
Rays go through the head field in chunks of `render.chunk` so memory stays bounded at any resolution.
Colour is evaluated only where the compositing weight matters (render.volume.render_rays_inference).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from nerf_talk.fields import HeadCodes
from nerf_talk.render.cameras import Intrinsics, image_pixels, pixel_rays, pixel_uv
from nerf_talk.render.composite import over_background, torso_over
from nerf_talk.render.volume import render_rays_inference


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


# How far a pixel's head colour may move from the exact composite (render_rays): the colour of the samples skipped
# in front of the surface and behind it (cuda_ext.composite_weights). 1e-6 keeps frames within 1e-5 of the exact
# path, float before rounding to 8 bits (bench/bench_render.py prints the difference).
SKIP_BUDGET = 1e-6
TORSO_CHUNK = 1 << 15  # pixels per torso-field call (its intermediates stay in cache, as render.volume's chunks)


class FrameRenderer:
    """Renders whole frames of an AvatarModel at its trained size or any other `size` (height, width): the head by
    volume rendering inside its screen box (render_rays_inference: cuda_ext's marching and compositing on every
    device), over the torso field, over the background plate. Training's validation frames, `render`, `eval` and
    the live server all render through this class.

    exact=True renders the head with render_rays (every sample's colour, training's own path) instead: the reference
    the inference path is measured against."""

    def __init__(self, model, intrinsics: Intrinsics, size: tuple[int, int] | None = None,
                 torso: bool = True, device: torch.device | str | None = None, exact: bool = False) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        h0, w0 = intrinsics.height, intrinsics.width
        h, w = size or (h0, w0)
        if abs(h / h0 - w / w0) > 1e-6:
            raise ValueError(f"size {h}x{w} changes the aspect ratio of the trained {h0}x{w0}")
        self.intr = intrinsics.scaled(h / h0) if (h, w) != (h0, w0) else intrinsics
        self.size = (h, w)
        plate = model.background.plate
        if tuple(plate.shape[:2]) != (h, w):
            plate = plate.cpu().numpy()
            interp = cv2.INTER_AREA if h < plate.shape[0] else cv2.INTER_LINEAR
            plate = torch.from_numpy(np.ascontiguousarray(cv2.resize(plate, (w, h), interpolation=interp)))
        self.background = plate.reshape(-1, 3).to(self.device)
        self.pixels = image_pixels(h, w, self.device)  # [H*W, 2]
        self.torso = torso
        # The torso field's view of each pixel's position is the same in every frame: computed once.
        self.uv = pixel_uv(self.pixels, self.size)
        self.uv_features = model.torso.uv_features(self.uv) if torso else None
        self.exact = exact
        self.chunk = int(model.cfg.render.chunk)
        self.head_pixels = 0  # pixels marched by the last frame (for benchmarks)

    @torch.no_grad()
    def under_head(self, pose: torch.Tensor) -> torch.Tensor:  # [H*W, 3] torso over background
        if not self.torso:
            return self.background
        code = self.model.pose_code(pose[None])  # [1, 9], shared by every pixel
        out = torch.empty_like(self.background)
        for c0 in range(0, len(self.uv), TORSO_CHUNK):
            c1 = c0 + TORSO_CHUNK
            rgb, alpha = self.model.torso(self.uv[c0:c1], code, self.uv_features[c0:c1])
            out[c0:c1] = torso_over(rgb, alpha, self.background[c0:c1])
        return out

    @torch.no_grad()
    def render_head(self, pose: torch.Tensor, codes: HeadCodes, pixels: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:  # rgb [P, 3] premultiplied, opacity [P]
        """The head at `pixels` [P, 2] (x, y) for camera-to-head `pose` [4, 4]."""
        m, r = self.model, self.model.cfg.render
        rays_o, rays_d = pixel_rays(pose, pixels, self.intr)
        if self.exact:
            out = m.render_head(rays_o, rays_d, codes)
            return out.rgb, out.opacity
        return render_rays_inference(rays_o, rays_d, m.grid, m.head, codes, r.step_size, r.max_samples,
                                     r.early_stop_eps, SKIP_BUDGET, backend=m.cfg.backend)

    @torch.no_grad()
    def render_float(self, pose: np.ndarray | torch.Tensor, coeffs: np.ndarray | torch.Tensor,
                     eyes: np.ndarray | torch.Tensor, under: torch.Tensor | None = None) -> torch.Tensor:
        """One frame as float [H, W, 3] (not clamped): pose [4, 4] camera-to-head, the avatar's motion coefficients
        [C], eyes [3]. under [H*W, 3]: what lies under the head, instead of the torso field over the background."""
        dev = self.device
        pose, coeffs, eyes = (torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32,
                                              device=dev) for x in (pose, coeffs, eyes))
        h, w = self.size
        img = (self.under_head(pose) if under is None else under).clone()  # [H*W, 3]
        box = head_screen_box(pose, self.model.head.aabb, self.intr)
        self.head_pixels = 0
        if box is not None:
            x0, y0, x1, y1 = box
            ys = torch.arange(y0, y1, device=dev)
            idx = (ys[:, None] * w + torch.arange(x0, x1, device=dev)[None]).reshape(-1)  # flat pixel indices
            self.head_pixels = len(idx)
            codes = HeadCodes(coeffs[None], eyes[None], None)  # one frame's codes, shared; unseen frame: latent 0
            for c0 in range(0, len(idx), self.chunk):  # rays in chunks: memory bounded at any size
                sel = idx[c0:c0 + self.chunk]
                rgb, opacity = self.render_head(pose, codes, self.pixels[sel])
                img[sel] = over_background(rgb, opacity, img[sel])
        return img.reshape(h, w, 3)

    def render(self, pose: np.ndarray | torch.Tensor, coeffs: np.ndarray | torch.Tensor,
               eyes: np.ndarray | torch.Tensor) -> np.ndarray:
        """One frame (see render_float) as uint8 [H, W, 3]."""
        img = self.render_float(pose, coeffs, eyes)
        return (img.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


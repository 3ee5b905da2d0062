"""Pinhole cameras and their rays, in OpenCV axes (x right, y down, z forward) on both sides: the dataset's poses are
camera-to-head in the same axes, so no convention change is needed anywhere in rendering."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_dict(cls, d: dict) -> "Intrinsics":
        return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]), int(d["width"]), int(d["height"]))

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, s: float) -> "Intrinsics":
        """The same camera for images resized by `s` (pixel centres stay aligned: continuous coordinates scale)."""
        return Intrinsics(self.fx * s, self.fy * s, self.cx * s, self.cy * s, round(self.width * s),
                          round(self.height * s))


def pixel_rays(
    c2h: torch.Tensor,  # [R, 4, 4] camera-to-head pose of each ray's frame, or [4, 4] one pose for every ray
    pixels: torch.Tensor,  # [R, 2] integer (x, y) pixel indices
    intr: Intrinsics,
) -> tuple[torch.Tensor, torch.Tensor]:  # rays_o [R, 3], rays_d [R, 3] unit length, in the head frame
    """Rays through pixel centres. Directions are unit length, so ray distances (and step sizes) are in metres."""
    p = pixels.to(c2h.dtype) + 0.5
    d_cam = torch.stack([(p[:, 0] - intr.cx) / intr.fx, (p[:, 1] - intr.cy) / intr.fy, torch.ones_like(p[:, 0])], -1)
    if c2h.dim() == 2:  # one frame's rays (whole-frame rendering): one matrix product, not a batch of 3x3 ones
        d = d_cam @ c2h[:3, :3].T
        origin = c2h[:3, 3].expand(len(pixels), 3)
    else:
        d = torch.einsum("rij,rj->ri", c2h[:, :3, :3], d_cam)
        origin = c2h[:, :3, 3]
    return origin.contiguous(), torch.nn.functional.normalize(d, dim=-1).contiguous()


def pixel_uv(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # [R, 2] (x, y) -> [R, 2] in (0, 1)
    """Pixel centres in image coordinates (u right, v down) of an image of `size` (height, width): where the 2D
    torso field is looked up."""
    h, w = size
    return (pixels.float() + 0.5) / torch.tensor([w, h], dtype=torch.float32, device=pixels.device)


def image_pixels(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:  # [H * W, 2] (x, y)
    """Every pixel of an image in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)

"""Rays from cameras, field-agnostic volume rendering over the occupancy grid, and layer compositing."""

from .cameras import Intrinsics, pixel_rays, pixel_uv
from .composite import over_background, torso_over
from .volume import RenderOutput, head_radiance_fn, render_rays, render_rays_inference

__all__ = ["Intrinsics", "RenderOutput", "head_radiance_fn", "over_background", "pixel_rays",
           "pixel_uv", "render_rays", "render_rays_inference", "torso_over"]

"""Rays from cameras, field-agnostic volume rendering over the occupancy grid, and layer compositing."""

from .cameras import Intrinsics, pixel_rays
from .composite import composite_layers, over_background
from .volume import RenderOutput, head_radiance_fn, render_rays

__all__ = ["Intrinsics", "RenderOutput", "composite_layers", "head_radiance_fn", "over_background", "pixel_rays",
           "render_rays"]

"""Layer compositing: the head over the torso over the background plate. Colours from the volume renderer are
premultiplied by their opacity; the torso's colour is straight (not premultiplied) with its own alpha."""

from __future__ import annotations

import torch


def over_background(rgb: torch.Tensor, opacity: torch.Tensor, under: torch.Tensor) -> torch.Tensor:  # [R, 3]
    """Premultiplied `rgb` [R, 3] with `opacity` [R] over `under` [R, 3]."""
    return rgb + (1.0 - opacity)[:, None] * under


def torso_over(torso_rgb: torch.Tensor, torso_alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Straight `torso_rgb` [R, 3] with `torso_alpha` [R] over `background` [R, 3]: what lies under the head."""
    return torso_alpha[:, None] * torso_rgb + (1.0 - torso_alpha)[:, None] * background


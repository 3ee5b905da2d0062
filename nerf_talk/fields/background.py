"""The background: the dataset's plate of the scene without the person, fixed (not learned)."""

from __future__ import annotations

import torch
from torch import nn


class Background(nn.Module):
    def __init__(self, plate: torch.Tensor) -> None:  # [H, W, 3] float in [0, 1]
        super().__init__()
        if plate.dim() != 3 or plate.shape[2] != 3:
            raise ValueError(f"the background plate must be [H, W, 3], got {list(plate.shape)}")
        self.register_buffer("plate", plate.float().contiguous())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [R, 2] int64 (x, y) -> [R, 3]
        return self.plate[pixels[:, 1], pixels[:, 0]]

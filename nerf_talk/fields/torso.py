"""The torso (neck, shoulders, clothes): a 2D field over the image plane, rendered rather than pasted.

A point's image coordinates uv in [0, 1]^2 are moved by a deformation that depends on the head pose, then looked up in
a 2D hash grid; a small MLP gives colour and alpha. Because the deformation follows the head pose, the neck moves with
the head when it turns instead of staying where it was in some training frame. Composited under the head and over the
background plate (render/composite.py).
"""

from __future__ import annotations

import torch
from torch import nn

from cuda_ext import HashGrid, HashGridConfig
from nerf_talk.config import TorsoConfig
from nerf_talk.fields.mlp import frequency_encoding, mlp, run_mlp

N_POSE = 9  # 6D rotation + 3D translation
UV_FREQS = 4


def pose_features(poses: torch.Tensor, mean_position: torch.Tensor, scale: float) -> torch.Tensor:  # [F, 9]
    """Head pose features from camera-to-head poses [F, 4, 4]: the first two columns of the head-to-camera rotation
    (minus the identity's, so a frontal pose is 0) and the camera position minus the training mean, over `scale`."""
    rot_h2c = poses[:, :3, :3].transpose(1, 2)
    eye = torch.eye(3, dtype=poses.dtype, device=poses.device)[:, :2]
    r6 = (rot_h2c[:, :, :2] - eye).reshape(-1, 6)
    t = (poses[:, :3, 3] - mean_position) / scale
    return torch.cat([r6, t], -1)


class TorsoField(nn.Module):
    def __init__(self, cfg: TorsoConfig, backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.pose_embed = mlp(N_POSE, cfg.hidden, cfg.pose_code)
        self.deform = mlp(2 * (1 + 2 * UV_FREQS) + cfg.pose_code, cfg.hidden, 2, n_hidden=2)
        # Start with no deformation: the field first learns the mean torso, then how it moves.
        nn.init.zeros_(self.deform[-1].weight)
        nn.init.zeros_(self.deform[-1].bias)
        self.grid = HashGrid(HashGridConfig(2, cfg.n_levels, cfg.n_features_per_level, cfg.log2_table_size,
                                            cfg.base_resolution, cfg.finest_resolution), backend=backend)
        self.color = mlp(self.grid.cfg.out_dim + cfg.pose_code, cfg.hidden, 4)
        self.backend = backend  # cuda_ext's, for the fused MLPs (the grid keeps its own)

    def forward(self, uv: torch.Tensor, pose: torch.Tensor, uv_features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """uv [R, 2] in [0, 1] (x right, y down), pose [R, 9] (or [1, 9] shared by every point) -> rgb [R, 3],
        alpha [R]. uv_features: uv_features(uv) when the caller keeps them (a renderer's pixels are the same in every
        frame)."""
        p = self.pose_embed(pose)
        enc = self.uv_features(uv) if uv_features is None else uv_features
        # One pose for every point at inference (a whole frame): run_mlp folds it into the first layers' biases.
        offset = torch.tanh(run_mlp(self.deform, enc, p, self.backend)) * self.cfg.max_offset
        h = run_mlp(self.color, self.grid((uv + offset).clamp(0, 1)), p, self.backend)
        return torch.sigmoid(h[:, :3]), torch.sigmoid(h[:, 3])

    @staticmethod
    def uv_features(uv: torch.Tensor) -> torch.Tensor:  # [R, 2] -> [R, 2 (1 + 2 UV_FREQS)]
        """What the deformation MLP reads of a point's position."""
        return frequency_encoding(uv, UV_FREQS)

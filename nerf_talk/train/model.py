"""The modules of one avatar together (head field + occupancy grid, torso field, background, motion basis, pose
statistics) and how a batch of rays is rendered with them."""

from __future__ import annotations

import torch
from torch import nn

from cuda_ext import OccupancyGrid
from nerf_talk.config import TrainConfig
from nerf_talk.fields import (Background, HeadCodes, HeadField, TorsoField, eye_region, head_box, mouth_region,
                              pose_features)
from nerf_talk.render import composite_layers, head_radiance_fn, over_background, pixel_rays, render_rays
from nerf_talk.render.volume import RenderOutput
from nerf_talk.train.data import RayBatch, TrainData


class AvatarModel(nn.Module):
    def __init__(self, cfg: TrainConfig, data: TrainData) -> None:
        super().__init__()
        self.cfg = cfg
        backend = cfg.backend
        aabb = head_box(data.template, cfg.head.box_padding, cfg.head.neck_extension)
        n_motion = data.basis.components.shape[0]
        self.head = HeadField(cfg.head, aabb, n_motion, len(data.train_frames), mouth_region(data.template), backend,
                              eye_region(data.template))
        self.grid = OccupancyGrid(aabb, cfg.render.grid_resolution)
        self.torso = TorsoField(cfg.torso, backend=backend)
        self.background = Background(data.background)
        # The motion basis and the pose statistics travel with the avatar: a renderer needs them for new motion.
        self.register_buffer("motion_mean", data.basis.mean.clone())
        self.register_buffer("motion_components", data.basis.components.clone())
        self.register_buffer("motion_scale", data.basis.scale.clone())
        train_pos = data.poses[data.train_frames, :3, 3]
        self.register_buffer("pose_mean", train_pos.mean(0))
        self.register_buffer("pose_scale", train_pos.norm(dim=-1).mean().reshape(1))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def torso_parameters(self) -> list[nn.Parameter]:
        return list(self.torso.parameters())

    def pose_code(self, poses: torch.Tensor) -> torch.Tensor:  # [R, 4, 4] -> [R, 9]
        return pose_features(poses, self.pose_mean, float(self.pose_scale))

    def render_head(self, rays_o: torch.Tensor, rays_d: torch.Tensor, codes: HeadCodes,
                    jitter: torch.Tensor | None = None) -> RenderOutput:
        r = self.cfg.render
        return render_rays(rays_o, rays_d, self.grid, head_radiance_fn(self.head, codes), r.step_size, r.max_samples,
                           r.early_stop_eps, jitter=jitter, backend=self.cfg.backend)


def batch_codes(model: AvatarModel, data_motion: torch.Tensor, data_eyes: torch.Tensor, batch: RayBatch,
                latent_keep: torch.Tensor | None) -> HeadCodes:
    """The head codes of a batch's rays. Latents exist only for training frames; `latent_keep` [R] (0/1) drops them
    on some rays, so the field also learns to render with the code 0 that every unseen frame gets. Latents are
    centred over the training frames for the same reason: 0 is then the average frame, not an arbitrary one.
    None: no latent (validation, new motion)."""
    latent = None
    if latent_keep is not None and model.cfg.head.latent_dim:
        lat = model.head.latents - model.head.latents.mean(0)
        keep = (batch.rows >= 0).to(lat.dtype) * latent_keep
        latent = lat[batch.rows.clamp(min=0)] * keep[:, None]
    return HeadCodes(data_motion[batch.frames], data_eyes[batch.frames], latent)


def render_batch(model: AvatarModel, data: TrainData, motion: torch.Tensor, eyes: torch.Tensor, batch: RayBatch,
                 torso: str, latent_keep: torch.Tensor | None, jitter: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """Renders a batch. torso: "gt" puts the head over the dataset's own torso + background (head stages: the head is
    learnt against what is really under it), "field" over the torso field, "none" over the background only.

    Returns rgb [R, 3] (composited), head_rgb [R, 3], head_opacity [R], and torso_alpha [R] when torso == "field".
    """
    poses = data.poses.to(batch.rgb.device)[batch.frames]
    rays_o, rays_d = pixel_rays(poses, batch.pixels, data.intrinsics)
    head = model.render_head(rays_o, rays_d, batch_codes(model, motion, eyes, batch, latent_keep), jitter)
    bg = model.background(batch.pixels)
    out = {"head_rgb": head.rgb, "head_opacity": head.opacity, "n_samples": torch.tensor(head.n_samples)}
    if torso == "gt":
        a = batch.torso_rgba[:, 3:]
        out["rgb"] = over_background(head.rgb, head.opacity, a * batch.torso_rgba[:, :3] + (1 - a) * bg)
    elif torso == "field":
        h, w = data.size
        uv = (batch.pixels.float() + 0.5) / torch.tensor([w, h], dtype=torch.float32, device=bg.device)
        t_rgb, t_alpha = model.torso(uv, model.pose_code(poses))
        out["rgb"] = composite_layers(head.rgb, head.opacity, t_rgb, t_alpha, bg)
        out["torso_alpha"] = t_alpha
    elif torso == "none":
        out["rgb"] = over_background(head.rgb, head.opacity, bg)
    else:
        raise ValueError(f"torso must be gt, field or none, is {torso!r}")
    return out

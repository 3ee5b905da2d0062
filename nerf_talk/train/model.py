"""The modules of one avatar together (head field + occupancy grid, torso field, background, motion basis, pose
statistics) and how a batch of rays is rendered with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cuda_ext import OccupancyGrid
from nerf_talk.config import TrainConfig
from nerf_talk.fields import (Background, HeadCodes, HeadField, TorsoField, eye_region, head_box, mouth_region,
                              pose_features)
from nerf_talk.render import head_radiance_fn, over_background, pixel_rays, pixel_uv, render_rays, torso_over
from nerf_talk.render.volume import RenderOutput
from nerf_talk.motion.basis import PersonalMotionBasis
from nerf_talk.train.data import RayBatch, TrainData

# The layout of the model's weights. 2: the head field gained `mouth_mlp` (motion-dependent density in the mouth box);
# 3: the head field gained `eye_box` (the eye code acts only there); 4: the head field gained its landmark warp
# (`head.warp.*`: the tracked lips, jaw and lids move samples back to the neutral face, so the hash grid holds the
# neutral face); 5: the warp parts the lips (`head.warp.lower_side`: the upper and the lower lip move apart instead
# of being blended; weights fitted with the blended warp painted the opening in the mouth residual); 6: the warp's
# lower control points include the skin around the lips (`fields.warp.MOUTH_CONTEXT`: philtrum, cheeks, chin, the lips
# between their loops), each moved by a fit on the motion coefficients; 7: the gap between parted lips looks into a
# mouth interior of its own (`fields.warp.mouth_gap`; no new tensors, but weights fitted without it painted the
# interior in the mouth residual).
# The trainer stamps it into a training directory's avatar.json and export refuses a directory with another one
# (older weights lack what the fields now need).
FIELDS_VERSION = 7


@dataclass
class ModelShapes:
    """What an AvatarModel is built from besides its config: its sizes, boxes and fixed tensors. Training derives
    them from the dataset (`from_data`); an avatar file stores them (avatar.build_model reads them back), so both
    build the model through the same constructor and then every weight and buffer loads strictly."""

    aabb: list[float]  # the head field's box (xmin, ymin, zmin, xmax, ymax, zmax), metres, head frame
    mouth_box: list[float]  # where the motion shapes the density and the latent is off (fields.mouth_region)
    eye_box: list[float]  # where the eye code acts (fields.eye_region)
    n_motion: int  # motion coefficients (the motion basis' components)
    n_latents: int  # per-frame latents (training frames)
    background: torch.Tensor  # [H, W, 3] float in [0, 1], the plate
    basis: PersonalMotionBasis  # the person's lower-face motion basis
    pose_mean: torch.Tensor  # [3] mean camera position of the training frames (head frame)
    pose_scale: torch.Tensor  # [1] their mean distance from the head
    # The landmark warp's buffers (fields.FaceWarp.tracking_tensors), from the dataset's tracking. None: left at the
    # identity for load_state_dict to fill (an avatar file stores them with the weights).
    warp: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_data(cls, cfg: TrainConfig, data: TrainData) -> "ModelShapes":
        train_pos = data.poses[data.train_frames, :3, 3]
        return cls(head_box(data.template, cfg.head.box_padding, cfg.head.neck_extension),
                   mouth_region(data.template), eye_region(data.template), data.basis.components.shape[0],
                   len(data.train_frames), data.background, data.basis, train_pos.mean(0),
                   train_pos.norm(dim=-1).mean().reshape(1), data.warp)


class AvatarModel(nn.Module):
    def __init__(self, cfg: TrainConfig, shapes: ModelShapes) -> None:
        super().__init__()
        self.cfg = cfg
        backend = cfg.backend
        self.head = HeadField(cfg.head, shapes.aabb, shapes.n_motion, shapes.n_latents, shapes.mouth_box, backend,
                              shapes.eye_box)
        for name, value in (shapes.warp or {}).items():
            getattr(self.head.warp, name).copy_(value)
        self.grid = OccupancyGrid(shapes.aabb, cfg.render.grid_resolution)
        self.torso = TorsoField(cfg.torso, backend=backend)
        self.background = Background(shapes.background)
        # The motion basis and the pose statistics travel with the avatar: a renderer needs them for new motion.
        self.register_buffer("motion_mean", shapes.basis.mean.clone())
        self.register_buffer("motion_components", shapes.basis.components.clone())
        self.register_buffer("motion_scale", shapes.basis.scale.clone())
        self.register_buffer("pose_mean", shapes.pose_mean.clone())
        self.register_buffer("pose_scale", shapes.pose_scale.clone())

    def use_backend(self, name: str) -> None:
        """Run every kernel of the model on cuda_ext backend `name` (auto | cuda | cpu | torch): marching and
        compositing (through cfg.backend), the hash grids, the landmark warp, and the fields' fused MLPs and box
        weights (each keeps its own)."""
        self.cfg.backend = name
        for m in (self.head.grid, self.torso.grid, self.head.warp, self.head, self.torso):
            m.backend = name

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
        out["rgb"] = over_background(head.rgb, head.opacity, torso_over(batch.torso_rgba[:, :3],
                                                                         batch.torso_rgba[:, 3], bg))
    elif torso == "field":
        out.update(over_torso_field(model, data, batch, head.rgb, head.opacity))
    elif torso == "none":
        out["rgb"] = over_background(head.rgb, head.opacity, bg)
    else:
        raise ValueError(f"torso must be gt, field or none, is {torso!r}")
    return out


def over_torso_field(model: AvatarModel, data: TrainData, batch: RayBatch, head_rgb: torch.Tensor,
                     head_opacity: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head (premultiplied rgb [R, 3], opacity [R]) over the torso field over the background at a batch's
    pixels: rgb [R, 3], torso_rgb [R, 3] (straight) and torso_alpha [R]."""
    poses = data.poses.to(batch.rgb.device)[batch.frames]
    t_rgb, t_alpha = model.torso(pixel_uv(batch.pixels, data.size), model.pose_code(poses))
    under = torso_over(t_rgb, t_alpha, model.background(batch.pixels))
    return {"rgb": over_background(head_rgb, head_opacity, under), "torso_rgb": t_rgb, "torso_alpha": t_alpha}

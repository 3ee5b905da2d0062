"""Losses: small pure functions over tensors, weights from LossConfig."""

from __future__ import annotations

import math

import kornia
import torch

from nerf_talk.config import LossConfig
from preprocess.labels import Label


def pixel_weights(labels: torch.Tensor, cfg: LossConfig) -> torch.Tensor:  # [R] uint8 -> [R] float
    """Per-pixel weights of the photometric loss: the mouth (lips, interior, teeth) and the eyes count more, since
    they carry the expression and are where talking-head renderers are judged (and usually blur)."""
    w = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    lab = labels.long()
    mouth = (lab == Label.LIPS) | (lab == Label.MOUTH) | (lab == Label.TEETH)
    w = torch.where(mouth, torch.full_like(w, cfg.mouth_weight), w)
    return torch.where(lab == Label.EYES, torch.full_like(w, cfg.eyes_weight), w)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_r w_r |pred_r - target_r|^2 / (3 sum_r w_r); pred, target [R, 3], weights [R]."""
    return ((pred - target) ** 2).mean(-1).mul(weights).sum() / weights.sum().clamp(min=1e-8)


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def latent_decorrelation(latents: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Mean squared correlation between each latent channel and each motion coefficient over the training frames
    (latents [F, L], motion [F, C]): 0 when the latents carry nothing linearly predictable from the motion."""
    z_l = latents - latents.mean(0)
    z_m = motion - motion.mean(0)
    z_l = z_l / (z_l.norm(dim=0, keepdim=True) + 1e-6)
    z_m = z_m / (z_m.norm(dim=0, keepdim=True) + 1e-6)
    return ((z_l.T @ z_m) ** 2).mean()


def patch_losses(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - SSIM, L1 between image gradients) of patches pred, target [P, 3, H, W]: SSIM keeps the local structure
    of lips and teeth, the gradient term their edges, which a per-pixel loss averages into blur."""
    win = 7 if min(pred.shape[-2:]) >= 7 else 3
    ssim = kornia.metrics.ssim(pred, target, window_size=win).mean()
    dx = lambda im: im[..., :, 1:] - im[..., :, :-1]  # noqa: E731
    dy = lambda im: im[..., 1:, :] - im[..., :-1, :]  # noqa: E731
    grad = (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()
    return 1.0 - ssim, grad

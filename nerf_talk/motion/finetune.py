"""Per-person fine-tune of the generic audio-to-motion network, at fit time, on the person's own clip.

    model, report = finetune(generic, features, motion, points)

The clip (features at MODEL_FPS and the person's real lower-face motion [N, K, 3], both of the training frames) is
split in time: the first part trains, the last `tail_fraction` is held out. The whole network is trained to predict
the generic-basis coefficients of the person's motion (basis.encode), with
  - an L2 pull toward the generic weights (`anchor`: what the network knew of everyone else is kept unless the
    person's data argues against it), dropout as in training, a small learning rate;
  - early stopping on the held-out tail: every `eval_every` steps the tail's coefficient error is measured and the
    best weights kept; `patience` evaluations without improvement stop it.
Then the decision, on the tail: the generic path and the fine-tuned path, each followed by a personal adapter fitted
on the first part (as `nerf-talk fit` does), are scored by the mouth-opening correlation (1 s high-pass) with the
real lips. The fine-tuned network is returned only if it scores higher; otherwise the generic model is returned and
the report says why. Nothing here is written to disk: the avatar embeds the returned model (avatar.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from nerf_talk.motion import features as mf
from nerf_talk.motion import metrics as mx
from nerf_talk.motion.model import MODEL_FPS, MotionModel
from nerf_talk.motion.train import coefficient_loss


@dataclass
class FinetuneConfig:
    """Settings of the per-person fine-tune (defaults: under a minute of one CPU core for a 3-minute clip)."""

    tail_fraction: float = 0.2  # the clip's end held out for early stopping and the decision
    max_steps: int = 800
    eval_every: int = 25
    # Evaluations without a better tail error before stopping. 4 (100 steps) gave up on a GRID file whose tail only
    # improved after 150 steps; 8 raised the scored half of 8 GRID files the shipped model never saw from 0.503 to
    # 0.528 on average (docs/MOTION_MODEL.md).
    patience: int = 8
    lr: float = 3e-4
    anchor: float = 0.1  # weight of sum((w - w_generic)^2) in the loss
    window: int = 100  # frames per training window (4 s)
    batch: int = 8
    velocity_weight: float = 0.5  # as in the generic training: frame-difference error keeps the motion crisp
    min_frames: int = 250  # a clip shorter than this (10 s) is not fine-tuned: its tail would be too short to judge
    seed: int = 0


def too_short(n_frames: int, cfg: FinetuneConfig) -> str | None:
    """Why a clip of `n_frames` (at MODEL_FPS) is not fine-tuned, or None when it is long enough."""
    if n_frames < cfg.min_frames:
        return f"clip too short to fine-tune ({n_frames} frames < {cfg.min_frames})"
    return None


def tail_score(model: MotionModel, features: dict, motion: np.ndarray, points, split: int) -> float:
    """Mouth-opening correlation (1 s high-pass) on frames [split:] of the model's path through a personal adapter
    fitted on frames [:split] (predict.motion_coeffs, adapter.fit_adapter): what the avatar would show there."""
    from nerf_talk.motion.adapter import fit_adapter
    from nerf_talk.motion.predict import motion_coeffs

    coeffs = motion_coeffs(model, features)[0]
    adapter = fit_adapter(coeffs[:split], motion[:split], points, n_components=min(12, split - 1))
    pred = adapter.apply(coeffs)[split:]
    o_pred = mx.highpass(mx.mouth_opening(pred, points), MODEL_FPS)
    o_real = mx.highpass(mx.mouth_opening(motion[split:], points), MODEL_FPS)
    return mx.correlation(o_pred, o_real)


def finetune(generic: MotionModel, features: dict, motion: np.ndarray, points,
             cfg: FinetuneConfig | None = None) -> tuple[MotionModel, dict]:
    """(the model to use, a report dict). features: compute_features' dict at MODEL_FPS, motion [N, K, 3] the real
    lower-face motion of the same N frames (contiguous). See the module docstring."""
    cfg = cfg or FinetuneConfig()
    t0 = time.process_time()
    feats = {k: np.asarray(v) for k, v in features.items()}
    motion = np.asarray(motion, np.float32)
    n = min(len(motion), len(feats["energy"]))
    report = {"config": asdict(cfg), "frames": int(n)}
    reason = too_short(n, cfg)
    if reason:
        report.update(used=False, reason=reason)
        return generic, report
    split = int(round(n * (1 - cfg.tail_fraction)))
    x = torch.from_numpy(mf.input_features({k: v[:n] for k, v in feats.items()}))  # [N, D]
    target = torch.from_numpy(generic.basis.encode(motion[:n]).astype(np.float32))  # [N, C]
    unit = float(np.sqrt(np.mean(generic.basis.scale ** 2)))

    net = copy.deepcopy(generic.net).cpu()
    anchor = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    win = min(cfg.window, split)
    # The tail is judged with the frames before it as context (the network looks 1.6 s back), as at render time.
    ctx = max(0, split - net.receptive_left)

    def tail_error() -> float:
        net.eval()
        with torch.no_grad():
            pred, _ = net(x[None, ctx:])
        net.train()
        return float((((pred[0, split - ctx:] - target[split:]) / unit) ** 2).mean())

    best, best_state, bad, step = tail_error(), copy.deepcopy(net.state_dict()), 0, 0
    start_error = best
    net.train()
    while step < cfg.max_steps:
        starts = rng.integers(0, split - win + 1, cfg.batch)
        xb = torch.stack([x[s:s + win] for s in starts])
        yb = torch.stack([target[s:s + win] for s in starts])
        pred, _ = net(xb)
        loss_pos, loss_vel = coefficient_loss(pred, yb, unit)
        loss = loss_pos + cfg.velocity_weight * loss_vel + cfg.anchor * sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchor))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.eval_every == 0:
            e = tail_error()
            if e < best:
                best, best_state, bad = e, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    net.load_state_dict(best_state)
    net.eval()
    tuned = MotionModel(net, generic.basis, generic.vocab, generic.viseme_motion,
                        dict(generic.meta, finetuned={"frames": int(split), "steps": step}))
    before = tail_score(generic, feats, motion[:n], points, split)
    after = tail_score(tuned, feats, motion[:n], points, split)
    used = after > before
    report.update(used=used, steps=step, tail_frames=int(n - split), tail_coeff_error=[round(start_error, 4),
                  round(best, 4)], tail_opening_corr={"generic": round(before, 4), "finetuned": round(after, 4)},
                  cpu_seconds=round(time.process_time() - t0, 1))
    if not used:
        report["reason"] = (f"the fine-tuned network did not beat the generic one on the held-out tail "
                            f"(opening correlation {after:.3f} <= {before:.3f})")
    return (tuned if used else generic), report

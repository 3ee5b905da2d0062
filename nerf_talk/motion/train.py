"""Training the generic audio-to-motion model on a corpus, on one process or many (torchrun / DDP).

    train_motion(corpus_dir, out, recipe=None, overrides=None) -> Path of the saved model

One process: `nerf-talk train-motion CORPUS_DIR -o OUT`. Many GPUs or machines:
`torchrun --nproc_per_node=8 -m nerf_talk.motion.train CORPUS_DIR OUT [--recipe R] [KEY=VALUE ...]`; each process
reads WORLD_SIZE/RANK/LOCAL_RANK from the environment, draws its own windows (corpus.WeightedStream, seeded per rank), and
gradients are averaged by DistributedDataParallel. Every process fits the same basis from the same files
(deterministic), so nothing but gradients has to travel. Rank 0 writes the model, the resolved recipe and
tensorboard logs.

Steps:
  1. index the corpus (corpus.find_datasets, synthetic shards), minus data.holdout, skipping unreadable datasets;
     rescale each speaker's motion to the median amplitude and weight draws per speaker (corpus.py);
  2. fit the generic basis (PCA of the real clips' lower-face motion) and the per-viseme mean motion (ridge
     regression of the real motion on the viseme posteriors of their own posteriorgrams);
  3. train the network on windows: MSE of basis coefficients + MSE of their frame differences + blink BCE.
     OUT/checkpoint.pt is written every train.checkpoint_every steps; rerunning the same command resumes from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nerf_talk import audio_features as af
from nerf_talk.errors import UserError
from nerf_talk.media import write_atomic
from nerf_talk.motion import corpus as cp
from nerf_talk.motion import features as mf
from nerf_talk.motion import visemes as vz
from nerf_talk.motion.config import MotionRecipe, load_recipe
from nerf_talk.motion.basis import GenericMotionBasis
from nerf_talk.motion.model import MODEL_FPS, Audio2Motion, MotionModel

log = logging.getLogger("nerf_talk.motion")
MODEL_NAME = "audio2motion"


def load_sources(corpus_dir: str | Path, cfg: MotionRecipe, vocab: list[str]) -> tuple[list[cp.Source], list[cp.Source]]:
    """(real sources, synthetic sources) of the corpus, without the held-out datasets. A dataset that cannot be read
    (preprocessing failed, e.g. no face found, or files damaged) is skipped with a warning naming it and why; the
    summary says how many were used and skipped. Each real source's speaker is set (corpus.speaker_of)."""
    speakers = cp.read_speakers(corpus_dir)
    real, skipped = [], []
    for p in cp.find_datasets(corpus_dir):
        if p.name in cfg.data.holdout:
            log.info("holding out %s", p.name)
            continue
        try:
            src = cp.load_real(p, vocab, cfg.data.use_val_frames)
        except (UserError, OSError, ValueError, KeyError) as e:
            log.warning("skipping %s: %s", p, str(e).splitlines()[0])
            skipped.append(p.name)
            continue
        src.speaker = cp.speaker_of(p.name, speakers)
        real.append(src)
    log.info("corpus: %d usable datasets of %d speakers; %d skipped%s", len(real), len({s.speaker for s in real}),
             len(skipped), f" ({', '.join(skipped)})" if skipped else "")
    syn_dir = Path(cfg.data.synthetic_dir) if cfg.data.synthetic_dir else Path(corpus_dir) / "synthetic"
    synthetic = [cp.load_synthetic(p) for p in sorted(syn_dir.glob("*.npz"))] if syn_dir.is_dir() else []
    if not real:
        what = f"{len(skipped)} could not be read (see the warnings above)" if skipped else "none found"
        raise UserError(f"no usable preprocessed dataset in {corpus_dir}: {what} (held out: {cfg.data.holdout})",
                        "run `nerf-talk preprocess VIDEO -o CORPUS_DIR/NAME` for each video of a visible face first.")
    return real, synthetic


def fit_viseme_motion(real: list[cp.Source], basis: GenericMotionBasis, vocab: list[str]) -> np.ndarray:
    """[V, C] per-viseme mean coefficients from the real clips (visemes.fit_viseme_motion), with the bilabial row
    replaced by the mean of the clips' own closed-lip speech frames: the recogniser's timing of /p b m/ is a frame
    or two off, which would blur a regressed closure, while the frames where a speaker's lips are shut are known."""
    vis, coeffs, closed = [], [], []
    for s in real:
        speech = mf.speech_mask(s.features)
        vis.append(vz.ppg_to_visemes(np.asarray(s.features["ppg"]), speech, tuple(vocab)))
        c = basis.encode(np.asarray(s.motion))
        coeffs.append(c)
        opening = np.asarray(s.mouth_opening)
        shut = speech & (opening <= np.percentile(opening[speech], 5)) if speech.any() else speech
        if shut.any():
            closed.append(c[shut].mean(0))
    W = vz.fit_viseme_motion(vis, coeffs)
    if closed:
        W[vz.V["bilabial"]] = np.mean(closed, 0)
    return W


def _device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train_motion(corpus_dir: str | Path, out: str | Path, recipe: str | Path | None = None,
                 overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Train the generic model on the corpus; returns OUT/audio2motion.safetensors (rank 0's write)."""
    cfg = load_recipe(recipe, overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(cfg.train.device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed + rank)
    out = Path(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    vocab = af.phoneme_vocabulary()
    real, synthetic = load_sources(corpus_dir, cfg, vocab)
    gains = cp.normalise_speakers(real)
    basis = GenericMotionBasis.fit([s.motion for s in real], list(_points(real, corpus_dir)), cfg.model.n_coeffs)
    viseme_motion = fit_viseme_motion(real, basis, vocab)
    data = cp.WindowDataset(real + synthetic, basis, viseme_motion, cfg.data.window, cfg.data.coarticulation_frames,
                            blank_column=vocab.index(af.BLANK), lead_frames=cfg.data.synthetic_lead_frames)
    draw = data.weights(cfg.data.real_share, cfg.data.speaker_cap_minutes * 60 * MODEL_FPS)
    log.info("corpus: %d real clips (%.1f min), %d synthetic utterances (%.1f min), %d windows",
             len(real), sum(s.n_frames for s in real) / MODEL_FPS / 60, len(synthetic),
             sum(s.n_frames for s in synthetic) / MODEL_FPS / 60, len(data))

    for sp in sorted(gains):
        log.info("  speaker %s: %.1f min, amplitude x%.2f, %.1f %% of draws", sp,
                 sum(s.n_frames for s in real if s.speaker == sp) / MODEL_FPS / 60, gains[sp],
                 100 * sum(w for (si, _), w in zip(data.index, draw) if data.sources[si].speaker == sp
                           and data.sources[si].kind == "real"))
    sampler = cp.WeightedStream(draw, cfg.train.seed * 1000 + rank)
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.workers, drop_last=True,
        persistent_workers=cfg.data.workers > 0, pin_memory=device.type == "cuda")

    net = Audio2Motion(cfg.model, mf.input_dim(len(vocab)))
    net.out_scale.copy_(torch.from_numpy(basis.scale))
    net = net.to(device)
    ddp = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None) \
        if world > 1 else net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # Losses in units of the basis's overall spread, so the learning rate does not depend on the corpus's amplitude.
    unit = float(np.sqrt(np.mean(basis.scale ** 2)))

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "logs"))
    ckpt = out / "checkpoint.pt"
    step, t0 = _resume(ckpt, cfg, net, opt), time.time()
    it = iter(loader)
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=step, desc="train-motion")
    net.train()
    while step < cfg.train.steps:
        batch = next(it)  # the sampler is endless
        lr = _lr(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        pred, blink_logit = ddp(batch["x"])  # [B, T, C], [B, T]
        w = batch["weight"][..., None]  # [B, T, 1]
        loss_pos, loss_vel = coefficient_loss(pred, batch["coeffs"], unit, w)
        bm = batch["blink_mask"]
        bce = nn.functional.binary_cross_entropy_with_logits(blink_logit, batch["blink"], reduction="none")
        loss_blink = (bce * bm).sum() / bm.sum().clamp_min(1)
        loss = loss_pos + cfg.train.velocity_weight * loss_vel + cfg.train.blink_weight * loss_blink
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if writer is not None and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
            for k, v in (("loss", loss), ("pos", loss_pos), ("vel", loss_vel), ("blink", loss_blink)):
                writer.add_scalar(f"train/{k}", float(v.detach()), step)
            writer.add_scalar("train/lr", lr, step)
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", pos=f"{float(loss_pos.detach()):.4f}")
        if rank == 0 and cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
            _save_checkpoint(ckpt, cfg, net, opt, step)
    if bar is not None:
        bar.close()

    path = out / f"{MODEL_NAME}.safetensors"
    if rank == 0:
        meta = {"trained_on": {"real": [s.name for s in real], "synthetic_utterances": len(synthetic),
                               "real_minutes": sum(s.n_frames for s in real) / MODEL_FPS / 60,
                               "synthetic_minutes": sum(s.n_frames for s in synthetic) / MODEL_FPS / 60,
                               "holdout": cfg.data.holdout,
                               "speakers": {sp: {"minutes": round(sum(s.n_frames for s in real if s.speaker == sp)
                                                                  / MODEL_FPS / 60, 2),
                                                 "amplitude_gain": round(g, 3)} for sp, g in sorted(gains.items())}},
                "steps": step, "seconds": time.time() - t0, "world_size": world, "model_fps": MODEL_FPS,
                "viseme_classes": list(vz.VISEMES), "recipe": cfg.to_dict()}
        net.eval()
        MotionModel(net.cpu(), basis, vocab, viseme_motion, meta).save(path)
        (out / "recipe.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        writer.close()
        ckpt.unlink(missing_ok=True)  # finished: a rerun starts afresh
    if world > 1:
        torch.distributed.barrier()
    return path


def coefficient_loss(pred: torch.Tensor, target: torch.Tensor, unit: float, weight: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(position, velocity) errors of predicted basis coefficients [B, T, C] against the target, in units of the
    coefficients' typical scale: weighted mean squared error, and the same of their frame differences (it keeps the
    motion crisp). weight [B, T, 1] (default all ones) masks frames without a target. Generic training and the
    per-person fine-tune (motion.finetune) both minimise this."""
    err = (pred - target) / unit
    w = torch.ones_like(err[..., :1]) if weight is None else weight
    loss_pos = (err ** 2 * w).sum() / (w.sum() * err.shape[-1]).clamp_min(1)
    dw = w[:, 1:] * w[:, :-1]
    derr = err[:, 1:] - err[:, :-1]
    return loss_pos, (derr ** 2 * dw).sum() / (dw.sum() * err.shape[-1]).clamp_min(1)


def _save_checkpoint(path: Path, cfg: MotionRecipe, net: nn.Module, opt, step: int) -> None:
    """Network, optimiser and step, written atomically (an interrupted write leaves the previous checkpoint)."""
    state = {"step": step, "recipe": cfg.to_dict(), "net": net.state_dict(), "opt": opt.state_dict()}
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _resume(path: Path, cfg: MotionRecipe, net: nn.Module, opt) -> int:
    """The step to start from: 0, or a checkpoint's step after loading its network and optimiser state. A checkpoint
    of another recipe (other than train.steps) is refused rather than silently mixed in."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    mine, theirs = cfg.to_dict(), dict(state["recipe"])
    mine["train"] = {k: v for k, v in mine["train"].items() if k != "steps"}
    theirs["train"] = {k: v for k, v in theirs["train"].items() if k != "steps"}
    if mine != theirs:
        raise UserError(f"{path} was written by a run with another recipe",
                        "train into a new output folder, or delete the checkpoint to start this one afresh.")
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    log.info("resuming from %s at step %d", path, state["step"])
    return int(state["step"])


def _points(real: list[cp.Source], corpus_dir) -> list[int]:
    """The lower-face landmark indices every dataset was built with (they must agree)."""
    from preprocess import mesh_topology as mt
    from preprocess.dataset import Dataset

    ref = None
    for p in cp.find_datasets(corpus_dir):
        if p.name not in {s.name for s in real}:
            continue
        pts = list(Dataset(p).step_result("face_motion").get("lower_face_points", mt.LOWER_FACE))
        if ref is None:
            ref = pts
        elif pts != ref:
            raise UserError(f"dataset {p} has different lower-face points from the others",
                            "preprocess every dataset with the same nerf_talk version.")
    return ref


def _lr(cfg: MotionRecipe, step: int) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    frac = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.lr_final_factor + (1 - t.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def main(argv: list[str] | None = None) -> None:
    """Entry point for torchrun: python -m nerf_talk.motion.train CORPUS_DIR OUT [--recipe R] [KEY=VALUE ...]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m nerf_talk.motion.train")
    ap.add_argument("corpus_dir")
    ap.add_argument("out")
    ap.add_argument("--recipe", default=None)
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE settings, e.g. train.steps=500")
    a = ap.parse_intermixed_args(argv)  # overrides may come before or after --recipe
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_motion(a.corpus_dir, a.out, a.recipe, a.overrides)


if __name__ == "__main__":
    main()

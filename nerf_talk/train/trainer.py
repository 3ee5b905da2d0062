"""The trainer: stages (head, mouth refinement, torso), schedules, checkpoints, logging, and the NaN guard.

Output directory (AVATAR_DIR):
  config.json              the resolved config of the latest run
  checkpoints/last/        the latest checkpoint (see checkpoint.py), every `checkpoint_every` steps and on Ctrl-C
  train_log.jsonl          one line of scalars every `log_every` steps (appended across resumes)
  tb/                      tensorboard scalars and previews (prediction | ground truth for validation frames)
  preview.jpg              the first held-out frame as rendered now | its ground truth, at every checkpoint
  avatar.safetensors       the trained weights alone (no optimizer state), written when training completes
  avatar.json              what a renderer needs besides the weights: config, intrinsics, head box, figures
  background.png           the plate the avatar was trained over
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from nerf_talk.config import StageConfig, TrainConfig, config_to_json, load, load_config
from nerf_talk.errors import Interrupted, UserError
from nerf_talk.media import check_output_dir, write_atomic
from nerf_talk.train import checkpoint as ck
from nerf_talk.train import losses as L
from nerf_talk.train.data import RayBatch, TrainData
from nerf_talk.train.model import FIELDS_VERSION, AvatarModel, ModelShapes, over_torso_field, render_batch

log = logging.getLogger("nerf_talk.train")
AVATAR_KIND = "nerf_talk.avatar.fields"
N_MOTION_PROBES = 8  # motions the occupancy grid tries in the mouth box (see Trainer.__init__)


class TrainingDiverged(UserError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = 'cuda' but no CUDA device is available", "use device = 'auto' or 'cpu'.")
    return torch.device(name)


def learning_rate(stage: StageConfig, local_step: int) -> float:
    """Linear warm-up, then exponential decay from lr to lr * lr_final_factor over the stage."""
    frac = local_step / max(stage.steps, 1)
    lr = stage.lr * stage.lr_final_factor**frac
    if stage.warmup_steps:
        lr *= min(1.0, (local_step + 1) / stage.warmup_steps)
    return lr


class _StopFlag:
    """Turns the first Ctrl-C or SIGTERM (what `timeout`, docker and systemd send) into a request to stop after the
    current step and save; a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset_dir: Path, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = TrainData(dataset_dir, cfg.data, self.device)
        self.model = AvatarModel(cfg, ModelShapes.from_data(cfg, self.data)).to(self.device)
        self.motion = self.data.motion.to(self.device)  # [N, C]
        self.eyes = self.data.eyes.to(self.device)  # [N, 3]
        self.train_motion = self.motion[torch.tensor(self.data.train_frames, device=self.device)]  # [F, C]
        # The mouth's density depends on the motion: the occupancy grid keeps a mouth cell if any of these training
        # frames' motions fills it. Frames at evenly spaced ranks of the first coefficient (mostly the mouth's
        # opening), both extremes included, span the person's range with few density evaluations per grid update.
        order = torch.argsort(self.train_motion[:, 0])
        self.motion_probes = self.train_motion[order[torch.linspace(0, len(order) - 1, N_MOTION_PROBES).round().long()]]
        self.gen = torch.Generator().manual_seed(cfg.seed)  # ray/frame sampling (CPU, device-independent)
        self.grid_gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)  # occupancy-grid updates
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_stage = -1
        self.ckpt_dir = out / "checkpoints"
        self._mean_image: torch.Tensor | None = None

    # -- state --------------------------------------------------------------------------------------------------
    def rng_state(self) -> dict[str, torch.Tensor]:
        s = {"torch_cpu": torch.get_rng_state(), "sampler": self.gen.get_state(), "grid": self.grid_gen.get_state()}
        if self.device.type == "cuda":
            s["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return s

    def set_rng_state(self, s: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(s["torch_cpu"])
        self.gen.set_state(s["sampler"])
        self.grid_gen.set_state(s["grid"])
        if self.device.type == "cuda" and "torch_cuda" in s:
            torch.cuda.set_rng_state(s["torch_cuda"], self.device)

    def save(self) -> Path:
        state = {"step": self.step, "opt_stage": self.opt_stage, "config": self.cfg.to_dict()}
        return ck.save_checkpoint(self.ckpt_dir, self.model, self.optimizer, self.rng_state(), state)

    def restore(self, ckpt: Path) -> None:
        state = ck.load_state(ckpt)
        ck.load_model_weights(self.model, ckpt / "model.safetensors")
        self.step = int(state["step"])
        if state["opt_stage"] >= 0 and self.step < self.cfg.total_steps:
            i, _, _ = self.cfg.stage_at(self.step)
            if i == state["opt_stage"]:
                self._make_optimizer(i)
                ck.load_optimizer(self.optimizer, ckpt)
        self.set_rng_state(ck.load_rng(ckpt))

    def _make_optimizer(self, stage_index: int) -> None:
        stage = self.cfg.stages[stage_index]
        module = self.model.torso if stage.kind == "torso" else self.model.head
        fast = [p for n, p in module.named_parameters() if n.startswith("grid.") or n == "latents"]
        slow = [p for n, p in module.named_parameters() if not (n.startswith("grid.") or n == "latents")]
        # instant-ngp's Adam settings: a tiny eps so rarely touched hash entries still get full-size updates.
        self.optimizer = torch.optim.Adam([{"params": fast, "lr_factor": 1.0},
                                           {"params": slow, "lr_factor": stage.mlp_lr_factor}],
                                          lr=stage.lr, betas=(0.9, 0.99), eps=1e-15)
        self.opt_stage = stage_index

    # -- one step -----------------------------------------------------------------------------------------------
    def _update_grid(self) -> None:
        r = self.cfg.render
        # grid_threshold is an opacity per step; the grid compares densities, so divide by the step length.
        head, probes = self.model.head, self.motion_probes
        self.model.grid.update(lambda x: head.density_fn(x, probes), self.step, threshold=r.grid_threshold / r.step_size,
                               warmup_steps=r.grid_warmup_steps, generator=self.grid_gen, backend=self.cfg.backend)

    def _head_losses(self, out: dict, batch) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        w = L.pixel_weights(batch.labels, lc)
        terms = {"photometric": L.weighted_mse(out["rgb"], batch.rgb, w)}
        terms["opacity"] = lc.opacity * ((out["head_opacity"] - batch.head_mask.float()) ** 2).mean()
        if lc.sparsity:
            # Fog that no ray sees empty (behind and inside the head) would keep the occupancy grid full.
            box = self.model.head.aabb
            x = box[:3] + torch.rand(4096, 3, generator=self.gen).to(self.device) * (box[3:] - box[:3])
            # The motion-free density: density_fn's maximum over probe motions is for the grid, not a density to carve.
            alpha = 1 - torch.exp(-self.model.head.get_density(x)[0] * self.cfg.render.step_size)
            terms["sparsity"] = lc.sparsity * alpha.mean()
        if self.cfg.head.latent_dim:
            lat = self.model.head.latents
            terms["latent_l2"] = lc.latent_l2 * (lat**2).sum(-1).mean()
            terms["latent_decorrelation"] = lc.latent_decorrelation * L.latent_decorrelation(lat, self.train_motion)
        return terms

    def _jitter(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.gen).to(self.device)

    def train_step(self, stage: StageConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        d, m = self.cfg.data, self.model
        extra: dict[str, float] = {}
        if stage.kind in ("head", "mouth"):
            m.head.train()
            if self.step % self.cfg.render.grid_update_every == 0:
                self._update_grid()
            def head_rays(n: int) -> RayBatch:  # the head stage's draw of n rays
                return self.data.sample_rays(self.gen, n, d.frames_per_step, d.head_ray_fraction,
                                             d.mouth_ray_fraction, d.eye_ray_fraction)

            if stage.kind == "head":
                batch = head_rays(d.rays_per_step)
            else:
                batch = self.data.sample_mouth_patches(self.gen, stage.patches_per_step, stage.patch_size)
                n_patch_rays = len(batch.frames)
                if stage.head_rays:
                    batch = RayBatch.cat([batch, head_rays(stage.head_rays)])
            n = len(batch.frames)
            keep = (torch.rand(n, generator=self.gen) >= self.cfg.head.latent_dropout).float().to(self.device)
            out = render_batch(m, self.data, self.motion, self.eyes, batch, "gt", keep, self._jitter(n))
            terms = self._head_losses(out, batch)
            if stage.kind == "mouth":
                p = min(stage.patch_size, *self.data.size)
                to_img = lambda x: x.reshape(-1, p, p, 3).permute(0, 3, 1, 2)  # noqa: E731  [P, 3, p, p]
                ssim, grad = L.patch_losses(to_img(out["rgb"][:n_patch_rays]), to_img(batch.rgb[:n_patch_rays]))
                terms["ssim"] = self.cfg.loss.ssim * ssim
                terms["gradient"] = self.cfg.loss.gradient * grad
        else:  # torso under a frozen head
            m.head.eval()
            jaw = d.torso_jaw_ray_fraction  # (drawn out of a head share of the same size: see sample_rays)
            batch = self.data.sample_rays(self.gen, d.rays_per_step, d.frames_per_step, jaw, jaw_fraction=jaw)
            with torch.no_grad():
                keep = torch.ones(len(batch.frames), device=self.device)
                head = render_batch(m, self.data, self.motion, self.eyes, batch, "none", keep)
            out = over_torso_field(m, self.data, batch, head["head_rgb"], head["head_opacity"])
            w = L.pixel_weights(batch.labels, self.cfg.loss)
            # Opaque on the neck and torso, and a little way up under the head's lower edge (data.BODY_UNDERLAP)
            alpha = torch.maximum(batch.torso_rgba[:, 3], batch.under_jaw.to(batch.torso_rgba.dtype))
            terms = {"photometric": L.weighted_mse(out["rgb"], batch.rgb, w),
                     "torso_alpha": self.cfg.loss.torso_alpha * ((out["torso_alpha"] - alpha) ** 2).mean()}
            jaw_px = batch.under_jaw
            if self.cfg.loss.torso_under_jaw and bool(jaw_px.any()):
                err = ((out["torso_rgb"][jaw_px] - batch.rgb[jaw_px]) ** 2).mean()
                terms["torso_under_jaw"] = self.cfg.loss.torso_under_jaw * err
        extra["psnr"] = L.psnr(float(((out["rgb"].detach() - batch.rgb) ** 2).mean()))
        extra["samples_per_ray"] = float(out["n_samples"]) / len(batch.frames) if "n_samples" in out else 0.0
        return terms, extra

    # -- validation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_frame(self, i: int, torso: str) -> tuple[torch.Tensor, torch.Tensor]:  # pred, gt [H, W, 3]
        """Frame `i` through the renderer every avatar uses (render.video.FrameRenderer), with the dataset's pose,
        motion and eyes, and no latent (validation frames are rendered as any new frame is). torso: "field" (the
        torso field), "gt" (the dataset's own torso: head stages) or "none" (the background)."""
        from nerf_talk.render import torso_over
        from nerf_talk.render.video import FrameRenderer

        self.model.eval()
        full = self.data.full_frame(i)
        r = FrameRenderer(self.model, self.data.intrinsics, torso=torso == "field", device=self.device)
        under = torso_over(full.torso_rgba[:, :3], full.torso_rgba[:, 3], r.background) if torso == "gt" else None
        pred = r.render_float(self.data.poses[i], self.motion[i], self.eyes[i], under)
        h, w = self.data.size
        return pred.clamp(0, 1), full.rgb.reshape(h, w, 3)

    def write_preview(self) -> None:
        """preview.jpg (rendered | real, the first held-out frame), rewritten at every periodic checkpoint so that a
        watcher (the studio page) sees the avatar take shape. The random state and the modules' train/eval modes
        are put back afterwards: training goes on exactly as without the preview."""
        import cv2

        frames = self.data.val_frames or self.data.train_frames[-1:]
        modes = {m: m.training for m in self.model.modules()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            pred, gt = self.render_frame(frames[0], "field" if self.torso_trained() else "gt")
        for m, mode in modes.items():
            m.train(mode)
        img = (torch.cat([pred, gt], 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        write_atomic(self.out / "preview.jpg", lambda p: cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))

    def torso_trained(self) -> bool:
        start = 0
        for s in self.cfg.stages:
            if s.kind == "torso" and s.steps and self.step > start:
                return True
            start += s.steps
        return False

    def validate(self, writer) -> dict[str, float]:
        frames = self.data.val_frames or self.data.train_frames[-1:]
        torso = "field" if self.torso_trained() else "gt"
        if self._mean_image is None:
            self._mean_image = self.data.mean_image().to(self.device)
        mses, base = [], []
        for k, i in enumerate(frames):
            pred, gt = self.render_frame(i, torso)
            mses.append(float(((pred - gt) ** 2).mean()))
            base.append(float(((self._mean_image - gt) ** 2).mean()))
            if writer is not None and k < 3:
                writer.add_image(f"val/{i:06d}", torch.cat([pred, gt], 1).permute(2, 0, 1).cpu(), self.step)
        res = {"psnr": L.psnr(float(np.mean(mses))), "mean_image_psnr": L.psnr(float(np.mean(base))),
               "torso": torso, "frames": frames}
        if writer is not None:
            writer.add_scalar(f"val/psnr_{'full' if torso == 'field' else 'head_over_gt_torso'}", res["psnr"], self.step)
            writer.add_scalar("val/mean_image_psnr", res["mean_image_psnr"], self.step)
        return res

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, writer=None) -> str:
        """Trains from self.step to the end or to stop_at_step ("done" or "stopped"). Ctrl-C or SIGTERM saves a
        checkpoint and raises Interrupted."""
        cfg = self.cfg
        log_path = self.out / "train_log.jsonl"
        total = cfg.total_steps
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
        t_last = time.perf_counter()
        repair_log(log_path)
        # The bar is closed on every way out, so that an error message is not followed by a stale progress line.
        with bar, _StopFlag() as stop, open(log_path, "a") as logf:
            while self.step < total:
                si, stage, local = cfg.stage_at(self.step)
                if self.opt_stage != si or self.optimizer is None:
                    self._make_optimizer(si)
                lr = learning_rate(stage, local)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g["lr_factor"]
                terms, extra = self.train_step(stage)
                loss = sum(terms.values())
                if not torch.isfinite(loss):
                    self._diverged(stage, {k: float(v.detach()) for k, v in terms.items()}, "loss")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
                gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm=float("inf"))
                if not torch.isfinite(gnorm):
                    self._diverged(stage, {k: float(v) for k, v in terms.items()}, "gradient")
                self.optimizer.step()
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    rec = {"step": self.step, "stage": stage.name, "loss": float(loss.detach()), "lr": lr,
                           **{k: float(v.detach()) for k, v in terms.items()}, **extra,
                           "occupied": self.model.grid.occupied_fraction(),
                           "sec_per_step": (now - t_last) / cfg.log_every}
                    t_last = now
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    bar.set_postfix(stage=stage.name, loss=f"{float(loss.detach()):.4f}", psnr=f"{extra['psnr']:.1f}")
                    if writer is not None:
                        for k, v in rec.items():
                            if isinstance(v, float):
                                writer.add_scalar(f"train/{k}", v, self.step)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                    self.write_preview()
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < total:
                    self.validate(writer)
                if stop.requested or (cfg.stop_at_step and self.step >= cfg.stop_at_step and self.step < total):
                    path = self.save()
                    bar.close()
                    if stop.requested:
                        why = "Ctrl-C" if stop.signum == signal.SIGINT else signal.Signals(stop.signum).name
                        raise Interrupted(stop.signum, f"training stopped at step {self.step} ({why}); "
                                                       f"checkpoint {path}")
                    log.warning("stopped at step %d (stop_at_step = %d); checkpoint %s; continue with --resume",
                                self.step, cfg.stop_at_step, path)
                    return "stopped"
        bar.close()
        return "done"

    def _diverged(self, stage: StageConfig, terms: dict[str, float], what: str) -> None:
        last = ck.find_checkpoint(self.ckpt_dir)
        kept = (f"the last good checkpoint (step {ck.load_state(last)['step']}) is kept in {last}" if last
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1} (stage {stage.name!r}): the {what} is not finite "
            f"(loss terms: {', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); {kept}",
            "lower the stage's lr in the recipe (or data.rays_per_step up) and continue with --resume.",
        )

    def write_avatar(self, figures: dict) -> None:
        """The trained weights without optimizer state, and the metadata a renderer needs."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        write_atomic(self.out / "avatar.safetensors", lambda p: save_file(tensors, str(p)))
        meta = {
            "kind": AVATAR_KIND, "format_version": FIELDS_VERSION, "steps": self.step,
            "dataset": str(self.data.ds.root), "intrinsics": self.data.intrinsics.to_dict(),
            "head_aabb": self.model.head.aabb.tolist(), "n_motion": int(self.model.motion_components.shape[0]),
            "motion_explained": self.data.basis.explained(self.data.ds.load_array("lower_face_motion")),
            "train_frames": self.data.train_frames, "figures": figures, "config": self.cfg.to_dict(),
        }
        write_atomic(self.out / "avatar.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
        shutil.copyfile(self.data.ds.path("background.png"), self.out / "background.png")


def _resume_config(ckpt: Path, overrides: list[str] | None) -> TrainConfig:
    return load(TrainConfig, data=ck.load_state(ckpt)["config"], overrides=overrides)


def train(dataset_dir, out_dir, recipe_path=None, overrides=None, resume: bool = False) -> Path:
    """Trains an avatar from the dataset at `dataset_dir` into `out_dir` and returns `out_dir`.

    recipe_path: a TOML recipe (recipes/*.toml); overrides: ["section.key=value", ...] applied on top. With `resume`,
    training continues from out_dir's last checkpoint with the config saved there (overrides still apply), exactly
    where it stopped: step, weights, occupancy grid, optimizer state and random state.
    """
    out = Path(out_dir)
    check_output_dir(out)
    ckpt = ck.find_checkpoint(out / "checkpoints") if resume else None
    if resume and ckpt is None:
        raise UserError(f"--resume: {out} holds no checkpoint", "start a new run without --resume.")
    if ckpt is not None:
        if recipe_path is not None:
            log.warning("--resume uses the config saved in %s; the recipe %s is ignored", ckpt, recipe_path)
        cfg = _resume_config(ckpt, overrides)
    else:
        cfg = load_config(recipe_path, overrides)
        if (out / "checkpoints").exists() and cfg.init_from != "out":
            raise UserError(f"{out} already holds a training run",
                            "pass --resume to continue it, or choose another output directory.")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, Path(dataset_dir), out)
    if ckpt is not None:
        trainer.restore(ckpt)
    elif cfg.init_from:
        src = out if cfg.init_from == "out" else Path(cfg.init_from)
        if not (src / "avatar.safetensors").exists():
            raise UserError(f"init_from: {src} holds no avatar.safetensors", "train the head first (recipes/head.toml).")
        ck.load_model_weights(trainer.model, src / "avatar.safetensors")
    text = config_to_json(cfg)
    write_atomic(out / "config.json", lambda p: p.write_text(text))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    try:
        status = trainer.run(writer)
        if status == "stopped":
            return out
        trainer.save()
        figures = trainer.validate(writer)
        figures["seconds_per_step"] = _mean_sec_per_step(out / "train_log.jsonl")
        trainer.write_avatar(figures)
        doc = json.dumps(figures, indent=2)
        write_atomic(out / "metrics.json", lambda p: p.write_text(doc))
        log.info("val PSNR %.2f dB (mean image %.2f dB)", figures["psnr"], figures["mean_image_psnr"])
    finally:
        writer.close()
    return out


def repair_log(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write, a full disk) off the log, so that the records appended next start
    on a line of their own."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - keep)
            f.truncate(keep)


def read_log(path: Path) -> list[dict]:
    """The records of train_log.jsonl; lines that are not JSON records (a torn tail) are skipped with a warning."""
    recs, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            rec = None
            bad += 1
        if isinstance(rec, dict):
            recs.append(rec)
    if bad:
        log.warning("%s: skipped %d damaged line(s)", path, bad)
    return recs


def _mean_sec_per_step(path: Path) -> float:
    vals = [r.get("sec_per_step", math.nan) for r in read_log(path)]
    vals = [v for v in vals if isinstance(v, float) and math.isfinite(v)]
    return float(np.median(vals)) if vals else math.nan

"""Training benchmark: train a recipe on a preprocessed dataset, then score the held-out frames.

    .venv/bin/python bench/bench_train.py DATASET                                  # recipes/smoke_cpu.toml, CPU
    .venv/bin/python bench/bench_train.py DATASET --recipe head --recipe torso     # the full recipe (GPU)
    .venv/bin/python bench/bench_train.py DATASET --out runs/x --set data.scale=0.5 --json x.json --figure x.png

Training goes through nerf_talk.train.trainer.train(), the path `nerf-talk train` takes; several --recipe are run
one after another into the same output directory (head.toml then torso.toml is the full GPU recipe). The model is
then restored from the run's last checkpoint and every validation frame of split.json ("val", not capped by
data.max_val_frames) is rendered with Trainer.render_frame: the dataset's real poses, motion coefficients and eyes,
no per-frame latent (validation frames have none), the torso from the torso field when a torso stage was trained and
from the ground-truth torso otherwise (the output says which), composited over the trained background.

Figures (all at the render size, i.e. the dataset's frame size times data.scale):
  full frame   PSNR of the mean squared error pooled over every pixel of every validation frame; SSIM (kornia's
               11x11 Gaussian-window SSIM on [0, 1] RGB) averaged over the SSIM map, then over frames.
  head region  the pixels whose ground-truth parsing label is a head class (preprocess.labels.HEAD_LABELS; labels are
               resized to the render size with nearest-neighbour): PSNR pooled over those pixels only; SSIM over the
               head mask's bounding box (the crop of render and ground truth), averaged over frames.
  baseline     the same PSNRs for the mean of the training frames (the image a model that learned nothing would
               converge to).
  time         wall time of the train() calls (data loading, the trainer's own 4-frame validation, checkpoints and
               tensorboard included) and the median logged seconds per step (the figure metrics.json reports).
  memory       peak resident set size of this process (resource.getrusage ru_maxrss) on the CPU; on CUDA also
               torch.cuda.max_memory_allocated over training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]


def resolve_recipe(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".toml" or p.exists():
        return p
    return ROOT / "recipes" / f"{name}.toml"


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:  # [H, W, 3] in [0, 1]
    from kornia.metrics import ssim as kssim

    x, y = (t.permute(2, 0, 1)[None].float().cpu() for t in (a, b))
    win = 11 if min(x.shape[-2:]) >= 11 else (min(x.shape[-2:]) // 2) * 2 - 1
    return float(kssim(x, y, window_size=max(win, 1), max_val=1.0).mean())


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def train_all(dataset: Path, out: Path, recipes: list[Path], overrides: list[str]) -> dict:
    from nerf_talk.train.trainer import train

    runs = []
    t0 = time.perf_counter()
    for r in recipes:
        t = time.perf_counter()
        train(dataset, out, r, overrides=overrides)
        runs.append({"recipe": str(r), "wall_s": time.perf_counter() - t})
    return {"runs": runs, "wall_s": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(dataset: Path, out: Path, figure_frame: int | None, max_frames: int) -> tuple[dict, np.ndarray]:
    from nerf_talk.train import checkpoint as ck
    from nerf_talk.train.data import HEAD_LUT
    from nerf_talk.train.trainer import Trainer, _resume_config

    ckpt = ck.find_checkpoint(out / "checkpoints")
    cfg = _resume_config(ckpt, None)
    tr = Trainer(cfg, dataset, out)
    tr.restore(ckpt)
    split = tr.data.ds.read_json("split.json")
    frames = [int(i) for i in split.get("val", [])] or tr.data.train_frames[-1:]
    if max_frames:
        frames = frames[:max_frames]
    torso = "field" if tr.torso_trained() else "gt"
    mean_img = tr.data.mean_image().to(tr.device)
    fig_i = figure_frame if figure_frame is not None else frames[len(frames) // 2]
    if fig_i not in frames:
        frames.append(fig_i)
    acc = {k: [0.0, 0] for k in ("full", "head", "base_full", "base_head")}
    ssim_full, ssim_head, per_frame, figure = [], [], [], None
    t0 = time.perf_counter()
    for i in frames:
        pred, gt = tr.render_frame(i, torso)
        head = HEAD_LUT[tr.data.store.get(i).parsing.long()].to(pred.device)  # [H, W] bool at the render size
        se, se_base = ((pred - gt) ** 2).sum(-1), ((mean_img - gt) ** 2).sum(-1)  # [H, W]
        n_head = int(head.sum())
        acc["full"][0] += float(se.sum()); acc["full"][1] += se.numel() * 3  # noqa: E702
        acc["base_full"][0] += float(se_base.sum()); acc["base_full"][1] += se.numel() * 3  # noqa: E702
        acc["head"][0] += float(se[head].sum()); acc["head"][1] += n_head * 3  # noqa: E702
        acc["base_head"][0] += float(se_base[head].sum()); acc["base_head"][1] += n_head * 3  # noqa: E702
        s_full = ssim(pred, gt)
        s_head = math.nan
        if n_head:
            ys, xs = torch.nonzero(head, as_tuple=True)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            s_head = ssim(pred[y0:y1, x0:x1], gt[y0:y1, x0:x1])
            ssim_head.append(s_head)
        ssim_full.append(s_full)
        per_frame.append({"frame": i, "psnr": psnr(float(se.mean()) / 3),
                          "psnr_head": psnr(float(se[head].mean()) / 3) if n_head else math.nan,
                          "ssim": s_full, "ssim_head": s_head})
        if i == fig_i:
            figure = torch.cat([gt, pred], 1).cpu().numpy()
    render_s = time.perf_counter() - t0
    h, w = tr.data.size
    res = {
        "frames": frames, "n_frames": len(frames), "resolution": [w, h], "torso": torso, "steps": tr.step,
        "psnr_full": psnr(acc["full"][0] / acc["full"][1]),
        "ssim_full": float(np.mean(ssim_full)),
        "psnr_head": psnr(acc["head"][0] / max(acc["head"][1], 1)),
        "ssim_head": float(np.nanmean(ssim_head)) if ssim_head else math.nan,
        "mean_image_psnr_full": psnr(acc["base_full"][0] / acc["base_full"][1]),
        "mean_image_psnr_head": psnr(acc["base_head"][0] / max(acc["base_head"][1], 1)),
        "render_s_per_frame": render_s / len(frames),
        "figure_frame": fig_i, "per_frame": per_frame,
        "seconds_per_step": _median_sec_per_step(out / "train_log.jsonl"), "device": str(tr.device),
    }
    return res, figure


def _median_sec_per_step(path: Path) -> float:
    vals = [json.loads(line).get("sec_per_step", math.nan) for line in path.read_text().splitlines() if line]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.median(vals)) if vals else math.nan


def write_figure(img: np.ndarray, path: Path, upscale: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if upscale > 1:
        u8 = cv2.resize(u8, (u8.shape[1] * upscale, u8.shape[0] * upscale), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path, help="a preprocessed dataset directory")
    ap.add_argument("--recipe", action="append", help="recipes/NAME.toml or NAME; repeat to run several in sequence "
                    "into the same output (default: smoke_cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    ap.add_argument("--out", type=Path, help="training output directory (default: a temporary one, deleted after)")
    ap.add_argument("--eval-only", action="store_true", help="skip training: score the run already in --out")
    ap.add_argument("--val-frames", type=int, default=0, help="score only the first N validation frames (0: all)")
    ap.add_argument("--figure-frame", type=int, help="dataset frame for the figure (default: the middle val frame)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs/figures/obama_val_smoke_cpu.png")
    ap.add_argument("--figure-upscale", type=int, default=2, help="nearest-neighbour upscale of the figure")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = [resolve_recipe(r) for r in (args.recipe or ["smoke_cpu"])]
    tmp = None
    if args.out is None:
        if args.eval_only:
            ap.error("--eval-only needs --out")
        tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
        args.out = tmp / "avatar"
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        timing = {"runs": [], "wall_s": math.nan} if args.eval_only else train_all(args.dataset, args.out, recipes,
                                                                                    args.set)
        rss_train = peak_rss_mb()
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        res, figure = evaluate(args.dataset, args.out, args.figure_frame, args.val_frames)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res.update({
        "dataset": str(args.dataset), "recipes": [str(r) for r in recipes], "overrides": args.set,
        "train_wall_s": timing["wall_s"], "train_runs": timing["runs"],
        "peak_rss_mb_after_train": rss_train, "peak_rss_mb": peak_rss_mb(), "cuda_max_allocated_mb": gpu_peak,
        "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if cuda else None, "figure": str(args.figure),
    })
    write_figure(figure, args.figure, args.figure_upscale)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    w, h = res["resolution"]
    print(f"dataset {args.dataset}  recipes {', '.join(Path(r).stem for r in recipes)}  {w}x{h}  steps {res['steps']}"
          f"  device {res['device']}")
    print(f"train wall time {res['train_wall_s']:.1f} s   {res['seconds_per_step']:.4f} s/step (median logged)")
    mem = f"peak RSS {res['peak_rss_mb_after_train']:.0f} MB after training, {res['peak_rss_mb']:.0f} MB overall"
    if gpu_peak is not None:
        mem += f"; CUDA max allocated {gpu_peak:.0f} MB"
    print(mem)
    torso = "the torso field" if res["torso"] == "field" else "ground truth"
    print(f"validation: {res['n_frames']} frames (torso from {torso}), {res['render_s_per_frame']:.2f} s/frame to render")
    print(f"  full frame   PSNR {res['psnr_full']:.2f} dB  SSIM {res['ssim_full']:.4f}"
          f"   (mean image PSNR {res['mean_image_psnr_full']:.2f} dB)")
    print(f"  head region  PSNR {res['psnr_head']:.2f} dB  SSIM {res['ssim_head']:.4f}"
          f"   (mean image PSNR {res['mean_image_psnr_head']:.2f} dB)")
    print(f"figure (ground truth | render, frame {res['figure_frame']}): {args.figure}")


if __name__ == "__main__":
    main()

"""Benchmarks of the cuda_ext kernels per backend.

  encoding:  hash_encode forward + backward to the table (points/s), 3D, 16 levels x 2 features, 2^19 table
  render:    march_rays + composite forward + backward (rays/s) through a 128^3 occupancy grid around a head-sized
             ellipsoid, 2^18 rays from a camera (sigma/rgb of the samples come from an analytic field, not timed)
  warp:      warp_points (points/s) as the head field calls it: the lower face (71 control points, two-sided lips
             stretched across their gap, 5 mm kernels reaching 4x in depth) and the eyelids (32 points, two-sided,
             3 mm), 2^16 points spread over a face

Prints one line per backend with its settings, the speed-up of the C++ CPU backend over the torch reference, and on
a GPU the time a kernel would take if it only moved its compulsory bytes at the card's measured copy bandwidth (the
memory-bandwidth floor), plus tiny-cuda-nn's encoding when it is installed. The reference is slow: it runs on a
subset (--ref-points, --ref-rays) and its rate is reported per point / per ray.

  python bench/bench_kernels.py               # full size, every available backend
  python bench/bench_kernels.py --quick       # small sizes, a few seconds
  python bench/bench_kernels.py --json out.json --plot out.png
  python bench/bench_kernels.py --baseline 0fd0cc9   # also the kernels as they were at a git commit, same run
  python bench/bench_kernels.py --baseline HEAD --baseline-cflags "-O3 -fopenmp"   # the same code, other flags

With --baseline REF the kernels of commit REF (cuda_ext/csrc only: the Python side is today's) are built beside ours
and the compiled backends run twice, "REF" then "ours", back to back, with the speed-up printed; on a CPU-only
machine the CUDA comparison cannot run and the script says so.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuda_ext  # noqa: E402
from cuda_ext import HashGridConfig, OccupancyGrid, _backend, composite, hash_encode, march_rays  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_baseline(ref: str, kind: str, cflags: list[str] | None = None):
    """The compiled extension `kind` built from cuda_ext/csrc as it was at git commit `ref` (or from the sources in
    the directory `ref`, for a copy of the tree without git history), in its own cache dir; with the CPU build's
    flags of today (_backend.cpu_cflags()) or `cflags`."""
    from torch.utils.cpp_extension import load

    cflags = list(_backend.cpu_cflags() if cflags is None else cflags)

    if Path(ref).is_dir():
        src = Path(ref).resolve()
        content = b"".join(f.read_bytes() for f in sorted(src.iterdir()) if f.is_file())
        digest = hashlib.sha256(content + repr((kind, torch.__version__, cflags)).encode()).hexdigest()[:12]
    else:
        sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        names = subprocess.run(["git", "ls-tree", "--name-only", sha, "cuda_ext/csrc/"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        digest = hashlib.sha256(repr((sha, kind, torch.__version__, cflags)).encode()).hexdigest()[:12]
        src = _backend.cache_root() / f"baseline-src-{sha[:12]}"
        src.mkdir(parents=True, exist_ok=True)
        for name in names:
            blob = subprocess.run(["git", "show", f"{sha}:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
            (src / Path(name).name).write_bytes(blob)
    build = _backend.cache_root() / f"baseline-{kind}-{digest}"
    build.mkdir(parents=True, exist_ok=True)
    if kind == "cpu":
        flags = dict(extra_cflags=cflags, extra_ldflags=list(_backend.CPU_LDFLAGS))
    else:
        _backend.load("cuda")  # sets the toolkit for the build
        flags = dict(extra_cflags=list(_backend.CUDA_CFLAGS), extra_cuda_cflags=list(_backend.CUDA_NVCC_FLAGS))
    return load(name=f"nerf_talk_baseline_{kind}_{digest[:8]}", sources=[str(src / s) for s in _backend.SOURCES[kind]],
                extra_include_paths=[str(src)], build_directory=str(build), **flags)


@contextlib.contextmanager
def kernels(kind: str, module):
    """Runs backend `kind` on `module` (a baseline build) inside the block; ours again after it."""
    ours = _backend.load(kind)
    _backend._modules[kind] = module
    try:
        yield
    finally:
        _backend._modules[kind] = ours


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    n = 256 * 2**20  # 1 GiB of float32
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), device, repeats=10, warmup=2)
    return 2 * n * 4 / t


# --------------------------------------------------------------------------------------------------------------
# encoding


def bench_encoding(backend: str, device: torch.device, cfg: HashGridConfig, n_points: int, repeats: int,
                   table_dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(n_points, cfg.dims, generator=g).to(device)
    table = cfg.init_table(dtype=table_dtype, device=device).requires_grad_()
    grad_out = torch.randn(n_points, cfg.out_dim, generator=g).to(device)

    def forward():
        with torch.no_grad():
            hash_encode(x, table, cfg, backend=backend)

    def step():
        table.grad = None
        out = hash_encode(x, table, cfg, backend=backend)
        out.backward(grad_out)

    t_fwd = timeit(forward, device, repeats)
    t = timeit(step, device, repeats)
    table_bytes = table.numel() * table.element_size()
    # compulsory traffic: forward reads x and the table, writes out; backward reads x and grad_out, zeroes and
    # writes a float32 gradient table (and converts it for fp16 tables)
    fwd = x.numel() * 4 + table_bytes + grad_out.numel() * 4
    bwd = x.numel() * 4 + grad_out.numel() * 4 + 2 * table.numel() * 4
    if table_dtype != torch.float32:
        bwd += table.numel() * 4 + table_bytes
    return {"kernel": "encoding", "backend": backend, "device": str(device), "points": n_points,
            "table_dtype": str(table_dtype).replace("torch.", ""), "seconds": t, "forward_s": t_fwd,
            "rate": n_points / t, "unit": "points/s", "bytes": fwd + bwd}


def bench_tcnn_encoding(cfg: HashGridConfig, n_points: int, repeats: int) -> dict | None:
    try:
        import tinycudann as tcnn  # noqa: F401
    except ImportError:
        return None
    device = torch.device("cuda")
    enc = cuda_ext.HashGrid(cfg, backend="tcnn").to(device)
    x = torch.rand(n_points, cfg.dims, device=device)
    grad_out = torch.randn(n_points, cfg.out_dim, device=device)

    def step():
        for p in enc.parameters():
            p.grad = None
        enc(x).backward(grad_out)

    t = timeit(step, device, repeats)
    return {"kernel": "encoding", "backend": "tcnn", "device": str(device), "points": n_points,
            "table_dtype": str(next(enc.parameters()).dtype).replace("torch.", ""), "seconds": t,
            "rate": n_points / t, "unit": "points/s"}


# --------------------------------------------------------------------------------------------------------------
# march + composite


def head_density(x: torch.Tensor) -> torch.Tensor:
    """A head-sized solid ellipsoid with a soft shell (density ~ 0..100) in the box [-1, 1]^3."""
    r = ((x[..., 0] / 0.55) ** 2 + (x[..., 1] / 0.7) ** 2 + (x[..., 2] / 0.6) ** 2).sqrt()
    return 100.0 * torch.sigmoid((1.0 - r) * 40.0)


def make_scene(n_rays: int, grid_res: int, device: torch.device):
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], grid_res, device=device)
    cells = torch.arange(grid.n_cells, device=device)
    # conservative: a cell is occupied when the density exceeds the threshold anywhere near its centre
    centers = grid.cell_centers(cells)
    dilate = (2.0 / grid_res) * math.sqrt(3) / 2
    r = ((centers[:, 0] / (0.55 + dilate)) ** 2 + (centers[:, 1] / (0.7 + dilate)) ** 2
         + (centers[:, 2] / (0.6 + dilate)) ** 2).sqrt()
    grid.set_density((r < 1.0).float(), 0.5)
    # a pinhole camera at z = -3 looking at the origin, square image, fov covering the box
    side = int(math.isqrt(n_rays))
    n_rays = side * side
    ij = torch.stack(torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device),
                                    indexing="ij"), -1).reshape(-1, 2).float()
    focal = side / (2 * math.tan(math.radians(20)))
    dirs = torch.cat([(ij[:, 1:2] + 0.5 - side / 2) / focal, (ij[:, 0:1] + 0.5 - side / 2) / focal,
                      torch.ones(n_rays, 1, device=device)], -1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = torch.tensor([0.0, 0.0, -3.0], device=device).expand(n_rays, 3).contiguous()
    return grid, origins, dirs


def bench_render(backend: str, grid, rays_o, rays_d, step_size: float, repeats: int, eps: float) -> dict:
    device = rays_o.device
    n_rays = rays_o.shape[0]
    state = {}

    def march():
        state["s"] = march_rays(rays_o, rays_d, grid, near=0.0, far=10.0, step_size=step_size, max_samples=4096,
                                backend=backend)

    def shade():
        s = state["s"]
        mid = cuda_ext.sample_positions(rays_o, rays_d, s.ray_indices, s.t_starts, s.t_ends, backend=backend)
        state["sigma"] = head_density(mid).requires_grad_()
        state["rgb"] = torch.sigmoid(mid * 3.0).requires_grad_()

    def render():
        s = state["s"]
        rgb, depth, opacity = composite(state["sigma"], state["rgb"], s.t_starts, s.t_ends, s.packed_info,
                                        early_stop_eps=eps, backend=backend)
        (rgb.sum() + depth.sum() + opacity.sum()).backward()

    t_march = timeit(march, device, repeats)
    shade()
    t_comp = timeit(render, device, repeats)
    n_samples = int(state["s"].t_starts.numel())
    t = t_march + t_comp
    # compulsory traffic: rays and bitfield in, samples out (t_start, t_end, ray index, packed_info); composite
    # forward reads them with sigma and rgb and writes rgb/depth/opacity; backward reads them again and writes grads
    bytes_ = n_rays * (24 + 8 + 16) + grid.bitfield.numel() + n_samples * 16
    bytes_ += n_samples * (4 + 12 + 8) + n_rays * 16 + n_rays * 16
    bytes_ += n_samples * (4 + 12 + 8) + n_rays * 32 + n_samples * 16
    return {"kernel": "march+composite", "backend": backend, "device": str(device), "rays": n_rays,
            "samples": n_samples, "samples_per_ray": n_samples / n_rays, "seconds": t, "march_s": t_march,
            "composite_s": t_comp, "rate": n_rays / t, "unit": "rays/s", "bytes": bytes_}


# --------------------------------------------------------------------------------------------------------------


def bench_warp(backend: str, device: torch.device, n_points: int, repeats: int) -> dict:
    from nerf_talk.fields.warp import (DEPTH_REACH, EYE_LID, EYE_SIGMA, FADE, LID_SWITCH, LIP_SWITCH, LOWER_GUIDE,
                                       LOWER_SIDE, LOWER_SIGMA)

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n_points, 3, generator=g) * 0.03).to(device)
    sets = []
    for sigma, sides, guides, switch, stretch in ((LOWER_SIGMA, LOWER_SIDE, LOWER_GUIDE, LIP_SWITCH, True),
                                                  (EYE_SIGMA, EYE_LID, None, LID_SWITCH, False)):
        ctrl = (torch.randn(1, len(sides), 3, generator=g) * 0.02).to(device)
        disp = (torch.randn(1, len(sides), 3, generator=g) * 0.004).to(device)
        sets.append((ctrl, disp, sigma, torch.tensor(sides, device=device),
                     None if guides is None else torch.tensor(guides, device=device), switch, stretch))

    def run():
        for ctrl, disp, sigma, sides, guides, switch, stretch in sets:
            cuda_ext.warp_points(x, ctrl, disp, sigma, sides=sides, reach_z=DEPTH_REACH, fade=FADE,
                                 switch_width=switch, stretch=stretch, guides=guides, backend=backend)

    secs = timeit(run, device, repeats)
    return {"kernel": "warp", "backend": backend, "device": device.type, "rate": n_points / secs, "unit": "points/s",
            "seconds": secs, "points": n_points}


def bench_mlp(backend: str, n_rows: int, repeats: int) -> dict:
    """The head field's two inference MLPs (density 16 -> 32 -> 16; colour 15 -> 32 -> 32 -> 3 with a sigmoid) over
    n_rows rows each: cuda_ext.mlp_forward ("cpu": fused) or the torch layers it replaces ("torch")."""
    from nerf_talk.fields.mlp import mlp

    torch.manual_seed(0)
    nets = [(mlp(16, 32, 16), False), (mlp(15, 32, 3, n_hidden=2), True)]
    xs = [torch.randn(n_rows, 16), torch.randn(n_rows, 15)]

    def run():
        for (net, sig), x in zip(nets, xs):
            cuda_ext.mlp_forward(x, *cuda_ext.linear_layers(net), sigmoid=sig, backend=backend)

    secs = timeit(run, torch.device("cpu"), repeats)
    return {"kernel": "mlp", "backend": backend, "device": "cpu", "rate": n_rows / secs, "unit": "rows/s",
            "seconds": secs, "rows": n_rows}


def fmt_rate(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:7.2f}{unit}"
    return f"{v:7.1f} "


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few seconds on a CPU)")
    p.add_argument("--points", type=int, default=2**18, help="points per encoding batch")
    p.add_argument("--log2-table", type=int, default=19)
    p.add_argument("--levels", type=int, default=16)
    p.add_argument("--rays", type=int, default=2**18, help="rays per render batch (rounded to a square image)")
    p.add_argument("--grid-res", type=int, default=128)
    p.add_argument("--step", type=float, default=2 * math.sqrt(3) / 512, help="marching step (box side 2)")
    p.add_argument("--warp-points", type=int, default=2**16, help="points per warp batch")
    p.add_argument("--ref-points", type=int, default=2**16, help="points for the (slow) torch reference")
    p.add_argument("--ref-rays", type=int, default=2**12, help="rays for the (slow) torch reference")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--backends", default="torch,cpu,cuda,tcnn")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--plot", type=Path, default=None, help="write a bar chart here (needs matplotlib)")
    p.add_argument("--baseline", default=None, metavar="REF",
                   help="also time the compiled kernels of git commit REF (or of the csrc files in directory REF), "
                        "back to back with ours")
    p.add_argument("--baseline-cflags", default=None, metavar="FLAGS",
                   help="C++ flags of the CPU baseline build instead of today's, e.g. \"$(python -c 'from cuda_ext "
                        "import _backend; print(*_backend.CPU_CFLAGS)')\" for the portable build without -march=native")
    args = p.parse_args(argv)
    if args.quick:
        args.points, args.rays, args.log2_table, args.warp_points = 2**15, 2**14, 16, 2**13
        args.ref_points, args.ref_rays = 2**13, 2**10
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    has_cuda = torch.cuda.is_available()
    cfg = HashGridConfig(3, args.levels, 2, args.log2_table, 16, 2048)
    cpu, gpu = torch.device("cpu"), torch.device("cuda") if has_cuda else None
    threads = torch.get_num_threads()
    print(f"# cuda_ext benchmark | torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"CPU threads {threads} | GPU {torch.cuda.get_device_name() if has_cuda else 'none'}")
    print(f"# encoding: {cfg.dims}D, {cfg.n_levels} levels x {cfg.n_features_per_level} features, table 2^"
          f"{cfg.log2_table_size}, resolution {cfg.base_resolution}..{cfg.finest_resolution}, {args.points} points "
          f"(reference on {min(args.ref_points, args.points)}), forward + backward to the table")
    results = []
    cpu_repeats = args.repeats or 3
    gpu_repeats = args.repeats or 20

    def report(r, floor_bw=None):
        line = (f"{r['kernel']:16s} {r['backend']:6s} {r['device']:6s} {r.get('table_dtype', ''):8s} "
                f"{fmt_rate(r['rate'])} {r['unit']:9s} ({r['seconds'] * 1e3:9.2f} ms per batch")
        if "forward_s" in r:
            line += f", forward {r['forward_s'] * 1e3:.2f} ms"
        if "samples" in r:
            line += (f", march {r['march_s'] * 1e3:.2f} + composite {r['composite_s'] * 1e3:.2f} ms, {r['samples']} "
                     f"samples, {r['samples_per_ray']:.1f}/ray")
        line += ")"
        if floor_bw and "bytes" in r:
            r["floor_s"] = r["bytes"] / floor_bw
            line += f" | bandwidth floor {r['floor_s'] * 1e3:.3f} ms, at {100 * r['floor_s'] / r['seconds']:.1f}%"
        if "version" in r:
            line = f"{r['version']:>10s}  " + line
        print(line, flush=True)
        results.append(r)

    bw = None
    if has_cuda and ("cuda" in backends or "tcnn" in backends):
        bw = copy_bandwidth(gpu)
        print(f"# GPU copy bandwidth {bw / 1e9:.0f} GB/s (device-to-device, read + write)")

    # encoding
    enc = {}
    for b in backends:
        if b == "torch":
            enc[b] = bench_encoding("torch", cpu, cfg, min(args.ref_points, args.points), cpu_repeats)
            report(enc[b])
        elif b == "cpu":
            enc[b] = bench_encoding("cpu", cpu, cfg, args.points, cpu_repeats)
            report(enc[b])
        elif b == "cuda" and has_cuda:
            report(bench_encoding("cuda", gpu, cfg, args.points, gpu_repeats), bw)
            report(bench_encoding("cuda", gpu, cfg, args.points, gpu_repeats, torch.float16), bw)
            report(bench_encoding("torch", gpu, cfg, args.points, 3), bw)
        elif b == "tcnn" and has_cuda:
            r = bench_tcnn_encoding(cfg, args.points, gpu_repeats)
            if r is None:
                print("# tcnn: tinycudann is not installed; no tiny-cuda-nn comparison")
            else:
                report(r, bw)

    # march + composite
    print(f"# render: occupancy grid {args.grid_res}^3 over [-1, 1]^3 (ellipsoid head), step {args.step:.5f}, "
          f"{args.rays} rays from a pinhole camera (reference on {min(args.ref_rays, args.rays)}), early stop 1e-4")
    scene_cpu = make_scene(args.rays, args.grid_res, cpu)
    ren = {}
    for b in backends:
        if b == "torch":
            n = min(args.ref_rays, scene_cpu[1].shape[0])
            # a centred block of rays, representative of the full image's hit rate
            idx = torch.randperm(scene_cpu[1].shape[0], generator=torch.Generator().manual_seed(0))[:n]
            ren[b] = bench_render("torch", scene_cpu[0], scene_cpu[1][idx], scene_cpu[2][idx], args.step, cpu_repeats,
                                  1e-4)
            report(ren[b])
        elif b == "cpu":
            ren[b] = bench_render("cpu", *scene_cpu, args.step, cpu_repeats, 1e-4)
            report(ren[b])
        elif b == "cuda" and has_cuda:
            scene_gpu = make_scene(args.rays, args.grid_res, gpu)
            report(bench_render("cuda", *scene_gpu, args.step, gpu_repeats, 1e-4), bw)

    # point warp
    print(f"# warp: {args.warp_points} points through the lower-face (71 control points, two-sided, stretched) and "
          f"eyelid (32, two-sided) warps, reference on {min(args.ref_points, args.warp_points)}")
    war = {}
    for b in backends:
        if b in ("torch", "cpu"):
            war[b] = bench_warp(b, cpu, args.warp_points if b == "cpu" else min(args.ref_points, args.warp_points),
                                cpu_repeats)
            report(war[b])
        elif b == "cuda" and has_cuda:
            report(bench_warp("cuda", gpu, args.warp_points, gpu_repeats))

    # fused MLPs (CPU inference only)
    print(f"# mlp: the head's density and colour MLPs over {args.warp_points} rows each (torch: its own layers)")
    mlps = {}
    for b in backends:
        if b in ("torch", "cpu"):
            mlps[b] = bench_mlp(b, args.warp_points, cpu_repeats)
            report(mlps[b])

    if args.baseline:
        before_after(args, backends, cfg, scene_cpu, gpu, cpu_repeats, gpu_repeats, report, results, bw)

    print("# speed-ups of the C++ CPU backend over the torch reference "
          f"(CPU threads {threads}, per point / per ray):")
    for name, table in (("encoding", enc), ("march+composite", ren), ("warp", war), ("mlp", mlps)):
        if "cpu" in table and "torch" in table:
            ratio = table["cpu"]["rate"] / table["torch"]["rate"]
            # The warp and the MLPs had no target: they were written later.
            target = "  (target >= 5x)" if name not in ("warp", "mlp") else ""
            print(f"#   {name:16s} cpu/torch = {ratio:6.1f}x{target}")
            results.append({"kernel": name, "ratio_cpu_over_torch": ratio, "threads": threads})
    meta = {"torch": torch.__version__, "threads": threads, "gpu": torch.cuda.get_device_name() if has_cuda else None,
            "copy_bandwidth": bw, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


def before_after(args, backends, cfg, scene_cpu, gpu, cpu_repeats, gpu_repeats, report, results, bw) -> None:
    """The compiled backends with the kernels of commit args.baseline, then with ours, twice in turn; best of each."""
    kinds = [k for k in ("cpu", "cuda") if k in backends]
    if "cuda" in kinds and gpu is None:
        print("# no CUDA device: the GPU before/after cannot be measured here (run scripts/gpu_check.sh on one)")
        kinds.remove("cuda")
    for kind in kinds:
        device = torch.device("cpu") if kind == "cpu" else gpu
        repeats = cpu_repeats if kind == "cpu" else gpu_repeats
        scene = scene_cpu if kind == "cpu" else make_scene(args.rays, args.grid_res, gpu)
        base = load_baseline(args.baseline, kind, args.baseline_cflags.split() if args.baseline_cflags else None)
        print(f"# before/after ({kind}): kernels of {args.baseline} vs ours, alternating, best of 2 rounds each")
        best: dict[tuple[str, str], dict] = {}
        for _ in range(2):
            for version, ctx in ((args.baseline, kernels(kind, base)), ("ours", contextlib.nullcontext())):
                with ctx:
                    for r in (bench_encoding(kind, device, cfg, args.points, repeats),
                              bench_render(kind, *scene, args.step, repeats, 1e-4)):
                        key = (version, r["kernel"])
                        if key not in best or r["seconds"] < best[key]["seconds"]:
                            best[key] = r
        for (version, _), r in best.items():
            r["version"] = version
            report(r, bw if kind == "cuda" else None)
        for kernel, field in (("encoding", "forward_s"), ("encoding", "seconds"), ("march+composite", "march_s"),
                              ("march+composite", "seconds")):
            before, after = best[(args.baseline, kernel)][field], best[("ours", kernel)][field]
            label = {"forward_s": "forward", "march_s": "march", "seconds": "total"}[field]
            print(f"#   {kind} {kernel:16s} {label:8s} {before * 1e3:9.2f} -> {after * 1e3:9.2f} ms  "
                  f"({before / after:.2f}x)")
            results.append({"kernel": kernel, "part": label, "backend": kind, "baseline": args.baseline,
                            "before_s": before, "after_s": after, "speedup": before / after})


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed: no plot")
        return
    rows = [r for r in results if "rate" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kernel in zip(axes, ("encoding", "march+composite")):
        sel = [r for r in rows if r["kernel"] == kernel]
        labels = [f"{r['backend']}\n{r['device']}" + (f"\n{r['table_dtype']}" if r.get("table_dtype") else "")
                  for r in sel]
        ax.bar(range(len(sel)), [r["rate"] for r in sel], color="tab:blue")
        floors = [(i, r["seconds"] / r["floor_s"] * r["rate"]) for i, r in enumerate(sel) if r.get("floor_s")]
        if floors:
            ax.scatter(*zip(*floors), color="tab:red", marker="_", s=400, label="bandwidth floor")
            ax.legend()
        ax.set_xticks(range(len(sel)), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(sel[0]["unit"] if sel else "")
        ax.set_title(kernel)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"# plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs the preprocessing steps in order: caches each, resumes, validates what the previous steps wrote.

A step is skipped when the manifest records it as finished with the same version and settings and its outputs are
on disk. `--force STEP` redoes that step and every step after it that depends on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import resource
import time
from pathlib import Path

from nerf_talk import lockfile
from nerf_talk.errors import UserError
from nerf_talk.media import check_output_dir
from preprocess import parallel
from preprocess.config import PreprocessConfig
from preprocess.dataset import FORMAT_VERSION, KIND, Dataset
from preprocess.ingest import check_source
from preprocess.step import Step

log = logging.getLogger("nerf_talk.preprocess")
LOCK = ".preprocess.lock"  # in the dataset folder while a run writes it (hidden: not "content" to open_or_create)

# In running order. Each module exposes STEP.
STEP_MODULES = (
    "ingest",
    "landmarks",
    "pose",
    "face_motion",
    "parsing",
    "background",
    "torso",
    "audio_features",
    "split",
    "report",
)


def load_steps() -> list[Step]:
    steps = []
    for mod in STEP_MODULES:
        step = importlib.import_module(f"preprocess.{mod}").STEP
        if step.name != mod:
            raise RuntimeError(f"preprocess.{mod}.STEP is named {step.name!r}")
        steps.append(step)
    return steps


def _settings_key(step: Step, cfg: PreprocessConfig) -> dict:
    """The settings that change this step's outputs (a change of one invalidates its cache)."""
    return {k: getattr(cfg, k) for k in step.uses}


def _outputs_present(ds: Dataset, step: Step) -> list[str]:
    return [o for o in step.outputs if not ds.path(o.rstrip("/")).exists()]


def source_fingerprint(path: Path) -> str:
    """Hash of the file's size and its first and last MiB: cheap for 4K clips, still catches a different file."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()[:16]


def open_or_create(out: Path, video: Path, cfg: PreprocessConfig) -> tuple[Dataset, dict]:
    """Open the dataset at `out` for `video`, creating it; refuse a directory that holds anything else."""
    ds = Dataset(out)
    fp = source_fingerprint(video)
    if ds.exists():
        m = ds.load_manifest()
        if m.get("steps"):
            if m["source"]["fingerprint"] != fp:
                raise UserError(
                    f"{out} already holds a dataset of another video ({m['source']['path']})",
                    "choose a new output directory; nerf_talk never overwrites a dataset.",
                )
            return ds, m
        # Not one step finished (its video failed in ingest, or the run was stopped there): nothing to keep.
        if m["source"]["fingerprint"] != fp or m.get("fps") != cfg.fps or m.get("size") != cfg.size:
            log.info("%s holds only an unfinished start of a dataset (%s): starting it again for %s", out,
                     m["source"]["path"], video)
    elif out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise UserError(
            f"{out} exists and is not empty (and holds no nerf_talk dataset)",
            "choose a new or empty output directory; nothing was written.",
        )
    out.mkdir(parents=True, exist_ok=True)
    m = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "source": {"path": str(video.resolve()), "fingerprint": fp},
        "fps": cfg.fps,
        "size": cfg.size,
        "steps": {},
    }
    ds.save_manifest(m)
    return ds, m


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished, waited-for children.

    Steps that spread frames over a helper process (preprocess.parallel) are charged the time it reports, so that the
    figure stays comparable with a single-process run (wall time alone hides how much work was done).
    """
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime + parallel.reported_cpu_seconds()


def run(video: str | Path, out: str | Path, cfg: PreprocessConfig) -> Dataset:
    """Preprocess `video` into the dataset directory `out`; returns the finished Dataset."""
    video, out = Path(video), Path(out)
    if not video.exists():
        raise UserError(f"video not found: {video}", "check the path.")
    if cfg.audio is not None and not Path(cfg.audio).exists():
        raise UserError(f"audio file not found: {cfg.audio}", "check the --audio path.")
    steps = load_steps()
    names = [s.name for s in steps]
    unknown = [f for f in cfg.force if f not in names]
    if unknown:
        raise UserError(f"--force names unknown steps {unknown}", f"steps are: {', '.join(names)}")
    cfg.validate()
    check_source(video, cfg)  # before the folder is touched: a bad video leaves nothing to block the retry
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with lockfile.hold(out / LOCK, f"the dataset folder {out}"):
        ds, m = open_or_create(out, video, cfg)
        if m.get("fps") != cfg.fps or m.get("size") != cfg.size:
            raise UserError(
                f"{out} was made at {m.get('fps')} fps, {m.get('size')} px; asked for {cfg.fps} fps, {cfg.size} px",
                "use the same --fps/--size, or a new output directory.",
            )
        # One helper process for the whole run: it starts (imports mediapipe) while ingest works.
        with parallel.session():
            _run_steps(ds, steps, cfg, set(cfg.force))
    return ds


def _plan(ds: Dataset, steps: list[Step], cfg: PreprocessConfig, redo: set[str]) -> set[str]:
    """Names of the steps that will run: not cached (other version or settings, outputs missing, forced), or after a
    step they require that runs."""
    m = ds.load_manifest()
    run: set[str] = set()
    for step in steps:
        rec = m["steps"].get(step.name)
        cached = rec and rec.get("version") == step.version and rec.get("settings") == _settings_key(step, cfg) \
            and not any(r in run for r in step.requires) and step.name not in redo and not _outputs_present(ds, step)
        if cached:
            log.info("[%s] cached (%.1fs when it ran)", step.name, rec.get("seconds", 0.0))
        else:
            run.add(step.name)
    return run


def _run_steps(ds: Dataset, steps: list[Step], cfg: PreprocessConfig, redo: set[str]) -> None:
    to_run = _plan(ds, steps, cfg, redo)
    done = {s.name for s in steps if s.name not in to_run}
    prefetched: set[str] = set()
    for k, step in enumerate(steps):
        if step.name not in to_run:
            continue
        m = ds.load_manifest()
        missing = [r for r in step.requires if r not in m["steps"]]
        if missing:
            raise RuntimeError(f"step {step.name} needs {missing}, which have not run")
        ahead = [s.run.__module__ for s in steps[k:] if s.parallel and s.name in to_run]
        if ahead:
            parallel.prestart(ahead)  # before the clock starts: its imports overlap this step, charged where used
        log.info("[%s] %s", step.name, step.describe)
        t0, c0, h0 = time.perf_counter(), cpu_seconds(), parallel.helper_cpu_seconds()
        result = step.run(ds, cfg)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        absent = _outputs_present(ds, step)
        if absent:
            raise RuntimeError(f"step {step.name} finished without writing {absent}")
        m = ds.load_manifest()
        m["steps"][step.name] = {
            "version": step.version,
            "settings": _settings_key(step, cfg),
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
            "helper_cpu_seconds": round(parallel.helper_cpu_seconds() - h0, 3),
            "result": json.loads(json.dumps(result, default=float)),
        }
        ds.save_manifest(m)
        log.info("[%s] done in %.1fs (%.1fs of CPU)", step.name, seconds, cpu)
        done.add(step.name)
        # Work of later steps whose inputs are now all there can start in the helper while the next steps run here;
        # not while a step that spreads its own frames over the helper comes first (it would wait for that work).
        for j, later in enumerate(steps[k + 1 :], k + 1):
            between = [s for s in steps[k + 1 : j] if s.name in to_run]
            if later.prefetch and later.name in to_run and later.name not in prefetched \
                    and all(r in done for r in later.requires) and not any(s.parallel for s in between):
                prefetched.add(later.name)
                later.prefetch(ds, cfg)

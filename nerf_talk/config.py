"""Settings: the one loader (`load`, `from_dict`, `read_toml`, `apply_override`) and the training configuration.

Every settings dataclass (TrainConfig here, motion.config.MotionRecipe, preprocess.config.PreprocessConfig,
motion.stream.StreamConfig, serve.ServeConfig) is built by `load(cls, toml, data, overrides)` or `from_dict(cls, d)`:
type-checked, unknown keys refused with the known ones named.

The training configuration: A recipe (recipes/*.toml) sets any subset of the fields below; everything
it leaves out keeps the default written here. Overrides come last, e.g. ``["stages.0.steps=200", "data.scale=0.25"]``
(values are parsed as TOML: numbers, booleans, quoted or bare strings, arrays). The resolved config is saved as JSON
beside every checkpoint and in the avatar, so a run can always be reproduced from what it wrote.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from nerf_talk.errors import UserError

STAGE_KINDS = ("head", "mouth", "torso")


@dataclass
class DataConfig:
    """How frames are read and sampled."""

    scale: float = 1.0  # resize the dataset's frames by this factor on load (intrinsics follow)
    cache_mb: int = 4096  # decoded frames kept in RAM (uint8, LRU); beyond it frames are re-read from disk
    frames_per_step: int = 4  # rays of one step come from this many random training frames
    rays_per_step: int = 2048  # rays per step (head and torso stages)
    head_ray_fraction: float = 0.6  # share of the rays drawn from head pixels, the rest uniform over the image
    mouth_ray_fraction: float = 0.15  # share of the rays drawn from mouth pixels (lips, interior, teeth), out of the
    # head share: the mouth is ~2% of a frame, too few rays for its motion-dependent shape to be learnt otherwise
    eye_ray_fraction: float = 0.1  # share of the rays drawn around the eyes (out of the head share): the eyes are
    # ~0.3% of a frame and closed in ~5% of frames, so with head rays alone the eye code never learns to close them
    torso_jaw_ray_fraction: float = 0.2  # torso stage: share of the rays drawn where the torso layer runs on under
    # the jaw (data.under_jaw_pixels, a few pixels high): uniform rays alone left its colour there the suit's, a line
    edge_frame_share: float = 0.25  # share of each step's frames drawn from the frames at the edge of the person's
    # range (eyes closed, or the widest mouth openings: data.edge_frames). Blinks are ~5% of a clip's frames and the
    # widest openings rarer still; drawn uniformly, the closed-lid colour and the open mouth's interior got too few
    # rays and a rendered blink read as a half-open eye (docs/BENCHMARKS.md). 0: uniform
    motion_components: int = 24  # size of the per-person PCA basis of the lower-face motion
    max_train_frames: int = 0  # 0: all training frames of split.json; n: the first n (quick experiments)
    max_val_frames: int = 4  # validation frames rendered for PSNR and previews


@dataclass
class HeadConfig:
    """The head's radiance field: a 3D hash grid in the head frame; motion and eye codes enter the colour branch."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_table_size: int = 17
    base_resolution: int = 16
    finest_resolution: int = 1024
    geo_features: int = 15  # features passed from the density branch to the colour branch
    hidden: int = 64  # width of the small MLPs
    motion_code: int = 32  # motion coefficients are embedded to this width, then gated per point by region attention
    latent_dim: int = 8  # per-frame code for what motion does not explain (0 disables it)
    latent_dropout: float = 0.5  # share of training rays rendered without their latent (as unseen frames are)
    box_padding: float = 0.35  # the head box is the template's box grown by this fraction of its size on each side
    neck_extension: float = 0.6  # and extended downwards (+y) by this fraction of its height, for the chin/neck
    density_bias: float = 2.0  # added before the exp: the box starts as a light fog (~7/m), which carves faster
    # than an empty box grows a surface (the gradient w.r.t. log-density scales with the density)


@dataclass
class TorsoConfig:
    """The torso: a 2D hash grid over the image plane with a deformation conditioned on head pose."""

    n_levels: int = 12
    n_features_per_level: int = 2
    log2_table_size: int = 15
    base_resolution: int = 8
    finest_resolution: int = 512
    hidden: int = 64
    pose_code: int = 16  # the head pose (rotation + translation) is embedded to this width
    max_offset: float = 0.1  # deformation bound, in units of the image side


@dataclass
class RenderConfig:
    """Ray marching against the occupancy grid."""

    grid_resolution: int = 64  # occupancy grid cells per side
    step_size: float = 0.004  # metres between samples along a ray
    max_samples: int = 256  # per ray
    early_stop_eps: float = 1e-4
    grid_update_every: int = 16  # steps between occupancy-grid updates
    grid_warmup_steps: int = 256  # every cell is re-sampled during the first grid updates
    grid_threshold: float = 0.01  # a cell is occupied when one step through it would be more opaque than this
    chunk: int = 8192  # rays per forward pass when rendering whole images


@dataclass
class LossConfig:
    """Loss weights. Pixel weights multiply the photometric loss by parsing label."""

    mouth_weight: float = 4.0  # lips, mouth interior, teeth
    eyes_weight: float = 2.0
    opacity: float = 0.05  # head opacity against the parsing mask (head labels 1, the rest 0)
    sparsity: float = 0.01  # mean opacity of one step at random points of the head box: clears unseen fog
    latent_l2: float = 1e-3  # pulls per-frame latents towards 0 (the code used for unseen frames)
    latent_decorrelation: float = 0.1  # penalises latents that correlate with the motion coefficients
    ssim: float = 0.2  # mouth refinement stage
    gradient: float = 0.1  # mouth refinement stage: L1 between image gradients
    torso_alpha: float = 0.1  # torso stage: torso alpha against the torso RGBA's alpha
    torso_under_jaw: float = 0.1  # torso stage: the torso layer's own colour against the frame's under the jaw, where
    # the head covers it in training but its lower edge turns part-transparent on other motions; untaught, the band
    # kept the suit's colour and renders of reagan showed a blue line along the jaw. 0.1 removes it at -0.1 dB
    # whole-frame PSNR; 1.0 cost 0.8 dB (docs/BENCHMARKS.md, fourth session)


@dataclass
class StageConfig:
    """One training stage. kind: "head" (rays over the head), "mouth" (patches around the mouth; SSIM and gradient
    terms), "torso" (the torso field under a frozen head)."""

    name: str = "head"
    kind: str = "head"
    steps: int = 1000
    lr: float = 1e-2  # hash tables and the per-frame latents (Adam)
    mlp_lr_factor: float = 1.0  # MLPs learn at lr * this
    lr_final_factor: float = 0.1  # exponential decay to lr * this at the stage's end
    warmup_steps: int = 0  # linear warm-up
    patch_size: int = 32  # mouth stage: side of the square patch (pixels)
    patches_per_step: int = 2  # mouth stage
    head_rays: int = 0  # mouth stage: head rays drawn as the head stage draws them, beside the patches. 0: patches only


@dataclass
class TrainConfig:
    """Everything `nerf-talk train` needs besides the dataset and the output directory."""

    seed: int = 0
    device: str = "auto"  # "auto" (cuda when present), "cuda", "cpu"
    backend: str = "auto"  # cuda_ext backend: auto | cuda | cpu | torch
    init_from: str = ""  # an avatar directory to start from ("out": the output directory itself, e.g. torso.toml)
    checkpoint_every: int = 500
    log_every: int = 10
    val_every: int = 500  # 0: only at the end
    stop_at_step: int = 0  # >0: save a checkpoint and stop after this global step, as Ctrl-C would
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    torso: TorsoConfig = field(default_factory=TorsoConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [
        StageConfig("head", "head", 20000, 1e-2),
        StageConfig("mouth", "mouth", 2000, 2e-3),
        StageConfig("torso", "torso", 10000, 1e-2),
    ])

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """(stage index, stage, step within the stage) of global step `step` (0-based)."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.steps:
                return i, s, step - start
            start += s.steps
        raise ValueError(f"step {step} is past the last stage (total {self.total_steps})")

    def validate(self) -> None:
        if not self.stages:
            raise UserError("the recipe has no [[stages]]", "add at least one stage (kind = head | mouth | torso).")
        for s in self.stages:
            if s.kind not in STAGE_KINDS:
                raise UserError(f"stage {s.name!r} has kind {s.kind!r}", f"use one of {STAGE_KINDS}.")
            if s.steps < 0:
                raise UserError(f"stage {s.name!r} has steps = {s.steps}", "steps must be >= 0.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be auto, cpu or cuda, is {self.device!r}")
        if not 0 < self.data.scale <= 1:
            raise UserError(f"data.scale must be in (0, 1], is {self.data.scale}")
        if self.checkpoint_every <= 0:
            raise UserError(f"checkpoint_every must be > 0, is {self.checkpoint_every}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the one loader: dataclasses from dicts, TOML files and KEY=VALUE overrides ----------------------------------
def from_dict(cls, data: dict, where: str = ""):
    """An instance of dataclass `cls` from a (nested) dict, every value type-checked; an unknown key is an error
    naming the known ones. Used for every settings class: TrainConfig, MotionRecipe, PreprocessConfig,
    StreamConfig, ServeConfig."""
    if not isinstance(data, dict):
        raise UserError(f"{where.rstrip('.') or 'the config'} must be a table, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(where + k for k in unknown)}",
                        f"known in {where or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _convert(hints[k], v, where + k)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a missing required setting, or the class's own check
        raise UserError(f"{where.rstrip('.') or cls.__name__}: {e}") from None


def _convert(tp, v, where: str):
    if dataclasses.is_dataclass(tp):
        return v if isinstance(v, tp) else from_dict(tp, v, where + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, v, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            raise UserError(f"{where} must be a list, got {v!r}")
        return [_convert(item, x, f"{where}.{i}") for i, x in enumerate(v)]
    if tp is Path:
        if not isinstance(v, (str, Path)):
            raise UserError(f"{where} must be a path, got {v!r}")
        return Path(v)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if tp in (int, float, str, bool) and not (isinstance(v, tp) and (tp is bool or not isinstance(v, bool))):
        raise UserError(f"{where} must be {tp.__name__}, got {v!r}")
    return v


def read_toml(path: str | Path, hint: str = "pass a file from recipes/, e.g. recipes/head.toml") -> dict:
    """The table of a TOML file; a missing or malformed file is a UserError (with `hint` for the missing one)."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"recipe {p} does not exist", hint) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {p} is not valid TOML: {e}") from e


def defaults(cls) -> dict:
    """The defaults of dataclass `cls` as a nested dict (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def load(cls, toml: str | Path | None = None, data: dict | None = None, overrides: list[str] | None = None,
         hint: str = "pass a file from recipes/, e.g. recipes/head.toml"):
    """An instance of dataclass `cls`: its defaults, updated by the TOML file `toml`, then by the dict `data`, then
    by `overrides` (["section.key=value", ...]); validated (cls.validate() where it has one).

        load(PreprocessConfig, data={"fps": 30})      load(ServeConfig, "serve.toml", overrides=["port=9000"])
    """
    d = defaults(cls)
    if toml is not None:
        merge(d, read_toml(toml, hint))
    if data is not None:
        merge(d, data)
    for item in overrides or []:
        apply_override(d, item)
    cfg = from_dict(cls, d)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def apply_override(d: dict, item: str) -> None:
    """Sets `a.b.c=value` in the nested dict `d` (list items by index: `stages.1.steps=10`)."""
    if "=" not in item:
        raise UserError(f"override {item!r} is not KEY=VALUE", "write e.g. stages.0.steps=500 or data.scale=0.5")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node = d
    for p in parts[:-1]:
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise UserError(f"override {item!r}: no list item {p}")
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    last = parts[-1]
    value = _parse_value(text.strip())
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"override {item!r}: no list item {last}")
        node[int(last)] = value
    else:
        node[last] = value


def load_config(recipe_path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The defaults, updated by the recipe's TOML, updated by `overrides`; validated."""
    return load(TrainConfig, recipe_path, overrides=overrides)


def merge(base: dict, upd: dict) -> None:
    """Recursive update; lists (stages) are replaced as a whole, their items filled from StageConfig's defaults."""
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v


def config_from_json(text: str) -> TrainConfig:
    return from_dict(TrainConfig, json.loads(text))


def config_to_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)

"""Settings of generic audio-to-motion training: documented dataclasses, loaded from a TOML recipe.

`recipes/audio2motion.toml` sets any subset of these fields; overrides like ``["train.steps=500",
"data.holdout=['lieu']"]`` come last. The TOML parsing, override syntax and type checking are nerf_talk.config's
`load` (as for every settings class), so both trainers read recipes the same way. The resolved config is written as JSON beside the
trained model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from nerf_talk.config import load
from nerf_talk.errors import UserError
from nerf_talk.motion.model import ModelConfig


@dataclass
class MotionDataConfig:
    """What the corpus contributes and how windows are drawn from it."""

    window: int = 100  # frames per training window (4 s at 25 fps)
    batch_size: int = 32  # windows per step on each process
    workers: int = 2  # DataLoader worker processes per training process (0: load in the main process)
    holdout: list[str] = field(default_factory=list)  # dataset names (folder names) left out of training
    real_share: float = 0.5  # share of drawn windows from real speech (the rest: synthetic, for other languages)
    speaker_cap_minutes: float = 2.0  # a real speaker's draw share grows with their minutes up to this, then stays
    use_val_frames: bool = True  # also train on each dataset's split.json "val" frames (the renderer's hold-out)
    synthetic_dir: str = ""  # folder of synthetic shards (*.npz); "" = CORPUS_DIR/synthetic when it exists
    coarticulation_frames: float = 1.2  # std (frames) of the Gaussian blur of synthetic viseme targets
    # Synthetic targets moved this many frames earlier than the phoneme timings: real lips lead their sound. On GRID
    # (drift-corrected), the shipped model trained on exact timings lags the real lips by 0.85 frame (34 ms).
    synthetic_lead_frames: float = 0.0


@dataclass
class MotionTrainConfig:
    """Optimisation."""

    steps: int = 3000
    lr: float = 2e-3
    lr_final_factor: float = 0.05  # cosine decay to lr * this
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    velocity_weight: float = 0.5  # MSE of frame-to-frame motion differences: keeps the motion crisp
    blink_weight: float = 0.05  # BCE of the blink logits (real clips only)
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 50
    threads: int = 0  # torch CPU threads per process (0: torch's default)
    checkpoint_every: int = 100  # steps between OUT/checkpoint.pt writes (a rerun resumes from it; 0: none)


@dataclass
class MotionRecipe:
    """Everything `nerf-talk train-motion` needs besides the corpus and the output directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    train: MotionTrainConfig = field(default_factory=MotionTrainConfig)

    def validate(self) -> None:
        if self.data.window < 2 * (self.model.lookahead + 1):
            raise UserError(f"data.window must be > 2 * (lookahead + 1), is {self.data.window}")
        if self.data.batch_size < 1 or self.train.steps < 0:
            raise UserError(f"batch_size must be >= 1 and steps >= 0, are {self.data.batch_size}, {self.train.steps}")
        if self.train.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"train.device must be auto, cpu or cuda, is {self.train.device!r}")
        if not 0.0 <= self.data.real_share <= 1.0 or self.data.speaker_cap_minutes <= 0:
            raise UserError(f"data.real_share must be in [0, 1] and data.speaker_cap_minutes > 0, are "
                            f"{self.data.real_share}, {self.data.speaker_cap_minutes}")
        if self.model.n_coeffs < 1:
            raise UserError(f"model.n_coeffs must be >= 1, is {self.model.n_coeffs}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe(recipe: str | Path | None = None, overrides: list[str] | None = None) -> MotionRecipe:
    """The defaults, updated by the recipe's TOML, updated by `overrides`; validated."""
    return load(MotionRecipe, recipe, overrides=overrides, hint="pass recipes/audio2motion.toml or your own copy")

"""Step: the train/validation split. The last `val_fraction` of frames is held out, as the field reports it."""

from __future__ import annotations

import numpy as np

from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset
from preprocess.step import Step


def split_indices(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) frame indices: val is the last round(n * val_fraction) frames (at least one of each)."""
    if n < 2:
        raise ValueError(f"need at least 2 frames to split, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), is {val_fraction}")
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    return np.arange(n - n_val), np.arange(n - n_val, n)


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    train, val = split_indices(ds.n_frames, cfg.val_fraction)
    ds.write_json("split.json", {"train": train.tolist(), "val": val.tolist()})
    return {"n_train": len(train), "n_val": len(val), "val_starts_at": int(val[0])}


STEP = Step(
    name="split",
    version=1,
    requires=("ingest",),
    outputs=("split.json",),
    run=run,
    describe="hold out the last frames for validation",
    uses=("val_fraction",),
)

"""The contract between the pipeline and a preprocessing step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from preprocess.config import PreprocessConfig
from preprocess.dataset import Dataset


@dataclass(frozen=True)
class Step:
    """One preprocessing step.

    `run(ds, cfg)` reads what `requires` wrote, writes `outputs` (paths relative to the dataset root; a name ending in
    "/" is a directory of per-frame files) atomically, and returns a JSON-able dict of its figures (quality numbers,
    settings it chose) that the pipeline stores in manifest["steps"][name]["result"]. A step raises UserError on bad
    input. fps and size are fixed per dataset and need not be listed in `uses`. Bump `version` when the step's output changes meaning: cached results of other versions are redone.
    """

    name: str
    version: int
    requires: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[Dataset, PreprocessConfig], dict]
    describe: str = ""
    uses: tuple[str, ...] = ()  # PreprocessConfig fields the outputs depend on; a change of one redoes the step
    parallel: bool = False  # spreads its frames over preprocess.parallel's helper process (started ahead of it)
    # Called by the pipeline as soon as every step in `requires` is done, when this step will run but other steps come
    # first: it may send work to the helper process (parallel.submit_ahead) that `run` then takes.
    prefetch: Callable[[Dataset, PreprocessConfig], None] | None = None

"""Training recipes (recipes/*.toml) by name, and the choice of recipe by hardware: the one place both the CLI and
the Python API take them from."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nerf_talk.errors import UserError

log = logging.getLogger("nerf_talk")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def resolve_recipe(name: str | os.PathLike | None) -> Path:
    """A recipe path, or a bare name from recipes/ ("head", "smoke_cpu"); None: the hardware's default training
    recipe (the first of hardware_phases())."""
    if name is None:
        return hardware_phases()[0][1]
    p = Path(name)
    if p.suffix != ".toml" and not p.exists():
        p = RECIPES / f"{name}.toml"
    if not p.exists():
        known = ", ".join(sorted(q.stem for q in RECIPES.glob("*.toml")))
        raise UserError(f"recipe not found: {name}", f"give a .toml path or one of: {known}")
    return p


def hardware_phases() -> list[tuple[str, Path]]:
    """The training runs this machine does by default, each (name, recipe): on a GPU the full head recipe then the
    torso recipe (which starts from the head's weights); on a CPU the all-in-one CPU recipe (256 px), with a note."""
    import torch

    if torch.cuda.is_available():
        return [("head", RECIPES / "head.toml"), ("torso", RECIPES / "torso.toml")]
    log.warning("no GPU: using the CPU recipe (recipes/cpu.toml: 256x256, about 15 minutes per minute of 512 px "
                "video on 2 cores). `--recipe smoke_cpu` fits a rough 128 px avatar in a few minutes; a GPU fits "
                "the full one.")
    return [("train", RECIPES / "cpu.toml")]


def fit_phases(recipe: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The training runs of a fit, each into its own directory: one given recipe, or the hardware's."""
    if recipe is not None:
        return [("train", resolve_recipe(recipe))]
    return hardware_phases()

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
    torso recipe (which starts from the head's weights); on a CPU the small all-in-one smoke recipe, with a warning."""
    import torch

    if torch.cuda.is_available():
        return [("head", RECIPES / "head.toml"), ("torso", RECIPES / "torso.toml")]
    log.warning("no GPU: using the small CPU recipe (recipes/smoke_cpu.toml, frames at a quarter size). It takes "
                "minutes per 10 s of video on 2 cores and gives a rough avatar; a full one needs a GPU.")
    return [("train", RECIPES / "smoke_cpu.toml")]


def fit_phases(recipe: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The training runs of a fit, each into its own directory: one given recipe, or the hardware's."""
    if recipe is not None:
        return [("train", resolve_recipe(recipe))]
    return hardware_phases()

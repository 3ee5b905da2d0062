"""Checkpoints: written atomically (a staging directory renamed into place), so a crash or Ctrl-C mid-write leaves
the previous checkpoint intact.

A checkpoint directory holds:
  model.safetensors      every parameter and buffer of the AvatarModel (occupancy grid included)
  optimizer.pt           the optimizer's state_dict (torch.save of tensors and numbers only; loaded with
                         weights_only=True; kept out of the final avatar)
  rng.safetensors        the random states: torch's global CPU state, the sampler's and the grid's generators
  state.json             step (steps completed), the stage the optimizer belongs to, and the resolved config
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nerf_talk.errors import UserError

LAST = "last"


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    rng: dict[str, torch.Tensor], state: dict) -> Path:
    """Writes root/last atomically and returns it."""
    root.mkdir(parents=True, exist_ok=True)
    stage = root / f".{LAST}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        save_file(_state_tensors(model), str(stage / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), stage / "optimizer.pt")
        save_file({k: v.contiguous().cpu() for k, v in rng.items()}, str(stage / "rng.safetensors"))
        (stage / "state.json").write_text(json.dumps(state, indent=2))
    except BaseException:
        # A full disk must not stay full of half a checkpoint: the previous one is still in place.
        shutil.rmtree(stage, ignore_errors=True)
        raise
    final, old = root / LAST, root / f".{LAST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(root: Path) -> Path | None:
    """root/last, or the previous checkpoint if a save was interrupted between its two renames."""
    for name in (LAST, f".{LAST}.old"):
        p = root / name
        if (p / "state.json").exists():
            return p
    return None


def damaged(path: Path, err: BaseException) -> UserError:
    """The error for a checkpoint file that cannot be read: it names the file and the way out."""
    ckpt = path.parent
    old = ckpt.parent / f".{LAST}.old"
    if ckpt.name == LAST and (old / "state.json").exists():
        way = f"delete {ckpt} to go back to the previous checkpoint {old}, then --resume"
    else:
        way = f"start again: delete {ckpt.parent} (or train into a new directory) and run without --resume"
    why = (str(err).splitlines() or [""])[0][:160]
    return UserError(f"the checkpoint file {path} is damaged ({type(err).__name__}: {why})", way)


def load_state(ckpt: Path) -> dict:
    p = ckpt / "state.json"
    try:
        state = json.loads(p.read_text())
        if not (isinstance(state, dict) and isinstance(state.get("step"), int) and "config" in state
                and isinstance(state.get("opt_stage"), int)):
            raise ValueError("not a checkpoint state (step, opt_stage, config)")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise damaged(p, e) from e
    return state


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise damaged(path, e) from e


def load_model_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> None:
    tensors = _load_tensors(path)
    current = model.state_dict()
    for k, v in tensors.items():
        if k in current and current[k].shape != v.shape:
            raise UserError(f"{path}: {k} has shape {list(v.shape)}, the model expects {list(current[k].shape)}",
                            "the checkpoint comes from a different config or dataset.")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise UserError(f"{path} does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})",
                        "the checkpoint comes from a different config or dataset.")


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path) -> bool:
    p = ckpt / "optimizer.pt"
    if not p.exists():
        return False
    try:
        optimizer.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    # A truncated or overwritten file fails in the zip reader (RuntimeError), the unpickler (UnpicklingError, EOFError)
    # or load_state_dict (ValueError, KeyError: another optimizer's state).
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise damaged(p, e) from e
    return True


def load_rng(ckpt: Path) -> dict[str, torch.Tensor]:
    return _load_tensors(ckpt / "rng.safetensors")

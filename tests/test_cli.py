"""The `nerf-talk` command line as a user meets it."""

from __future__ import annotations

import pytest

from nerf_talk.cli import main, resolve_recipe


def test_train_from_the_command_line(tmp_path, capsys):
    from nerf_talk.train.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(tmp_path / "ds", n_frames=16, size=32).root
    out = tmp_path / "avatar"
    argv = ["train", str(ds), "-o", str(out), "--recipe", "smoke_cpu", "--set", "data.scale=1.0"]
    for i, steps in enumerate((8, 2, 4)):
        argv += ["--set", f"stages.{i}.steps={steps}"]
    assert main(argv) == 0
    assert (out / "avatar.safetensors").exists()
    assert f"avatar: {out}" in capsys.readouterr().out
    # A second run into the same directory must not clobber it.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_train_refuses_what_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--recipe", "smoke_cpu"]) == 2
    assert "not a nerf_talk dataset" in capsys.readouterr().err


def test_recipe_names_resolve_and_unknown_ones_are_refused():
    assert resolve_recipe("head").name == "head.toml"
    assert resolve_recipe("recipes/torso.toml").name == "torso.toml"
    from nerf_talk.errors import UserError

    with pytest.raises(UserError, match="smoke_cpu"):
        resolve_recipe("nonexistent")

"""The one settings loader (nerf_talk.config.load / from_dict) on every settings class, from a dict or TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerf_talk.config import TrainConfig, from_dict, load
from nerf_talk.errors import UserError
from nerf_talk.motion.stream import StreamConfig
from nerf_talk.serve import ServeConfig
from preprocess.config import PreprocessConfig


def test_preprocess_config_from_a_dict_and_toml(tmp_path):
    cfg = load(PreprocessConfig, data={"fps": 30, "audio": "speech.wav", "force": ["parsing"]})
    assert cfg.fps == 30.0 and isinstance(cfg.fps, float) and cfg.audio == "speech.wav" and cfg.force == ["parsing"]
    assert cfg.size == PreprocessConfig().size  # the rest keep their defaults
    (tmp_path / "pre.toml").write_text("size = 256\naudio_offset = 0.04\n")
    cfg = load(PreprocessConfig, tmp_path / "pre.toml", overrides=["fps=50"])
    assert (cfg.size, cfg.audio_offset, cfg.fps) == (256, 0.04, 50.0)
    with pytest.raises(UserError, match="unknown setting.*colour"):
        load(PreprocessConfig, data={"colour": 1})
    with pytest.raises(UserError, match="size must be int"):
        from_dict(PreprocessConfig, {"size": "big"})


def test_stream_and_serve_config_from_python(tmp_path):
    s = load(StreamConfig, data={"hop_frames": 2, "lookahead_s": 0})
    assert s == StreamConfig(hop_frames=2, lookahead_s=0.0)
    with pytest.raises(UserError, match="hop_frames must be >= 1"):  # the class's own check, as a UserError
        load(StreamConfig, data={"hop_frames": 0})
    (tmp_path / "serve.toml").write_text('avatar_dir = "avatars"\npreload = ["alice"]\n[stream]\nhop_frames = 2\n')
    cfg = load(ServeConfig, tmp_path / "serve.toml", overrides=["port=9000", "size=128"])
    assert cfg.avatar_dir == Path("avatars") and cfg.preload == ["alice"] and (cfg.port, cfg.size) == (9000, 128)
    assert cfg.stream.hop_frames == 2 and cfg.stream.context_s == StreamConfig().context_s
    with pytest.raises(UserError, match="avatar_dir"):
        load(ServeConfig, data={})


def test_stream_defaults_follow_the_hardware():
    assert StreamConfig.for_hardware(gpu=True) == StreamConfig(hop_frames=1, lookahead_s=0.0)
    assert StreamConfig.for_hardware(gpu=False) == StreamConfig()
    assert StreamConfig.for_hardware(gpu=True, hop_frames=3, lookahead_s=None).hop_frames == 3


def test_train_config_round_trip():
    cfg = load(TrainConfig, "recipes/smoke_cpu.toml", overrides=["stages.0.steps=5"])
    assert from_dict(TrainConfig, cfg.to_dict()) == cfg and cfg.stages[0].steps == 5

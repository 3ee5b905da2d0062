"""Training on a corpus folder: datasets found, hold-out honoured, multi-process loading, torchrun (DDP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nerf_talk import audio_features as af
from nerf_talk.motion import corpus as cp
from nerf_talk.motion import visemes as vz
from nerf_talk.motion.config import load_recipe
from nerf_talk.motion.model import MotionModel
from preprocess import mesh_topology as mt
from preprocess.dataset import FORMAT_VERSION, KIND

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "audio2motion.toml"
QUICK = ["train.steps=3", "data.batch_size=2", "data.window=24", "model.hidden=16", "model.n_coeffs=4",
         "train.log_every=1"]


def fake_dataset(root: Path, name: str, n: int, seed: int) -> Path:
    """A minimal preprocessed dataset: the arrays and manifest entries the motion trainer reads."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    vocab = af.phoneme_vocabulary()
    ppg = rng.random((n, len(vocab))).astype(np.float32) ** 8
    ppg /= ppg.sum(1, keepdims=True)
    K = len(mt.LOWER_FACE)
    arrays = {"audio_ppg": ppg, "audio_mel": rng.standard_normal((n, 80)).astype(np.float32),
              "audio_pitch": np.stack([rng.uniform(90, 200, n), rng.random(n)], 1).astype(np.float32),
              "audio_energy": rng.uniform(-70, -15, n).astype(np.float32),
              "lower_face_motion": (rng.standard_normal((n, K, 3)) * 0.01).astype(np.float32),
              "blink": (rng.random(n) < 0.05).astype(np.float32),
              "mouth_opening": rng.random(n).astype(np.float32) * 0.1}
    for k, v in arrays.items():
        np.save(d / f"{k}.npy", v)
    steps = {"ingest": {"result": {"n_frames": n}},
             "audio_features": {"result": {"phoneme_vocabulary": vocab}},
             "face_motion": {"result": {"lower_face_points": list(mt.LOWER_FACE), "blink_rate_per_min": 15.0}}}
    (d / "manifest.json").write_text(json.dumps({"kind": KIND, "format_version": FORMAT_VERSION, "fps": 25.0,
                                                 "size": 64, "steps": steps}))
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    fake_dataset(root, "alice", 120, 0)
    fake_dataset(root / "more", "bob", 90, 1)  # one level deeper: found too
    fake_dataset(root, "carol", 80, 2)
    syn = root / "synthetic"
    syn.mkdir()
    rng = np.random.default_rng(3)
    vocab = af.phoneme_vocabulary()
    n = 30
    ppg = np.full((n, len(vocab)), 1e-3, np.float32)
    ppg[:, vocab.index(af.BLANK)] = 1.0
    feats = {"ppg": ppg / ppg.sum(1, keepdims=True), "mel": rng.standard_normal((n, 80)),
             "pitch": np.zeros((n, 2)), "energy": np.full(n, -30.0)}
    cp.save_synthetic(syn / "syn_000000.npz", feats, vz.viseme_track([(0.2, 0.5, "a"), (0.5, 0.6, "m")], 25.0, n),
                      {"lang": "test"})
    return root


def test_recipe_loads_and_rejects_unknown_keys():
    cfg = load_recipe(RECIPE, ["train.steps=7"])
    assert cfg.train.steps == 7 and cfg.model.lookahead / 25.0 <= 0.2
    with pytest.raises(Exception, match="unknown"):
        load_recipe(RECIPE, ["train.nonsense=1"])


def test_train_with_holdout_and_workers(corpus, tmp_path):
    from nerf_talk.motion import train_motion

    assert [p.name for p in cp.find_datasets(corpus)] == ["alice", "bob", "carol"]
    path = train_motion(corpus, tmp_path, RECIPE, QUICK + ["data.holdout=['carol']", "data.workers=1"], progress=False)
    m = MotionModel.load(path)
    assert m.meta["trained_on"]["real"] == ["alice", "bob"]
    assert m.meta["trained_on"]["synthetic_utterances"] == 1
    assert m.basis.points == list(mt.LOWER_FACE)
    assert (tmp_path / "recipe.json").exists() and (tmp_path / "logs").is_dir()


def test_torchrun_ddp_two_processes(corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "nerf_talk.motion.train", str(corpus), str(tmp_path), "--recipe", str(RECIPE),
           *QUICK, "data.workers=0", "train.device=cpu"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    m = MotionModel.load(tmp_path / "audio2motion.safetensors")
    assert m.meta["world_size"] == 2

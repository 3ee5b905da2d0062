"""Training on a corpus folder: datasets found, hold-out honoured, multi-process loading, torchrun (DDP, gloo)."""

from __future__ import annotations

import itertools
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


def test_speakers_weighted_and_normalised():
    """Ten files of one speaker weigh like the cap, not like ten speakers; each speaker's amplitude is rescaled to
    the median."""
    from nerf_talk.motion.basis import GenericMotionBasis

    table = {"obama": "obama", "us_pres_obama_*": "obama", "grid_s1_*": "grid_s1"}
    assert cp.speaker_of("grid_s1_07", table) == "grid_s1" and cp.speaker_of("us_pres_obama_b_20s", table) == "obama"
    assert cp.speaker_of("obama", table) == "obama" and cp.speaker_of("interview_02", table) == "interview_02"
    rng = np.random.default_rng(0)
    K = len(mt.LOWER_FACE)

    def src(name, speaker, n, kind="real", amp=0.01):
        feats = {"energy": np.zeros(n)}
        return cp.Source(name, kind, feats, None, motion=rng.standard_normal((n, K, 3)) * amp,
                         mouth_opening=np.zeros(n), speaker=speaker if kind == "real" else "")

    sources = [src(f"grid_{i:02d}", "grid", 1000, amp=0.05) for i in range(10)] + [src("lieu", "lieu", 1000),
                                                                                  src("syn", "", 1000, "synthetic")]
    gains = cp.normalise_speakers([s for s in sources if s.kind == "real"])
    assert gains["grid"] == pytest.approx(0.6, rel=0.05) and gains["lieu"] == pytest.approx(3.0, rel=0.05)  # to the median 0.03
    rms = {s.speaker: float(np.sqrt(np.mean(s.motion ** 2))) for s in sources if s.kind == "real"}
    assert rms["grid"] == pytest.approx(rms["lieu"], rel=0.05)
    basis = GenericMotionBasis(list(mt.LOWER_FACE), np.zeros(K * 3, np.float32), np.eye(4, K * 3, dtype=np.float32),
                               np.ones(4, np.float32))
    data = cp.WindowDataset(sources, basis, np.zeros((vz.N_VISEMES, 4)), window=100)
    w = data.weights(real_share=0.6, speaker_cap_frames=2000)
    share = {}
    for (si, _), wi in zip(data.index, w):
        share[data.sources[si].speaker or "synthetic"] = share.get(data.sources[si].speaker or "synthetic", 0) + wi
    assert share["synthetic"] == pytest.approx(0.4)
    assert share["grid"] == pytest.approx(0.4) and share["lieu"] == pytest.approx(0.2)  # 2000 (capped) : 1000 frames
    draws = np.bincount(list(itertools.islice(iter(cp.WeightedStream(w, 0)), 20000)), minlength=len(w))
    assert np.corrcoef(draws, w)[0, 1] > 0.9


def test_synthetic_targets_lead_their_phonemes():
    """data.synthetic_lead_frames moves the synthetic mouth earlier than the phoneme timings, closures included."""
    n, C = 40, 3
    motion = np.zeros((vz.N_VISEMES, C))
    motion[vz.V["open"]] = [1.0, 0.5, -0.2]
    visemes = np.zeros((n, vz.N_VISEMES))
    visemes[:, vz.V["sil"]] = 1.0
    visemes[15:25] = 0.0
    visemes[15:25, vz.V["open"]] = 1.0
    visemes[25:28] = 0.0
    visemes[25:28, vz.V["bilabial"]] = 1.0
    exact = cp.synthetic_targets(visemes, motion, blur_frames=1.2)
    lead = cp.synthetic_targets(visemes, motion, blur_frames=1.2, lead_frames=1.0)
    assert lead.shape == exact.shape and lead.dtype == np.float32
    np.testing.assert_allclose(lead[:-1], exact[1:], atol=1e-6)  # one frame earlier
    np.testing.assert_allclose(lead[-1], exact[-1], atol=1e-6)  # the end is held
    half = cp.synthetic_targets(visemes, motion, blur_frames=1.2, lead_frames=0.5)
    np.testing.assert_allclose(half[:-1], (exact[:-1] + exact[1:]) / 2, atol=1e-6)
    assert np.allclose(lead[24:27], motion[vz.V["bilabial"]])  # the closure comes a frame early too


def test_unreadable_datasets_skipped_then_refused(corpus, tmp_path, caplog):
    """A dataset whose preprocessing failed (no face: no motion written) is skipped with a line; nothing usable left
    is a clear error."""
    import shutil

    from nerf_talk.errors import UserError
    from nerf_talk.motion.train import load_sources

    mixed = tmp_path / "mixed"
    shutil.copytree(corpus, mixed)
    (mixed / "carol" / "lower_face_motion.npy").unlink()
    (mixed / "more" / "bob" / "manifest.json").write_text("{not json")
    cfg = load_recipe(RECIPE)
    with caplog.at_level("INFO", logger="nerf_talk.motion"):
        real, syn = load_sources(mixed, cfg, af.phoneme_vocabulary())
    assert [s.name for s in real] == ["alice"] and len(syn) == 1
    assert "skipping" in caplog.text and "carol" in caplog.text and "lower_face_motion" in caplog.text
    assert "1 usable datasets of 1 speakers; 2 skipped (bob, carol)" in caplog.text
    (mixed / "alice" / "audio_ppg.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no usable preprocessed dataset"):
        load_sources(mixed, cfg, af.phoneme_vocabulary())


def test_training_resumes_after_interruption(corpus, tmp_path, monkeypatch, caplog):
    from nerf_talk.motion import train as tr

    args = (corpus, tmp_path, RECIPE, QUICK + ["train.steps=4", "train.checkpoint_every=2", "data.workers=0"])
    save = tr._save_checkpoint

    def interrupted(*a):
        save(*a)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.train_motion(*args, progress=False)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "audio2motion.safetensors").exists()
    monkeypatch.setattr(tr, "_save_checkpoint", save)
    with pytest.raises(Exception, match="another recipe"):  # never mixed into a run of other settings
        tr.train_motion(corpus, tmp_path, RECIPE, args[3] + ["model.hidden=8"], progress=False)
    with caplog.at_level("INFO", logger="nerf_talk.motion"):
        path = tr.train_motion(*args, progress=False)
    assert "at step 2" in caplog.text
    assert MotionModel.load(path).meta["steps"] == 4 and not (tmp_path / "checkpoint.pt").exists()

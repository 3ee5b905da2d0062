"""Synthetic training speech: features and viseme targets line up, augmentation keeps the signal usable."""

from __future__ import annotations

import numpy as np

from nerf_talk.motion import features as mf
from nerf_talk.motion import synth
from nerf_talk.motion import visemes as vz


def test_utterance_features_and_visemes_align(tmp_path):
    feats, vis, info = synth.make_utterance(11)
    n = len(vis)
    assert all(len(v) == n for v in feats.values())
    np.testing.assert_allclose(vis.sum(1), 1.0, atol=1e-5)
    speaking = vis[:, vz.V["sil"]] < 0.5
    detected = mf.speech_mask(feats)
    # The viseme track comes from the TTS timings, the voice activity from the (noisy, resampled) audio: they agree.
    assert (speaking == detected).mean() > 0.7, info
    from nerf_talk.motion.corpus import load_synthetic, save_synthetic

    save_synthetic(tmp_path / "u.npz", feats, vis, info)
    src = load_synthetic(tmp_path / "u.npz")  # no pickle needed
    np.testing.assert_allclose(src.visemes, vis)
    np.testing.assert_allclose(src.features["ppg"], feats["ppg"])
    (path,) = synth.generate(tmp_path / "gen", 1, first_seed=3)
    assert load_synthetic(path).n_frames > 25


def test_augment_round_trips_the_rate():
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    out, info = synth.augment(tone, 22050, rng)
    assert abs(len(out) - 16000) <= 2 and np.abs(out).max() <= 1.0
    assert "via_rate" in info

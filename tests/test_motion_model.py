"""The generic network: bounded look-ahead, streaming equals offline, the file format round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerf_talk.motion import features as mf
from nerf_talk.motion import visemes as vz
from nerf_talk.motion.basis import GenericMotionBasis
from nerf_talk.motion.model import Audio2Motion, ModelConfig, MotionModel
from nerf_talk.motion.predict import StreamingPredictor, run_network

D = mf.input_dim(12)


def small_model(lookahead=3) -> MotionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, lookahead=lookahead, front_kernel=7, dilations=[1, 2, 4], n_coeffs=4, dropout=0.0,
                      input_dropout=0.0)
    net = Audio2Motion(cfg, D).eval()
    rng = np.random.default_rng(0)
    motions = [rng.standard_normal((50, 6, 3)).astype(np.float32) * 0.01]
    basis = GenericMotionBasis.fit(motions, [13, 14, 0, 17, 61, 291], 4)
    vocab = [f"p{i}" for i in range(12)]
    return MotionModel(net, basis, vocab, np.zeros((vz.N_VISEMES, 4), np.float32), {"test": True})


def test_output_depends_on_at_most_lookahead_future_frames():
    m = small_model(lookahead=3)
    x = torch.randn(1, 60, D)
    base, _ = m.net(x)
    t = 30
    y = x.clone()
    y[:, t + 4:] += 5.0  # beyond the look-ahead: frames <= t must not change
    out, _ = m.net(y)
    assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
    y = x.clone()
    y[:, t + 3] += 5.0  # at the look-ahead: frame t does change
    out, _ = m.net(y)
    assert not torch.allclose(out[:, t], base[:, t], atol=1e-5)
    assert m.net.cfg.lookahead / 25.0 <= 0.2  # the default budget is 200 ms or less
    assert ModelConfig().lookahead / 25.0 <= 0.2


def _features(n, rng):
    ppg = rng.random((n, 12)).astype(np.float32)
    ppg /= ppg.sum(1, keepdims=True)
    return {"ppg": ppg, "mel": rng.standard_normal((n, 80)).astype(np.float32),
            "pitch": np.stack([rng.uniform(80, 200, n), rng.random(n)], 1).astype(np.float32),
            "energy": rng.uniform(-60, -10, n).astype(np.float32)}


def test_streaming_matches_offline():
    m = small_model()
    rng = np.random.default_rng(1)
    feats = _features(90, rng)
    stats = mf.utterance_stats(feats)
    offline, _ = run_network(m, mf.input_features(feats, stats))
    sp = StreamingPredictor(m, stats)
    parts, a = [], 0
    for size in (7, 1, 13, 25, 4, 40):
        parts.append(sp.push({k: v[a:a + size] for k, v in feats.items()}, final=a + size >= 90))
        a += size
    online = np.concatenate(parts)
    assert online.shape == offline.shape
    np.testing.assert_allclose(online, offline, atol=1e-4)


def test_save_load_roundtrip(tmp_path):
    m = small_model()
    m.save(tmp_path / "m.safetensors")
    assert (tmp_path / "m.json").exists()
    m2 = MotionModel.load(tmp_path / "m.safetensors")
    x = torch.randn(1, 20, D)
    a, _ = m.net(x)
    b, _ = m2.net(x)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)  # weights are stored as float16
    assert m2.basis.points == m.basis.points and m2.vocab == m.vocab
    with pytest.raises(Exception, match="missing"):
        MotionModel.load(tmp_path / "nothing.safetensors")


def test_basis_is_orthonormal_with_zero_mean():
    b = small_model().basis
    np.testing.assert_allclose(b.components @ b.components.T, np.eye(4), atol=1e-5)
    assert np.all(b.mean == 0)  # coefficient 0 is the neutral face
    x = np.random.default_rng(2).standard_normal((5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(b.decode(b.encode(b.decode(b.encode(x)))), b.decode(b.encode(x)), atol=1e-5)

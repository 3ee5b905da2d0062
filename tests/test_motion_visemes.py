"""Viseme classes from IPA, viseme tracks from timed phonemes, and the offline mouth-sync figure."""

from __future__ import annotations

import numpy as np

from nerf_talk.motion import metrics as mx
from nerf_talk.motion import visemes as vz


def test_classes_of_common_phonemes():
    for ph in ("p", "b", "m", "pʰ", "p͈", "mː"):
        assert vz.viseme_of(ph) == vz.V["bilabial"], ph
    assert vz.viseme_of("f") == vz.V["labiodental"]
    assert vz.viseme_of("a") == vz.V["open"] and vz.viseme_of("aɪ") == vz.V["open"]
    assert vz.viseme_of("uː") == vz.V["rounded"] and vz.viseme_of("wa") == vz.V["rounded"]
    assert vz.viseme_of("ja") == vz.V["open"]
    assert vz.viseme_of("t͡ʃ") == vz.V["postalveolar"]
    assert vz.viseme_of("iː") == vz.V["close"]
    for non in ("<blank>", "<wb>", "ˈ", "ː", "", "˥"):
        assert vz.viseme_of(non) is None, non


def test_viseme_track_shares():
    track = vz.viseme_track([(0.0, 0.1, "m"), (0.1, 0.3, "a")], 25.0, 10)
    np.testing.assert_allclose(track.sum(1), 1.0, atol=1e-6)
    assert track[0, vz.V["bilabial"]] == 1.0 and track[4, vz.V["open"]] == 1.0
    assert track[9, vz.V["sil"]] == 1.0  # after the last phoneme: silence


def _fake_clip(n, rng):
    """A posteriorgram that alternates open vowels and /m/ at random, and a mouth that follows it."""
    vocab = ["<blank>", "a", "m", "<wb>"]
    ppg = np.zeros((n, 4), np.float32)
    ppg[:, 0] = 1.0
    opening = np.zeros(n)
    t = 5
    while t < n - 5:
        ph = rng.integers(1, 3)
        ppg[t] = 0
        ppg[t, ph] = 1.0
        dur = int(rng.integers(3, 8))
        opening[t:t + dur] = 1.0 if ph == 1 else 0.0
        t += dur
    energy = np.full(n, -20.0, np.float32)
    energy[:5] = energy[-5:] = -80.0  # some silence, which sets the noise floor
    energy[rng.random(n) < 0.1] = -80.0
    feats = {"ppg": ppg, "energy": energy, "pitch": np.tile([[120.0, 1.0]], (n, 1)),
             "mel": np.zeros((n, 80), np.float32)}
    return feats, opening + 0.05 * rng.standard_normal(n), vocab


def test_sync_figure_ranks_true_above_shifted_and_mismatched():
    rng = np.random.default_rng(0)
    f1, o1, vocab = _fake_clip(500, rng)
    f2, o2, _ = _fake_clip(500, rng)
    true = mx.sync_figure(o1, f1, vocab, 25.0)
    assert true > 0.3
    for lag in (-10, -5, 5, 10):
        assert mx.sync_figure(o1, f1, vocab, 25.0, lag=lag) < true
    assert mx.sync_figure(o2, f1, vocab, 25.0) < true
    lags, curve = mx.sync_offset_curve(o1, f1, vocab, 25.0, max_lag=8)
    # The fake recogniser fires at each phone's onset while the mouth holds the shape for 3-7 frames, so the
    # curve peaks a couple of frames late; what matters is a peak near 0, far from the tested shifts.
    assert abs(lags[np.argmax(curve)]) <= 3


def test_mouth_opening_and_errors():
    pts = [0, 13, 14]
    m = np.zeros((4, 3, 3), np.float32)
    m[:, 2, 1] = [0.0, 0.01, 0.02, 0.03]  # lower lip moves down (y is down)
    np.testing.assert_allclose(mx.mouth_opening(m, pts), [0, 0.01, 0.02, 0.03], atol=1e-7)
    assert mx.landmark_error(m, m) == 0.0
    assert abs(mx.correlation(np.arange(5), 2 * np.arange(5) + 1) - 1) < 1e-9

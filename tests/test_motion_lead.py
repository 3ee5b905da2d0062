"""nerf_talk.motion.lead: measuring how late a model's mouth comes against real lips, and baking a lead into its
weights without more look-ahead. A tiny network of the real architecture; seconds on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from nerf_talk.motion import visemes as vz
from nerf_talk.motion.lead import bake_lead, model_lag, offset_from_motion, read_ahead
from nerf_talk.motion.predict import motion_coeffs, run_network
from test_fit_render import tiny_motion_model
from test_motion_train import fake_dataset


def test_read_ahead_interpolates_and_holds_the_ends():
    ramp = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(read_ahead(ramp, 0.5)[:-1, 0], ramp[:-1, 0] + 0.5)
    assert read_ahead(ramp, 0.5)[-1, 0] == 9.0  # nothing after the last frame: held
    np.testing.assert_allclose(read_ahead(ramp, -1.25)[2:, 0], ramp[2:, 0] - 1.25)
    assert read_ahead(ramp, -1.25)[0, 0] == 0.0
    assert read_ahead(ramp, 0.0) is ramp


def _clip(tmp_path, model, n=400):
    """A preprocessed clip of all speech without /p b m/: neither the silence gate nor the bilabial closures (timed by
    the audio) blur a shift of the network's output."""
    d = fake_dataset(tmp_path, "clip", n, 0)
    np.save(d / "audio_energy.npy", np.full(n, -20.0, np.float32))
    ppg = np.load(d / "audio_ppg.npy")
    ppg[:, [vz.viseme_of(p) == vz.V["bilabial"] for p in model.vocab]] = 0.0
    np.save(d / "audio_ppg.npy", ppg / ppg.sum(1, keepdims=True))
    return d


@pytest.mark.parametrize("late", [-2.0, 1.5])
def test_model_lag_finds_how_late_the_model_comes(tmp_path, late):
    from nerf_talk.motion import corpus as cp

    model = tiny_motion_model()
    d = _clip(tmp_path, model)
    coeffs = motion_coeffs(model, {k: np.asarray(v) for k, v in cp.load_real(d, model.vocab).features.items()})[0]
    # The clip's real lips: the model's own motion, `late` frames before the model puts it (late > 0: it is late).
    np.save(d / "lower_face_motion.npy", model.basis.decode(read_ahead(coeffs, late)).astype(np.float32))
    r = model_lag(model, d)
    assert r["lag"] == pytest.approx(late, abs=0.3) and r["corr"] > 0.7, r  # (a half-frame lag blurs the match)
    assert r["margin"] > 0.2


def test_bake_lead_moves_the_output_earlier_without_more_lookahead():
    model = tiny_motion_model()
    rng = np.random.default_rng(0)
    d = model.net.in_dim

    def speechlike(n):  # smooth random inputs: features that change over a few frames
        return gaussian_filter1d(rng.standard_normal((n, d)), 2, axis=0).astype(np.float32) * 3

    inputs = [speechlike(int(rng.integers(75, 300))) for _ in range(10)]  # ten utterances of 3-12 s
    baked, report = bake_lead(model, inputs, 1.0, steps=300, lr=1e-3, batch=8, window=60)
    assert report["error_after"] < 0.3 * report["error_before"], report
    assert baked.meta["lead_baked_frames"] == 1.0 and "lead_baked_frames" not in model.meta
    assert baked.net.cfg == model.net.cfg  # the same look-ahead: the live path waits no longer
    x = speechlike(200)  # speech it did not see
    old, _ = run_network(model, x)
    new, _ = run_network(baked, x)
    target = read_ahead(old, 1.0)
    assert np.mean((new - target) ** 2) < 0.6 * np.mean((old - target) ** 2)


def test_offset_from_motion_trusts_a_clear_peak_only():
    rng = np.random.default_rng(3)
    fps, n = 25.0, 500  # 20 s
    pred = gaussian_filter1d(rng.standard_normal(n), 1.5)
    real = read_ahead(pred, 2.0) + 0.3 * pred.std() * rng.standard_normal(n)  # the sound 2 frames after the lips
    real[100:110] = np.nan  # face not found there
    lag, confidence = offset_from_motion(pred, real, fps)
    assert lag == pytest.approx(2.0, abs=0.3) and confidence >= 1.0
    unrelated = gaussian_filter1d(rng.standard_normal(n), 1.5)
    assert offset_from_motion(pred, unrelated, fps)[1] < 1.0
    # A peak at the edge of the +-6 frame range may lie beyond it: no answer.
    assert offset_from_motion(pred, read_ahead(pred, 8.0), fps)[1] == 0.0

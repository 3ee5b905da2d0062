"""The shipped model on new speech: faster than real time, any rate/channels, closed mouth in silence, clear errors."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.signal import resample_poly

from nerf_talk import media
from nerf_talk.errors import UserError
from nerf_talk.motion import load_default_model, predict_motion
from nerf_talk.motion.predict import DEFAULT_MODEL
from support import shared_file


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def speech():
    return media.read_audio(shared_file("speech/en_radio40_8s.wav"), 16000)  # [S] 16 kHz mono


def test_shipped_model_is_small_and_documented(model):
    size = DEFAULT_MODEL.stat().st_size
    assert size < 8 * 2**20, size  # a few MB
    assert model.meta["trained_on"]["real"] and model.meta["trained_on"]["synthetic_utterances"] > 0
    assert model.net.cfg.lookahead / 25.0 <= 0.2


def test_faster_than_real_time(model, speech):
    predict_motion(model, speech[:32000], 16000, 25.0)  # loads the recogniser
    t = time.perf_counter()
    out = predict_motion(model, speech, 16000, 25.0)
    ratio = (len(speech) / 16000) / (time.perf_counter() - t)
    print(f"real-time ratio {ratio:.1f}")
    assert ratio > 1.0
    n = int(np.ceil(len(speech) / 16000 * 25))
    assert out["lower_face_motion"].shape == (n, len(model.basis.points), 3)
    assert out["blink"].shape == (n,) and np.isfinite(out["lower_face_motion"]).all()
    assert out["mouth_opening"].std() > 0.005  # it talks


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_sample_rates_and_channels(model, speech, rate):
    ref = predict_motion(model, speech, 16000, 25.0)["mouth_opening"]
    g = math.gcd(rate, 16000)
    a = resample_poly(speech, rate // g, 16000 // g).astype(np.float32)  # the same speech recorded at `rate`
    stereo = np.stack([a, 0.5 * a], 1)  # [S, 2]
    out = predict_motion(model, stereo, rate, 25.0)["mouth_opening"]
    n = min(len(out), len(ref))
    assert abs(len(out) - len(ref)) <= 1
    corr = np.corrcoef(out[:n], ref[:n])[0, 1]
    assert corr > (0.6 if rate == 8000 else 0.85), corr  # 8 kHz loses everything above 4 kHz
    planar = predict_motion(model, stereo.T.copy(), rate, 25.0)["mouth_opening"]  # [2, S]
    np.testing.assert_allclose(planar, out, atol=1e-5)


def test_other_fps(model, speech):
    out = predict_motion(model, speech, 16000, 30.0)
    assert len(out["blink"]) == int(np.ceil(len(speech) / 16000 * 30))


def test_mouth_closed_in_silence(model, speech):
    rng = np.random.default_rng(0)
    silent = np.zeros(16000 * 3, np.float32)
    hiss = (rng.standard_normal(16000 * 3) * 1e-3).astype(np.float32)  # -60 dBFS room tone
    for a in (silent, hiss):
        out = predict_motion(model, a, 16000, 25.0)
        assert np.abs(out["lower_face_motion"]).max() < 1e-3
    # Speech, then two seconds of silence: the mouth closes after the speech ends.
    mixed = np.concatenate([speech[:16000 * 3], np.zeros(16000 * 2, np.float32)])
    out = predict_motion(model, mixed, 16000, 25.0)
    assert np.abs(out["lower_face_motion"][-30:]).max() < 1e-3
    assert np.abs(out["mouth_opening"][:75]).max() > 0.01


def test_bad_audio_is_a_clear_error(model):
    with pytest.raises(UserError, match="empty"):
        predict_motion(model, np.zeros(0, np.float32), 16000, 25.0)
    with pytest.raises(UserError, match="minimum"):
        predict_motion(model, np.zeros(800, np.float32), 16000, 25.0)
    with pytest.raises(UserError, match="sample rate"):
        predict_motion(model, np.zeros(16000, np.float32), 1000, 25.0)
    with pytest.raises(UserError, match="NaN"):
        predict_motion(model, np.full(16000, np.nan, np.float32), 16000, 25.0)


def test_bilabials_close_the_lips(model):
    """Known phoneme timings (espeak-ng): the lips are closer on /p b m/ than on the open vowels around them."""
    from nerf_talk.motion import synth
    from nerf_talk.motion import visemes as vz

    audio, sr, phonemes = synth.espeak_timed("Bob, mom, papa. Bob bought a map at the bay.", "en-us", 150, 50)
    out = predict_motion(model, audio, sr, 25.0)
    o = out["mouth_opening"]
    track = vz.viseme_track(phonemes, 25.0, len(o))
    bil = track[:, vz.V["bilabial"]] >= 0.5
    vowel = (track[:, vz.V["open"]] + track[:, vz.V["mid"]]) >= 0.5
    assert bil.sum() >= 5 and vowel.sum() >= 5
    assert o[bil].mean() < 0.6 * o[vowel].mean(), (o[bil].mean(), o[vowel].mean())


def test_close_bilabials_follows_the_bilabial_posterior(model):
    """Frames the recogniser hears as /p b m/ take the closed-lip motion; other speech and silence keep theirs."""
    from nerf_talk.motion import visemes as vz
    from nerf_talk.motion.predict import close_bilabials

    vocab = list(model.vocab)
    col = {vz.viseme_of(t): i for i, t in enumerate(vocab) if vz.viseme_of(t) is not None}
    ppg = np.zeros((12, len(vocab)), np.float32)
    ppg[:, col[vz.V["open"]]] = 1.0
    ppg[5:8] = 0.0
    ppg[5:8, col[vz.V["bilabial"]]] = 1.0  # three frames of /m/ amid an open vowel
    speech = np.ones(12, bool)
    speech[-2:] = False
    coeffs = np.full((12, model.net.cfg.n_coeffs), 0.3, np.float32)
    out = close_bilabials(model, coeffs, {"ppg": ppg}, speech)
    closed = model.viseme_motion[vz.V["bilabial"]]
    np.testing.assert_allclose(out[6], closed, atol=1e-6)  # all posterior mass on /m/ (spread keeps it there)
    np.testing.assert_allclose(out[:3], coeffs[:3])  # the vowel, two frames away
    np.testing.assert_allclose(out[-2:], coeffs[-2:])  # no speech: untouched (the silence gate handles it)
    assert 0 < np.abs(out[4] - coeffs[4]).max() < np.abs(closed - coeffs[4]).max()  # the edge: part way

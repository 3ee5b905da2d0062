"""Per-frame audio features: shapes, alignment, the meaning of each feature, errors, and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from nerf_talk import audio_features as af
from nerf_talk import media
from nerf_talk.errors import UserError
from support import shared_file

SR = af.SAMPLE_RATE


def tone(seconds: float, hz: float = 200.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


@pytest.fixture(scope="module")
def synthetic():
    """2 s of a 200 Hz tone, 1 s of white noise, 1 s of digital silence."""
    return np.concatenate([tone(2.0), noise(1.0), silence(1.0)])


@pytest.fixture(scope="module")
def feats25(synthetic):
    return af.compute_features(synthetic, 25)


def rows(feats):
    return {k: v.shape[0] for k, v in feats.items()}


@pytest.mark.parametrize("fps", [24, 25, 30, 60, 30000 / 1001])
def test_one_row_per_frame_at_any_fps(synthetic, fps):
    f = af.compute_features(synthetic, fps)
    n = math.ceil(4.0 * fps - 1e-6)
    assert rows(f) == {"ppg": n, "mel": n, "pitch": n, "energy": n}
    assert f["ppg"].shape[1] == len(af.phoneme_vocabulary()) == af.feature_dims()["ppg"]
    assert f["mel"].shape[1] == 80 and f["pitch"].shape[1] == 2 and f["energy"].ndim == 1
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in f.values())
    assert np.allclose(f["ppg"].sum(axis=1), 1.0, atol=1e-4)
    # Explicit n_frames pads or trims.
    for want in (n - 7, n + 13):
        assert set(rows(af.compute_features(synthetic, fps, want)).values()) == {want}


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_shapes_after_resampling_from_other_rates(tmp_path, rate):
    seconds = 1.37
    t = np.arange(int(seconds * rate)) / rate
    path = tmp_path / f"x{rate}.wav"
    media.write_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate=rate)
    audio = media.read_audio(path)
    assert abs(len(audio) / SR - seconds) < 0.01
    for fps in (24, 25, 30, 60):
        f = af.compute_features(audio, fps)
        assert set(rows(f).values()) == {math.ceil(len(audio) / SR * fps - 1e-6)}
    # The resampled tone keeps its pitch.
    assert np.median(af.compute_features(audio, 25)["pitch"][3:-3, 0]) == pytest.approx(220, abs=3)


def test_tone_noise_silence_mean_what_they_should(feats25):
    pitch, energy = feats25["pitch"], feats25["energy"]
    tone_rows, noise_rows, silent_rows = slice(2, 48), slice(52, 73), slice(77, 100)
    assert np.all(np.abs(pitch[tone_rows, 0] - 200.0) < 2.0), pitch[tone_rows, 0]
    assert np.all(pitch[tone_rows, 1] > 0.9)
    assert np.all(pitch[noise_rows, 1] < 0.3)
    assert np.all(pitch[silent_rows, 1] == 0.0) and np.all(pitch[silent_rows, 0] == 0.0)
    # A 0.5 sine is -9 dBFS, noise of RMS 0.1 is -20 dB; digital silence sits at the floor.
    assert np.allclose(energy[tone_rows], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.2)
    assert np.allclose(energy[noise_rows], -20.0, atol=1.0)
    assert np.all(energy[silent_rows] == af.ENERGY_FLOOR_DB)
    mel = feats25["mel"]
    assert np.allclose(mel[silent_rows], np.log(af.LOG_FLOOR))  # digital silence: the log floor in every band
    assert mel[tone_rows].max(axis=1).min() > np.log(af.LOG_FLOOR) + 20
    # The tone's energy is in the mel band around 200 Hz.
    fb = af.mel_filterbank()
    band_200 = int(np.argmax(fb[:, int(round(200 / (SR / af.N_FFT)))]))
    assert abs(int(np.argmax(mel[25])) - band_200) <= 1


def test_alignment_of_a_burst_to_the_frames():
    """A tone from 1.00 s to 1.40 s fills exactly frames 25-34 at 25 fps; its neighbours stay silent."""
    audio = np.concatenate([silence(1.0), tone(0.4), silence(1.0)])
    f = af.compute_features(audio, 25)
    loud = f["energy"] > -40
    assert np.flatnonzero(loud).tolist() == list(range(25, 35))
    # Log-mel (25 ms windows, averaged per frame) spills at most into the neighbouring frame.
    mel_loud = f["mel"].max(axis=1) > f["mel"][:20].max() + 10
    assert set(range(25, 35)) <= set(np.flatnonzero(mel_loud)) <= set(range(24, 36))
    # At 60 fps: 1.00 s is frame 60, 1.40 s ends frame 83.
    f60 = af.compute_features(audio, 60)
    assert np.flatnonzero(f60["energy"] > -40).tolist() == list(range(60, 84))


def test_frame_average_weights_by_overlap():
    # A ramp sampled every 10 ms averaged over 40 ms frames: the mean of 4 analysis frames, edges half-weighted.
    v = np.arange(100, dtype=np.float64)
    out = af.frame_average(v, 0.01, 25, 20)
    # Frame k spans [0.04k, 0.04k + 0.04): analysis frames 4k+1..4k+3 whole, 4k and 4k+4 half -> 4k + 2.
    assert np.allclose(out[1:], 4 * np.arange(1, 20) + 2)
    # Frame 0 starts where the analysis starts (the first span reaches back to -5 ms): 0.5*0 + 1 + 2 + 3 + 0.5*4.
    assert out[0] == pytest.approx(2.0)
    # Frames shorter than an analysis frame (fps 100 on a 50 fps signal) still get the right value.
    ppg_like = np.repeat(np.eye(2), 5, axis=0)  # 5 frames of class 0 then 5 of class 1, 20 ms each
    out = af.frame_average(ppg_like, 0.02, 100, 18)
    assert out.shape == (18, 2) and np.allclose(out.sum(1), 1)
    assert out[:8, 0].min() > 0.99 and out[10:, 1].min() > 0.99


def test_padding_is_silence_and_trimming_keeps_the_first_rows(synthetic):
    full = af.compute_features(synthetic, 25)
    short = af.compute_features(synthetic, 25, 60)
    for k in ("mel", "pitch", "energy"):
        assert np.allclose(short[k], full[k][:60], atol=1e-4), k
    speech = af.compute_features(tone(1.0), 25, 50)
    assert np.all(speech["energy"][26:] == af.ENERGY_FLOOR_DB)
    assert np.all(speech["pitch"][26:, 1] == 0.0)


@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), silence(0.19), tone(0.1)])
def test_empty_or_short_audio_is_refused(audio):
    with pytest.raises(UserError, match="audio"):
        af.compute_features(audio, 25)


def test_minimum_length_is_accepted_and_bad_samples_refused():
    assert af.compute_features(tone(0.2), 25)["ppg"].shape[0] == 5
    bad = tone(1.0)
    bad[100] = np.nan
    with pytest.raises(UserError, match="NaN"):
        af.compute_features(bad, 25)
    with pytest.raises(ValueError, match="mono"):
        af.compute_features(np.zeros((16000, 2), np.float32), 25)


@pytest.fixture(scope="module")
def speech():
    return media.read_audio(shared_file("speech/en_female_18s.wav"))


def test_posteriorgram_of_real_speech(speech):
    # One second of digital silence after the speech: its frames must read as "no phoneme".
    audio = np.concatenate([speech, silence(1.0)])
    t0 = time.perf_counter()
    f = af.compute_features(audio, 25)
    seconds = time.perf_counter() - t0
    ratio = seconds / (len(audio) / SR)
    print(f"\ncompute_features: {seconds:.2f} s for {len(audio) / SR:.1f} s of audio = {ratio:.3f} s per s of audio")
    assert ratio < 1.0, "slower than real time"
    vocab = af.phoneme_vocabulary()
    silent = set(af.silence_columns())
    assert {vocab[i] for i in silent} == {af.BLANK, af.WORD_BOUNDARY}
    arg = f["ppg"].argmax(axis=1)
    speech_rows = arg[: int(17.5 * 25)]
    phones = {vocab[i] for i in speech_rows if i not in silent}
    assert len(phones) >= 15, phones  # a real sentence uses many phonemes
    assert len(np.unique(speech_rows)) > 15
    tail = arg[-22:]  # the padded second, minus the edge frames
    assert all(i in silent for i in tail), [vocab[i] for i in tail]
    assert f["ppg"][-22:][:, sorted(silent)].sum(axis=1).min() > 0.9
    # Voice activity: most of a read address is speech; the padded silence is not.
    active = af.voice_activity(f)
    assert active[: 17 * 25].mean() > 0.6 and not active[-22:].any()
    # The speaker's pitch lies in a female range.
    voiced = f["pitch"][:, 1] > 0.5
    assert 150 < np.median(f["pitch"][voiced, 0]) < 280


def test_speech_without_pauses_is_speech(speech):
    """A loud, compressed recording with no pause (broadcast speech) has no quiet frame to take the noise floor from;
    its speech must still read as speech, while the same speech with its pauses keeps its silent frames."""
    hop = media.AUDIO_RATE // 25
    clip = speech[: 8 * media.AUDIO_RATE]
    level = af.compute_features(clip, 25)["energy"]
    loud = np.repeat(level > np.percentile(level, 45), hop)[: len(clip)]  # the pauses cut out
    joined = clip[: len(loud)][loud]
    envelope = np.sqrt(np.convolve(joined ** 2, np.ones(800) / 800, "same")) + 1e-4
    broadcast = (0.1 * joined / envelope).astype(np.float32)  # an automatic gain control: every 50 ms as loud
    f = af.compute_features(broadcast, 25)
    e = f["energy"]
    assert np.percentile(e, 95) - np.percentile(e, 10) < 15.0  # 15 dB over the 10th percentile: no frame at all
    assert af.voice_activity(f).mean() > 0.6
    with_pauses = af.voice_activity(af.compute_features(clip, 25))
    assert 0.3 < with_pauses.mean() < 0.9  # the original's pauses are still silence


def test_steady_noise_is_not_speech():
    """Steady noise has a level distribution as narrow as compressed speech, but no phonemes: it stays silence."""
    rng = np.random.default_rng(0)
    t = np.arange(4 * SR) / SR
    hum = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 8)) + 0.1 * rng.standard_normal(len(t))
    for x in (rng.standard_normal(len(t)), hum):
        for level_db in (-40.0, -15.0):
            audio = (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)).astype(np.float32)
            f = af.compute_features(audio, 25)
            assert not af.voice_activity(f).any()


def test_chunked_posteriorgram_matches_one_pass(speech, monkeypatch):
    """Long audio runs in chunks with context; chunk seams must not change what is recognised."""
    whole = af.phoneme_posteriors(speech)
    assert whole.shape[0] == len(speech) // af.PPG_FRAME_SAMPLES + 1
    monkeypatch.setattr(af, "PPG_CHUNK_S", 5.0)
    chunked = af.phoneme_posteriors(speech)
    assert chunked.shape == whole.shape
    assert (chunked.argmax(1) == whole.argmax(1)).mean() > 0.97
    assert np.abs(chunked - whole).mean() < 0.02

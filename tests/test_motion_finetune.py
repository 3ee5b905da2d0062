"""The per-person fine-tune (nerf_talk.motion.finetune): it improves a person whose lips follow their speech in a way
the generic network does not know, and falls back to the generic model when the person's clip cannot teach it
anything. A tiny network of the real architecture and real espeak-ng speech; seconds on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from nerf_talk import audio_features as af
from nerf_talk.motion import metrics as mx
from nerf_talk.motion.finetune import FinetuneConfig, finetune
from nerf_talk.motion.model import MODEL_FPS
from test_fit_render import speech, tiny_motion_model

# A tiny random network starts far from any person (tail error ~800 in basis units), so the pull toward it is weak
# and the rate high here; the defaults are for the shipped network.
QUICK = FinetuneConfig(max_steps=300, eval_every=20, patience=6, lr=1e-2, anchor=1e-3)


@pytest.fixture(scope="module")
def person():
    """Features of 20 s of speech and a person whose mouth opens with the audio's expected openness, 80 ms late."""
    model = tiny_motion_model()
    text = ("Bob bought a big map of Paris. Open wide and say ah, then close your mouth. "
            "My mother makes apple pie on Sundays, and we all eat too much of it. ") * 2
    feats = af.compute_features(speech(text, pad_s=0.3), MODEL_FPS)
    drive = gaussian_filter1d(mx.audio_openness(feats, model.vocab), 1.5)
    drive = np.concatenate([np.zeros(2), drive[:-2]])  # lips trail the sound by two frames
    coeffs = np.zeros((len(drive), model.basis.components.shape[0]), np.float32)
    coeffs[:, 0] = drive * 4 * model.basis.scale[0]
    coeffs[:, 1] = -drive * 2 * model.basis.scale[1]
    return model, feats, model.basis.decode(coeffs)


def test_finetune_improves_a_person_it_was_fitted_on(person):
    model, feats, motion = person
    assert len(motion) >= QUICK.min_frames
    tuned, report = finetune(model, feats, motion, model.basis.points, QUICK)
    assert report["used"] and tuned is not model, report
    corr = report["tail_opening_corr"]
    assert corr["finetuned"] > corr["generic"], corr  # (the tiny generic net scores 0.3-0.6 by run order)
    err = report["tail_coeff_error"]
    assert err[1] < 0.5 * err[0], err
    assert tuned.meta["finetuned"]["steps"] == report["steps"] and "finetuned" not in model.meta


def test_finetune_falls_back_when_it_does_not_help(person):
    model, feats, motion = person
    good, _ = finetune(model, feats, motion, model.basis.points, QUICK)  # a network that already knows this person
    # Their clip's first part is noise unrelated to the speech: nothing there to learn, the tail says so.
    rng = np.random.default_rng(1)
    split = int(round(len(motion) * (1 - QUICK.tail_fraction)))
    noisy = motion.copy()
    noisy[:split] = rng.permutation(motion[:split]) + rng.standard_normal(motion[:split].shape) * motion.std()
    kept, report = finetune(good, feats, noisy, model.basis.points, QUICK)
    assert not report["used"] and kept is good, report
    assert "did not beat the generic one" in report["reason"]
    short, report = finetune(model, {k: v[:100] for k, v in feats.items()}, motion[:100], model.basis.points, QUICK)
    assert short is model and "too short" in report["reason"]

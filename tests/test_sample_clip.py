"""The embedded sample clip and the espeak-ng speech behind it: the clip is well formed, its ground truth is what it
says, and an independent landmark detector (mediapipe on the encoded frames) recovers the motion from the pixels."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from nerf_talk import media, speech
from preprocess import mesh_topology as mt

SECONDS, FPS = 7.0, 25


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from nerf_talk.sample_clip import make_sample_clip

    out = tmp_path_factory.mktemp("sample")
    t0 = time.perf_counter()
    c = make_sample_clip(out, seconds=SECONDS, fps=FPS, seed=3)
    took = time.perf_counter() - t0
    with np.load(c.truth) as z:
        truth = {k: z[k] for k in z.files}
    return c, truth, took


@pytest.fixture(scope="module")
def tracked(clip):
    """mediapipe FaceMesh (tracking mode, as preprocessing runs it) on every decoded frame: [N, 478, 2] pixels."""
    import mediapipe as mp

    c, truth, _ = clip
    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as fm:
        for _, img in media.iter_frames(c.video, FPS):
            res = fm.process(img)
            assert res.multi_face_landmarks, "no face found in a sample clip frame"
            h, w = img.shape[:2]
            out.append([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark])
    return np.array(out)


def test_clip_format_and_audio(clip):
    c, truth, took = clip
    n = len(truth["mouth_open"])
    assert n == round(SECONDS * FPS)
    info = media.probe_video(c.video)
    assert (info.width, info.height) == (512, 512) and info.has_audio and info.codec == "h264"
    assert abs(info.avg_fps - FPS) < 1e-3
    assert sum(1 for _ in media.iter_frames(c.video, FPS)) == n
    audio = media.read_audio(c.video, 16000)
    assert abs(len(audio) / 16000 - SECONDS) < 0.15
    assert np.abs(audio).max() > 0.1  # speech, not silence
    for key, shape in [("blink", (n,)), ("pose2d", (n, 4)), ("landmarks", (n, 478, 2)), ("mouth_target", (n,))]:
        assert truth[key].shape == shape, key
    assert float(truth["fps"]) == FPS
    assert len(truth["phoneme_label"]) == len(truth["phoneme_start"]) == len(truth["phoneme_end"]) > 10
    assert took < 30, f"making a {SECONDS} s clip took {took:.1f} s"


def test_clip_is_reused(clip):
    from nerf_talk.sample_clip import make_sample_clip

    c, _, _ = clip
    before = os.stat(c.video).st_mtime_ns
    t0 = time.perf_counter()
    again = make_sample_clip(c.video.parent, seconds=SECONDS, fps=FPS, seed=3)
    assert again == c and os.stat(c.video).st_mtime_ns == before and time.perf_counter() - t0 < 1.0


def test_truth_mouth_follows_the_phonemes(clip):
    _, truth, _ = clip
    mouth = truth["mouth_open"]
    t = np.arange(len(mouth)) / FPS
    starts, ends, labels = truth["phoneme_start"], truth["phoneme_end"], truth["phoneme_label"]
    # Pauses: frames more than 0.15 s from any phoneme (leading silence and the gaps between sentences).
    dist = np.min(np.maximum(np.maximum(starts[None] - t[:, None], t[:, None] - ends[None]), 0), axis=1)
    pause = dist > 0.15
    assert pause.sum() >= 10, "the clip should hold pauses between sentences"
    assert mouth[pause].max() < 0.5, f"mouth open by {mouth[pause].max():.2f} px in a pause"
    # Open vowels held for at least two frames: the mouth is wide open there.
    opens = [(s, e) for s, e, p in zip(starts, ends, labels) if speech.mouth_target(p) == 1.0 and e - s >= 0.08]
    assert opens, "no open vowel in the sample sentences"
    peak = [mouth[int((s + e) / 2 * FPS)] for s, e in opens]
    assert np.median(peak) > 0.5 * mouth.max() and mouth.max() > 8.0


def test_detector_recovers_mouth_blink_and_roll(clip, tracked):
    _, truth, _ = clip
    lm = tracked
    gap = np.linalg.norm(lm[:, mt.LOWER_LIP_INNER] - lm[:, mt.UPPER_LIP_INNER], axis=1)
    r = np.corrcoef(gap, truth["mouth_open"])[0, 1]
    assert r > 0.8, f"mediapipe's inner-lip gap correlates {r:.3f} with the ground truth"

    lids = [p for pair in (mt.LEFT_EYE_LIDS, mt.RIGHT_EYE_LIDS) for p in pair]
    eye_gap = np.mean([np.linalg.norm(lm[:, a] - lm[:, b], axis=1) for a, b in lids], axis=0)
    closed, open_ = truth["blink"] > 0.8, truth["blink"] < 0.01
    assert closed.sum() >= 2, "the clip should hold at least one blink"
    assert eye_gap[closed].mean() < 0.6 * np.median(eye_gap[open_]), (eye_gap[closed], np.median(eye_gap[open_]))

    def eye_roll(points):
        d = points[:, mt.LEFT_EYE_CORNERS[1]] - points[:, mt.RIGHT_EYE_CORNERS[0]]
        return np.degrees(np.arctan2(d[:, 1], d[:, 0]))

    roll = truth["pose2d"][:, 2]
    photo = eye_roll(truth["landmarks"][:1])[0] - roll[0]  # the still photo's own eye-line angle
    err = np.abs(eye_roll(lm) - photo - roll)
    assert np.ptp(roll) > 3.0, "the head should sway"
    # The detector's eye corners slide while the lids close (the drawn corners do not move), so the tight bound holds
    # on open-eye frames; blinks get a looser one.
    eyes_open = truth["blink"] < 0.3
    assert err[eyes_open].max() < 1.5, f"roll error up to {err[eyes_open].max():.2f} deg"
    assert err.max() < 2.5, f"roll error up to {err.max():.2f} deg during a blink"


@pytest.mark.parametrize("voice,text", [("en-us", "The quick brown fox jumps over the lazy dog."),
                                        ("de", "Guten Morgen, wie geht es dir heute?")])
def test_synthesize_gives_ordered_phonemes_covering_the_audio(voice, text):
    audio, rate, phonemes = speech.synthesize(text, voice=voice)
    assert audio.dtype == np.float32 and audio.ndim == 1 and rate > 8000
    duration = len(audio) / rate
    assert len(phonemes) > 15 and all(isinstance(p, str) and p for _, _, p in phonemes)
    starts = np.array([s for s, _, _ in phonemes])
    ends = np.array([e for _, e, _ in phonemes])
    assert np.all(ends > starts) and np.all(np.diff(starts) > 0) and np.all(starts[1:] >= ends[:-1] - 1e-9)
    assert ends[-1] <= duration + 1e-6
    loud = np.nonzero(np.abs(audio) > 0.02)[0] / rate
    assert starts[0] <= loud[0] + 0.02 and ends[-1] >= loud[-1] - 0.3
    # Sound happens inside phonemes: almost every loud sample lies in some phoneme's span.
    inside = np.any((loud[:, None] >= starts[None] - 0.01) & (loud[:, None] <= ends[None] + 0.01), axis=1)
    assert inside.mean() > 0.95


def test_mouth_targets():
    assert speech.mouth_target("ˈɑː") == 1.0 and speech.mouth_target("æ") == 1.0
    assert speech.mouth_target("m") == 0.0 and speech.mouth_target("b") == 0.0
    assert 0.4 < speech.mouth_target("ə") < 0.8
    assert 0 < speech.mouth_target("s") < speech.mouth_target("ə")
    assert speech.mouth_target("") == 0.0


def test_unknown_voice_is_a_user_error():
    from nerf_talk.errors import UserError

    with pytest.raises(UserError, match="no voice"):
        speech.synthesize("hello", voice="xx-nonexistent")


def test_same_seed_same_clip(clip, tmp_path):
    """A second clip with the same parameters, made from scratch elsewhere, has identical ground truth and frames."""
    from nerf_talk.sample_clip import make_sample_clip

    c, truth, _ = clip
    again = make_sample_clip(tmp_path, seconds=SECONDS, fps=FPS, seed=3)
    with np.load(again.truth) as z:
        for key in ("mouth_open", "blink", "pose2d", "landmarks", "phoneme_start", "phoneme_label"):
            np.testing.assert_array_equal(z[key], truth[key], err_msg=key)
    for (_, a), (_, b) in zip(media.iter_frames(c.video, FPS), media.iter_frames(again.video, FPS)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2

"""Audio/lip offset on the shared clips, whose offsets are known (MANIFEST.md), and the audio_features step.

The mouth opening is measured here directly with mediapipe FaceMesh (inner-lip gap 13-14 over face height 10-152),
independently of the preprocessing steps, so these tests check av_sync alone. Nothing is cached on disk.
"""

from __future__ import annotations

import json
import time
import wave

import numpy as np
import pytest

from nerf_talk import audio_features as af
from nerf_talk import media
from nerf_talk.av_sync import SyncEstimate, measure_offset, measure_sync
from support import shared_file

FPS = 25.0
# name: (video, audio source, known offset in seconds; positive = the audio comes after the mouth)
KNOWN = {
    "obama": ("video/obama_450_20s.mp4", "video/obama_450_20s.mp4", 0.200),
    "lieu": ("video/lieu_256_60s.mp4", "video/lieu_256_60s.mp4", 0.080),
    "reagan": ("video/reagan_256_26s_silent.mp4", "video/reagan_256_26s.wav", 0.0),
}
_mouth_cache: dict[str, np.ndarray] = {}


def mouth_opening(video) -> np.ndarray:
    """[N] inner-lip gap over face height at 25 fps (NaN where no face is found); kept in memory per session."""
    key = str(video)
    if key not in _mouth_cache:
        mp = pytest.importorskip("mediapipe")
        mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)
        out = []
        try:
            for _, img in media.iter_frames(video, FPS):
                found = mesh.process(img).multi_face_landmarks
                if not found:
                    out.append(np.nan)
                    continue
                lm = found[0].landmark
                h, w = img.shape[:2]
                p = {i: np.array([lm[i].x * w, lm[i].y * h]) for i in (10, 13, 14, 152)}
                out.append(np.linalg.norm(p[13] - p[14]) / np.linalg.norm(p[10] - p[152]))
        finally:
            mesh.close()
        _mouth_cache[key] = np.array(out, np.float32)
    return _mouth_cache[key]


def clip(name: str) -> tuple[np.ndarray, np.ndarray]:
    video, audio, _ = KNOWN[name]
    return mouth_opening(shared_file(video)), media.read_audio(shared_file(audio))


def offset_of(mouth: np.ndarray, audio: np.ndarray) -> tuple[float, float]:
    return measure_offset(mouth, af.compute_features(audio, FPS, len(mouth), include=("mel",)), FPS)


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_offsets_are_recovered_within_a_frame(name):
    mouth, audio = clip(name)
    assert np.isfinite(mouth).mean() > 0.95
    t0 = time.perf_counter()
    offset, confidence = offset_of(mouth, audio)
    print(f"\n{name}: offset {offset * 1000:+.1f} ms (known {KNOWN[name][2] * 1000:+.0f}), "
          f"confidence {confidence:.2f}, {time.perf_counter() - t0:.2f} s")
    assert abs(offset - KNOWN[name][2]) <= 1.0 / FPS
    assert confidence > 0.8


@pytest.mark.parametrize("name", ["obama", "reagan"])
def test_delaying_the_audio_adds_to_the_offset(name):
    mouth, audio = clip(name)
    before, _ = offset_of(mouth, audio)
    delayed = np.concatenate([np.zeros(int(0.120 * af.SAMPLE_RATE), np.float32), audio])
    after, confidence = offset_of(mouth, delayed)
    print(f"\n{name}: {before * 1000:+.1f} ms -> {after * 1000:+.1f} ms after delaying the audio 120 ms")
    assert after - before == pytest.approx(0.120, abs=0.02)
    assert confidence > 0.8


def test_unrelated_audio_or_motion_gives_low_confidence():
    mouth_obama, _ = clip("obama")
    _, audio_lieu = clip("lieu")
    _, confidence = offset_of(mouth_obama, audio_lieu)
    assert confidence < 0.4
    noise = np.random.default_rng(0).standard_normal(len(mouth_obama)).astype(np.float32)
    assert offset_of(noise, clip("obama")[1])[1] < 0.4
    # No motion at all, or a clip too short to judge: no answer rather than a guess.
    assert offset_of(np.full(len(mouth_obama), 0.1, np.float32), clip("obama")[1]) == (0.0, 0.0)
    assert offset_of(mouth_obama[:50], clip("obama")[1][: 2 * af.SAMPLE_RATE]) == (0.0, 0.0)


# -------------------------------------------------------------------------------------------------- drift
def drifting(audio: np.ndarray, up: int = 124, down: int = 125) -> np.ndarray:
    """The soundtrack played 0.8 % fast (as GRID's joined files are): each second of pictures holds 0.992 s of
    sound, so the offset falls by 8 ms per second, 0.48 s over lieu's minute."""
    from scipy.signal import resample_poly

    return resample_poly(audio, up, down).astype(np.float32)


def sync_of(mouth: np.ndarray, audio: np.ndarray) -> SyncEstimate:
    return measure_sync(mouth, af.compute_features(audio, FPS, len(mouth), include=("mel",)), FPS)


def test_a_steady_drift_is_measured_and_a_steady_clip_has_none():
    mouth, audio = clip("lieu")
    steady = sync_of(mouth, audio)
    assert steady.drift == 0.0 and abs(steady.offset_s - KNOWN["lieu"][2]) <= 1.0 / FPS
    assert len(steady.windows) >= 4  # a minute is long enough to look
    found = sync_of(mouth, drifting(audio))
    # mouth at t sounds at (t + 0.08) * 124 / 125 = t + 0.079 - 0.008 t in the drifting track
    print(f"\nlieu, drifting: offset {found.offset_s:+.3f} s, drift {found.drift:+.5f}, confidence "
          f"{found.confidence:.2f}; windows {[(round(t), round(o * FPS, 1)) for t, o, _ in found.windows]}")
    assert found.drift == pytest.approx(-0.008, abs=0.0015)
    assert abs(found.offset_s - 0.079) <= 1.0 / FPS and found.confidence >= 0.4
    # Unrelated audio of the same length finds no drift.
    _, other = clip("obama")
    other = np.tile(other, 4)[: len(audio)]
    assert sync_of(mouth, other).drift == 0.0


def test_align_audio_moves_every_sample_where_the_drift_says():
    from preprocess.audio_features import align_audio

    rate = af.SAMPLE_RATE
    clicks = np.zeros(40 * rate, np.float32)
    at = np.array([2.0, 10.0, 20.0, 30.0, 38.0])  # source seconds
    clicks[(at * rate).astype(int)] = 1.0
    sync = SyncEstimate(offset_s=0.1, drift=-0.008, confidence=1.0)
    out = align_audio(clicks, sync, 40 * rate)
    assert out.dtype == np.float32 and len(out) == 40 * rate
    # video time t holds the source at t + 0.1 - 0.008 t: a click at s lands at (s - 0.1) / 0.992
    peaks = np.sort(np.argsort(np.abs(out))[-len(at):]) / rate
    assert peaks == pytest.approx((at - 0.1) / 0.992, abs=2.0 / rate)
    # No drift: the plain shift, sample for sample.
    plain = align_audio(clicks, SyncEstimate(0.1, 0.0, 1.0), 40 * rate)
    assert np.array_equal(plain[: 30 * rate], clicks[int(0.1 * rate): int(0.1 * rate) + 30 * rate])


# -------------------------------------------------------------------------------------------------- the step
def make_dataset(root, mouth: np.ndarray, audio: np.ndarray):
    """A dataset directory as ingest and face_motion leave it, holding only what the audio step reads."""
    from preprocess.dataset import FORMAT_VERSION, KIND, Dataset

    ds = Dataset(root)
    root.mkdir(parents=True)
    ds.save_manifest({
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "fps": FPS,
        "size": 512,
        "source": {"path": "test", "fingerprint": "0"},
        "steps": {"ingest": {"result": {"n_frames": len(mouth)}}, "face_motion": {"result": {}}},
    })
    media.write_wav(ds.path("audio_source.wav"), audio)
    ds.save_array("mouth_opening", mouth)
    return ds


def test_step_corrects_a_delayed_soundtrack(tmp_path):
    from preprocess.audio_features import STEP
    from preprocess.config import PreprocessConfig

    mouth, audio = clip("reagan")
    late = np.concatenate([np.zeros(int(0.16 * af.SAMPLE_RATE), np.float32), audio])  # 4 frames late
    ds = make_dataset(tmp_path / "ds", mouth, late)
    res = json.loads(json.dumps(STEP.run(ds, PreprocessConfig())))  # what the manifest will hold
    print(f"\nstep result: offset {res['offset_s']:+.3f} s, confidence {res['offset_confidence']}, "
          f"speech {res['speech_fraction']:.2f}")
    assert res["offset_measured"] and res["offset_s"] == pytest.approx(0.16, abs=1.0 / FPS)
    n = len(mouth)
    for name in ("ppg", "mel", "pitch", "energy"):
        arr = ds.load_array(f"audio_{name}")  # checks one row per frame
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert ds.load_array("audio_ppg").shape[1] == len(res["phoneme_vocabulary"]) == res["feature_dims"]["ppg"]
    assert 0.4 < res["speech_fraction"] < 1.0
    with wave.open(str(ds.path("audio.wav"))) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert w.getnframes() == round(n / FPS * 16000)
    # The written audio is back in sync with the lips.
    synced = media.read_audio(ds.path("audio.wav"))
    assert abs(offset_of(mouth, synced)[0] - KNOWN["reagan"][2]) <= 1.0 / FPS


def test_step_corrects_a_drifting_soundtrack(tmp_path, caplog):
    from preprocess.audio_features import STEP
    from preprocess.config import PreprocessConfig

    mouth, audio = clip("lieu")
    ds = make_dataset(tmp_path / "ds", mouth, drifting(audio))
    with caplog.at_level("WARNING", logger="nerf_talk.preprocess"):
        res = json.loads(json.dumps(STEP.run(ds, PreprocessConfig())))
    assert "drifts against the pictures" in caplog.text
    assert res["offset_measured"] and res["drift"] == pytest.approx(-0.008, abs=0.0015)
    # What is written is in step with the lips all along: no drift left, no offset left.
    after = sync_of(mouth, media.read_audio(ds.path("audio.wav")))
    print(f"\nafter the step: offset {after.offset_s * 1000:+.1f} ms, drift {after.drift}, windows "
          f"{[(round(t), round(o * FPS, 1)) for t, o, _ in after.windows]}")
    assert after.drift == 0.0 and abs(after.offset_s) <= 1.0 / FPS
    assert all(abs(o) <= 1.0 / FPS for _, o, c in after.windows if c >= 0.4)


def test_step_uses_a_given_offset_and_falls_back_to_zero_when_unsure(tmp_path, caplog):
    from preprocess.audio_features import STEP
    from preprocess.config import PreprocessConfig

    mouth, audio = clip("reagan")
    ds = make_dataset(tmp_path / "given", mouth, audio)
    res = STEP.run(ds, PreprocessConfig(audio_offset=-0.1))
    assert res["offset_s"] == -0.1 and res["offset_measured"] is False and res["offset_confidence"] is None
    synced = media.read_audio(ds.path("audio.wav"))
    assert np.all(synced[:1500] == 0) and np.allclose(synced[1600:3200], audio[:1600], atol=1e-4)

    noise = np.random.default_rng(1).uniform(0.0, 0.1, len(mouth)).astype(np.float32)
    ds = make_dataset(tmp_path / "unsure", noise, audio)
    with caplog.at_level("WARNING", logger="nerf_talk.preprocess"):
        res = STEP.run(ds, PreprocessConfig())
    assert res["offset_s"] == 0.0 and res["offset_measured"] is False and res["offset_confidence"] < 0.4
    assert "could not be measured" in caplog.text


def test_step_measures_a_short_clip_with_the_motion_model(tmp_path, caplog):
    """6 s of lieu with the sound 120 ms late on top of its own 80 ms: too short for the clip's own regression to
    be sure, so the generic motion model, named by nerf_talk.api.preprocess, measures it (lieu trained that model:
    this checks the step; bench/bench_motion.py checks speakers the model never saw, docs/MOTION_MODEL.md)."""
    from nerf_talk.api import OFFSET_MODEL
    from nerf_talk.motion.lead import offset_by_default_model
    from preprocess.audio_features import STEP
    from preprocess.config import PreprocessConfig

    mouth, audio = clip("lieu")
    n = int(6 * FPS)
    late = np.concatenate([np.zeros(int(0.12 * af.SAMPLE_RATE), np.float32), audio])[: n * af.SAMPLE_RATE // 25]
    assert offset_of(mouth[:n], late)[1] < 0.4  # the clip's own lips cannot tell
    ds = make_dataset(tmp_path / "lieu", mouth[:n], late)
    with caplog.at_level("INFO", logger="nerf_talk.preprocess"):
        res = json.loads(json.dumps(STEP.run(ds, PreprocessConfig(offset_model=OFFSET_MODEL))))
    print(f"\nstep result: offset {res['offset_s']:+.3f} s, the model's part {res['offset_model_residual_s']:+.3f} s "
          f"(confidence {res['offset_model_confidence']})")
    assert res["offset_measured"] and res["offset_model"] == OFFSET_MODEL and res["offset_model_confidence"] >= 1.0
    assert res["offset_s"] == pytest.approx(KNOWN["lieu"][2] + 0.12, abs=1.0 / FPS)
    assert "then the lip model" in caplog.text and "corrected" in caplog.text
    after, _ = offset_by_default_model(media.read_audio(ds.path("audio.wav")), mouth[:n], FPS)
    assert abs(after) <= 1.0 / FPS


def test_step_applies_a_named_lip_model_only_where_it_is_sure(tmp_path, monkeypatch):
    """The offset model is looked up by name; its residual is added only from MODEL_MIN_CONFIDENCE on, a given
    --audio-offset is never second-guessed, and a name that does not load is a clear error."""
    import sys
    import types

    from nerf_talk.errors import UserError
    from preprocess.audio_features import MODEL_MIN_CONFIDENCE, STEP
    from preprocess.config import PreprocessConfig

    calls = []
    answer = {"value": (0.1, 3.0)}

    def measure(audio, mouth, fps):
        calls.append(len(audio))
        return answer["value"]

    monkeypatch.setitem(sys.modules, "fake_lips", types.SimpleNamespace(measure=measure))
    mouth, audio = clip("reagan")
    lips_only = STEP.run(make_dataset(tmp_path / "lips", mouth, audio), PreprocessConfig())
    assert lips_only["offset_model"] is None and lips_only["offset_model_residual_s"] is None
    sure = STEP.run(make_dataset(tmp_path / "sure", mouth, audio), PreprocessConfig(offset_model="fake_lips:measure"))
    assert sure["offset_s"] == pytest.approx(lips_only["offset_s"] + 0.1, abs=1e-4) and sure["offset_measured"]
    assert sure["offset_model_confidence"] == 3.0 and len(calls) == 1
    answer["value"] = (0.1, MODEL_MIN_CONFIDENCE + 0.05)
    fair = STEP.run(make_dataset(tmp_path / "fair", mouth, audio), PreprocessConfig(offset_model="fake_lips:measure"))
    assert fair["offset_s"] == pytest.approx(lips_only["offset_s"] + 0.1, abs=1e-4)
    answer["value"] = (0.1, MODEL_MIN_CONFIDENCE - 0.05)
    unsure = STEP.run(make_dataset(tmp_path / "unsure", mouth, audio), PreprocessConfig(offset_model="fake_lips:measure"))
    assert unsure["offset_s"] == lips_only["offset_s"] and unsure["offset_model_residual_s"] == 0.1
    given = STEP.run(make_dataset(tmp_path / "given", mouth, audio),
                     PreprocessConfig(audio_offset=0.0, offset_model="fake_lips:measure"))
    assert given["offset_s"] == 0.0 and given["offset_model"] is None and len(calls) == 3
    with pytest.raises(UserError, match="offset_model 'fake_lips:nothing' cannot be loaded"):
        STEP.run(make_dataset(tmp_path / "bad", mouth, audio), PreprocessConfig(offset_model="fake_lips:nothing"))


def test_api_preprocess_names_the_motion_model(tmp_path, monkeypatch):
    """nerf_talk.api.preprocess (every front end's way in) asks the shipped motion model for the offset, unless
    the settings name another lip model; the other settings pass through."""
    from nerf_talk import api
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda video, out, cfg: seen.append(cfg))
    api.preprocess("clip.mp4", tmp_path / "a")
    api.preprocess("clip.mp4", tmp_path / "b", PreprocessConfig(size=256, offset_model="fake_lips:measure"))
    assert seen[0].offset_model == api.OFFSET_MODEL == "nerf_talk.motion.lead:offset_by_default_model"
    assert (seen[1].offset_model, seen[1].size) == ("fake_lips:measure", 256)

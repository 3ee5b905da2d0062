"""Evaluation (nerf_talk.eval): the figures on known cases, then `evaluate_avatar` end to end on the smoke-fitted
synthetic avatar (test_fit_render.fitted) and its refusals of bad input. Landmark figures on a real face use a frame
of the shared obama clip (skipped when ../shared/data is absent). About a minute on 2 cores after the shared fit."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest

from nerf_talk.errors import UserError
from nerf_talk.eval import metrics as mx
from support import shared_file
from test_fit_render import FPS, fitted, speech


def smooth_image(seed: int = 0, size: int = 64) -> np.ndarray:
    """A textured RGB uint8 image: smooth colour blobs plus fine detail, so blurring it loses something."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0, 255, (8, 8, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 25, (size, size, 3)).astype(np.float32)
    return np.clip(coarse + fine, 0, 255).astype(np.uint8)


# -- images ---------------------------------------------------------------------------------------------------------
def test_identical_frames_score_maximal_and_blur_lowers_psnr_and_ssim():
    img = smooth_image()
    mask = np.zeros(img.shape[:2], bool)
    mask[16:48, 16:48] = True
    assert mx.psnr(img, img) == math.inf and mx.psnr(img, img, mask) == math.inf
    assert mx.ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    assert mx.ssim(img, img, mask) == pytest.approx(1.0, abs=1e-6)
    last_p, last_s = math.inf, 1.0
    for sigma in (0.7, 1.5, 3.0):  # more blur, lower scores, on the full frame and on the region
        blurred = cv2.GaussianBlur(img, (0, 0), sigma)
        p, s = mx.psnr(blurred, img), mx.ssim(blurred, img)
        pm, sm = mx.psnr(blurred, img, mask), mx.ssim(blurred, img, mask)
        assert p < last_p and s < last_s and pm < math.inf and sm < 1.0
        last_p, last_s = p, s
    # PSNR's definition: a uniform error of 0.1 (of the [0, 1] range) is 20 dB.
    a = np.full((8, 8, 3), 0.5)
    assert mx.psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-9)
    assert math.isnan(mx.psnr(img, img, np.zeros(img.shape[:2], bool)))


def test_image_scores_on_identical_and_blurred_frames():
    from nerf_talk.eval.run import image_scores
    from preprocess.labels import Label

    real = np.stack([smooth_image(s) for s in range(3)])
    labels = np.zeros(real.shape[:3], np.uint8)
    labels[:, 20:44, 20:44] = Label.FACE
    labels[:, 36:40, 28:36] = Label.LIPS
    same = image_scores(real, real.copy(), labels)
    assert same["psnr"] == math.inf and same["psnr_face"] == math.inf and same["psnr_mouth"] == math.inf
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["ssim_face"] == pytest.approx(1.0, abs=1e-6)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in real])
    b = image_scores(real, blurred, labels)
    assert 10 < b["psnr"] < 40 and b["ssim"] < 0.95 and b["psnr_face"] < 40 and b["ssim_face"] < 0.95
    assert len(b["per_frame"]) == 3


# -- landmarks and signals ------------------------------------------------------------------------------------------
def test_mouth_distance_correlation_and_jitter_on_known_cases():
    from nerf_talk.eval.face import MOUTH_POINTS

    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 478, 3))
    assert mx.mouth_distance(a, a.copy(), MOUTH_POINTS, 0.1) == 0.0
    b = a.copy()
    b[:, :, 0] += 0.01  # every point 0.01 to the right, face size 0.1 -> 10 %
    assert mx.mouth_distance(b, a, MOUTH_POINTS, 0.1) == pytest.approx(10.0)
    b[2] = np.nan  # a frame without a face is left out, not counted as 0 or inf
    assert mx.mouth_distance(b, a, MOUTH_POINTS, 0.1) == pytest.approx(10.0)
    x = np.sin(np.arange(30) / 3.0)
    assert mx.correlation_finite(x, x) == pytest.approx(1.0)
    y = x.copy()
    y[[3, 9]] = np.nan
    assert mx.correlation_finite(x, y) == pytest.approx(1.0)
    assert math.isnan(mx.correlation_finite(x, np.zeros_like(x)))

    # Head jitter: a steady slide scores 0; alternating +-0.5 px on top of it gives |x_t - (x_{t-1} + x_{t+1}) / 2|
    # = 0.5 + 0.5 = 1 px per point, 2 % of a 50 px face.
    t = np.arange(20, dtype=np.float64)
    pts = np.zeros((20, 4, 2))
    pts[..., 0] = 100 + 2.0 * t[:, None]
    assert mx.landmark_jitter(pts, 50.0) == pytest.approx(0.0, abs=1e-12)
    shaky = pts.copy()
    shaky[..., 1] += 0.5 * (-1.0) ** t[:, None]
    assert mx.landmark_jitter(shaky, 50.0) == pytest.approx(1.0 / 50.0 * 100.0)
    shaky[7] = np.nan
    assert mx.landmark_jitter(shaky, 50.0) == pytest.approx(2.0)


def test_region_flicker_separates_motion_from_flicker():
    still = np.repeat(smooth_image()[None], 6, 0)
    keep = np.ones(still.shape[:3], bool)
    assert mx.region_flicker(still, keep) == 0.0
    ramp = np.stack([np.full((16, 16, 3), 10 * i, np.uint8) for i in range(6)])  # steady fade: constant velocity
    assert mx.region_flicker(ramp, np.ones((6, 16, 16), bool)) == pytest.approx(0.0)
    flick = still.astype(np.int16)
    flick[1::2] += 6  # every other frame 6 grey levels brighter
    flick = np.clip(flick, 0, 255).astype(np.uint8)
    keep[:, :8] = False  # only the kept region counts
    assert mx.region_flicker(flick, keep) == pytest.approx(6.0, abs=0.3)


def test_seam_band_and_energy_see_a_line_at_the_jaw():
    from preprocess.labels import Label

    lab = np.full((1, 40, 40), int(Label.BACKGROUND), np.uint8)
    lab[0, 5:20, 10:30] = Label.FACE
    lab[0, 20:40, 5:35] = Label.NECK
    band = mx.seam_band(lab, (Label.FACE,), (Label.NECK, Label.TORSO), 2)
    rows = np.nonzero(band[0].any(1))[0]
    assert rows.min() >= 17 and rows.max() <= 22  # only along the face/neck boundary (rows 19-20), +-2
    assert not band[0, :, :6].any()  # not where the neck meets the background
    smooth = cv2.resize(smooth_image(), (40, 40), interpolation=cv2.INTER_AREA)[None]
    seam = smooth.copy()
    seam[0, 20, 10:30] = 255  # a bright line along the jaw
    assert mx.seam_energy(seam, band) > 1.5 * mx.seam_energy(smooth, band)
    blurred = cv2.GaussianBlur(smooth[0], (0, 0), 2)[None]  # a render that smears the boundary scores lower
    assert mx.seam_energy(blurred, band) < 0.7 * mx.seam_energy(smooth, band)
    assert math.isnan(mx.seam_energy(smooth, np.zeros_like(band)))


def test_panel_titles_keep_their_outline_under_the_text():
    """The dark outline of a title lies around its white letters, not a letter beside them (an outline drawn at a
    larger thickness is laid out wider by cv2 and drifted right over a long title)."""
    from nerf_talk.eval.run import PANEL_TITLES, side_by_side

    img = side_by_side([np.full((256, 256, 3), 128, np.uint8)] * 3)
    for k in range(3):
        band = img[:26, k * 256:(k + 1) * 256].astype(int)
        cols_white = np.nonzero((band > 200).all(-1).any(0))[0]
        cols_dark = np.nonzero((band < 60).all(-1).any(0))[0]
        assert len(cols_white), PANEL_TITLES[k]
        # the outline reaches at most 2 px past the white strokes (1 px shift + antialiasing)
        assert cols_dark.max() <= cols_white.max() + 2 and cols_dark.min() >= cols_white.min() - 2, PANEL_TITLES[k]


def test_blink_agreement():
    n = 60
    real = np.zeros(n)
    real[10:14] = 1.0
    real[40:43] = 1.0
    same = mx.blink_agreement(real, real.copy())
    assert same["f1"] == 1.0 and same["closure_corr"] == pytest.approx(1.0)
    assert same["events_real"] == same["events_rendered"] == 2
    late = np.roll(real, 2)  # within the 2-frame tolerance: the same blinks
    assert mx.blink_agreement(late, real)["f1"] == 1.0
    one = real.copy()
    one[40:43] = 0.0  # the render misses the second blink
    r = mx.blink_agreement(one, real)
    assert r["f1"] == pytest.approx(2 / 3) and r["precision"] == 1.0 and r["recall"] == 0.5
    assert math.isnan(mx.blink_agreement(np.zeros(n), np.zeros(n))["f1"])  # nothing to agree on


def test_shifted_audio_lowers_the_sync_figure():
    """A mouth that follows the audio's articulatory openness exactly scores high and peaks at lag 0; the same
    mouth against the audio delayed by 200 ms scores lower, and below the time-shifted control."""
    from nerf_talk import audio_features as af
    from nerf_talk.motion.metrics import audio_openness

    vocab = af.phoneme_vocabulary()
    a = speech("Papa made a map. Bob opened the window and said ah. Mama bought apples by the bay.", pad_s=0.3)
    feats = af.compute_features(a, FPS)
    rng = np.random.default_rng(0)
    opening = audio_openness(feats, vocab) * 0.05 + rng.normal(0, 0.002, len(feats["energy"]))
    s = mx.sync_scores(opening, feats, vocab, FPS)
    assert s["msf"] > 0.8 and s["best_lag"] == 0 and s["msf"] > s["msf_shifted_max"] + 0.2
    delay = int(0.2 * af.SAMPLE_RATE)
    shifted_audio = np.concatenate([np.zeros(delay, np.float32), a[:-delay]])
    s_shift = mx.sync_scores(opening, af.compute_features(shifted_audio, FPS), vocab, FPS)
    assert s_shift["msf"] < s["msf"] - 0.2
    assert s_shift["best_lag"] < 0  # the mouth now leads the audio: the peak moves to negative lags
    # No face anywhere: nan, not a number that reads as measured.
    assert math.isnan(mx.sync_scores(np.full_like(opening, np.nan), feats, vocab, FPS)["msf"])


def test_landmarks_redetected_on_a_real_face():
    """mediapipe on a real frame: identical frames give distance 0 and correlation-free signals equal; a 128 px
    copy (the smoke recipe's size) is still found thanks to the upscale before detection."""
    from nerf_talk import media
    from nerf_talk.eval import face as fc
    from preprocess import mesh_topology as mt
    from preprocess.face_motion import eye_openness_raw

    video = shared_file("video/obama_450_20s.mp4")
    frames = [f for _, (_, f) in zip(range(3), media.iter_frames(video, 25.0))]
    lm = fc.detect_sequence(frames)
    assert np.isfinite(lm).all()
    geo = fc.FaceGeometry(template=lm[0].astype(np.float64), rigid=mt.RIGID, weights=None,
                          face_size=float(np.linalg.norm(lm[0, 168] - lm[0, 152])),
                          typical_open=eye_openness_raw(lm[:1].astype(np.float64))[0])
    sig = fc.face_signals(lm, geo)
    assert sig["found"].all()
    assert mx.mouth_distance(sig["head"], sig["head"].copy(), fc.MOUTH_POINTS, 1.0) == 0.0
    assert np.allclose(sig["eye_openness"][0], 1.0, atol=1e-6)  # frame 0 is its own typical open eye
    small = [cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in frames]
    lm_small = fc.detect_sequence(small)
    assert np.isfinite(lm_small).all()
    sig_small = fc.face_signals(lm_small, geo)
    # The same face at a quarter of the pixels: the mouth lands within a few % of the face size.
    d = mx.mouth_distance(sig_small["head"], sig["head"], fc.MOUTH_POINTS, 1.0)
    assert 0.0 < d < 5.0
    assert fc.face_size_pixels(lm_small) == pytest.approx(fc.face_size_pixels(lm) * 128 / frames[0].shape[0], rel=0.1)
    # The tracker reads blur as shape (eval's blurred_real reference): the same frames blurred by 3 px move the mouth
    # landmarks further than the same frames shot again (noise and JPEG) do.
    mid = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in frames]
    ref = fc.face_signals(fc.detect_sequence(mid), geo)["head"]
    soft = fc.blurred_copies(np.stack(mid), 3.0)
    assert soft.shape == (3, 256, 256, 3) and soft.dtype == np.uint8
    again = mx.mouth_distance(fc.face_signals(fc.detect_sequence(fc.static_copies(np.stack(mid))), geo)["head"], ref,
                              fc.MOUTH_POINTS, 1.0)
    blurred = mx.mouth_distance(fc.face_signals(fc.detect_sequence(soft), geo)["head"], ref, fc.MOUTH_POINTS, 1.0)
    assert blurred > again


# -- the whole evaluation on the smoke-fitted avatar ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_result(tmp_path_factory):
    return fitted(tmp_path_factory)


@pytest.fixture(scope="module")
def other_speech(tmp_path_factory):
    from nerf_talk import media

    path = tmp_path_factory.mktemp("speech") / "other.wav"
    media.write_wav(path, speech("Bob made a map by the bay.", pad_s=0.4), 16000)
    return path


def strict_json(path):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_avatar_writes_figures_plots_and_video(fit_result, other_speech, tmp_path):
    import av

    from nerf_talk.eval import evaluate_avatar
    from preprocess.dataset import Dataset

    out = tmp_path / "eval"
    res = evaluate_avatar(fit_result["avatar"], fit_result["dataset"], out, audio=other_speech, progress=False,
                          say=lambda *_: None)
    val = Dataset(fit_result["dataset"]).read_json("split.json")["val"]
    doc = strict_json(out / "eval.json")
    assert doc["heldout_frames"] == val and doc["compare_size"] == [48, 48]
    for name in ("audio", "tracked"):
        r = doc["self_driven"][name]
        # The smoke fit reproduces its held-out frames far better than chance (a grey frame scores ~10 dB).
        assert 15.0 < r["psnr"] < 60.0 and 0.3 < r["ssim"] <= 1.0 and r["psnr_face"] > 12.0
        assert len(r["per_frame"]) == len(val)
    # The synthetic sphere has no landmarks: those figures are absent, not invented.
    assert doc["landmarks"] is False and "mouth_lmd" not in doc["self_driven"]["audio"]
    c = doc["cross_driven"]
    assert c["frames"] == math.ceil(c["seconds"] * FPS - 1e-6) and c["seconds"] > 2.0
    t = doc["temporal"]
    assert set(t) == {"real", "rendered_audio", "rendered_tracked", "rendered_other_speech"}
    assert all(v["background_flicker"] >= 0 for v in t.values())
    # The synthetic background plate is static and the renders composite over the trained plate: the rendered
    # background flickers about a grey level; head jitter needs landmarks, which the sphere has none of. (What
    # flickers is fog in the empty side walls of this 116-step fit's head box, turning with the head: 0.84 before
    # the landmark warp, 1.02 with it on the same sphere, 1.19 on this one; a flicker map shows nothing elsewhere.)
    assert t["rendered_tracked"]["background_flicker"] < 1.3 and t["real"]["head_jitter"] is None
    assert doc["timing"]["render_fps"] > 0
    for f in ("eval.json", "psnr.png", "side_by_side.png", "side_by_side.mp4"):
        assert (out / f).is_file() and f in doc["files"]
    assert cv2.imread(str(out / "psnr.png")) is not None
    with av.open(str(out / "side_by_side.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == len(val)
    assert frames[0].shape[1] == 3 * frames[0].shape[0]  # three square panels side by side
    assert not list(out.glob(".*"))  # no temporary file left behind
    assert res["self_driven"]["tracked"]["psnr"] == doc["self_driven"]["tracked"]["psnr"]


def test_a_blurred_render_scores_lower(fit_result):
    """On the fitted avatar's own held-out renders: a render against itself scores maximal; blurring it lowers PSNR
    and SSIM against that render and against the real frames, on the full frame and on the face."""
    from nerf_talk.api import Avatar
    from nerf_talk.eval.run import heldout_frames, image_scores, real_frames, render_sequence
    from preprocess.dataset import Dataset

    avatar = Avatar.load(fit_result["avatar"])
    ds = Dataset(fit_result["dataset"])
    val = heldout_frames(ds)
    r = avatar.renderer()
    eyes = np.concatenate([ds.load_array("eye_openness"), ds.load_array("blink")[:, None]], 1)[val]
    rendered, _ = render_sequence(avatar, r, ds.load_array("poses")[val], ds.load_array("lower_face_motion")[val],
                                  eyes, "render", False)
    real, labels = real_frames(ds, val, r.size)
    same = image_scores(rendered, rendered.copy(), labels)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    sharp_vs_real = image_scores(real, rendered, labels)
    for sigma in (1.0, 2.0):
        blurred = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in rendered])
        b = image_scores(rendered, blurred, labels)
        assert b["psnr"] < 60 and b["ssim"] < 0.99
        vs_real = image_scores(real, blurred, labels)
        for k in ("psnr", "ssim", "psnr_face", "ssim_face"):
            assert vs_real[k] < sharp_vs_real[k], (k, sigma, vs_real[k], sharp_vs_real[k])


def test_head_zone_covers_the_head_and_leaves_the_background(fit_result):
    from nerf_talk.api import Avatar
    from nerf_talk.eval.run import FACE_LABELS, label_mask, outside_head, real_frames
    from preprocess.dataset import Dataset

    ds = Dataset(fit_result["dataset"])
    r = Avatar.load(fit_result["avatar"]).renderer()
    frames = list(range(0, ds.n_frames, 5))  # yaw swings +-10 degrees over these
    keep = outside_head(r, ds.load_array("poses")[frames], ds.load_array("head_template", expect_rows=False))
    _, labels = real_frames(ds, frames, r.size)
    face = label_mask(labels, FACE_LABELS)
    assert (face & keep).sum() <= 0.01 * face.sum()  # the head is inside the zone in every pose
    assert 0.2 < keep.mean() < 0.9 and keep[:, 0, 0].all()  # and the background corners are outside it


def _copy_dataset(fit_result, tmp_path):
    from preprocess.dataset import Dataset

    dst = tmp_path / "ds"
    shutil.copytree(fit_result["dataset"], dst)
    return Dataset(dst)


def test_bad_input_is_refused_with_a_hint(fit_result, other_speech, tmp_path):
    from nerf_talk import media
    from nerf_talk.api import Avatar
    from nerf_talk.eval import evaluate_avatar

    avatar = Avatar.load(fit_result["avatar"])
    run = lambda ds, **kw: evaluate_avatar(avatar, ds, tmp_path / "out", progress=False, video=False,  # noqa: E731
                                           say=lambda *_: None, **kw)
    ds = _copy_dataset(fit_result, tmp_path)
    ds.write_json("split.json", {"train": list(range(ds.n_frames)), "val": []})
    with pytest.raises(UserError, match="held-out frames") as e:
        run(ds.root)
    assert e.value.hint
    shutil.rmtree(ds.root)

    ds = _copy_dataset(fit_result, tmp_path)
    m = ds.load_manifest()
    m["source"]["fingerprint"] = "someone-else"
    ds.save_manifest(m)
    with pytest.raises(UserError, match="another video"):
        run(ds.root)
    m["source"]["fingerprint"] = "synthetic"
    m["steps"]["pose"]["result"]["intrinsics"]["cx"] += 6.0  # another crop of the same video
    ds.save_manifest(m)
    with pytest.raises(UserError, match="camera"):
        run(ds.root)
    shutil.rmtree(ds.root)

    with pytest.raises(UserError, match="not found"):
        run(fit_result["dataset"], audio=tmp_path / "missing.wav")
    short = tmp_path / "short.wav"
    media.write_wav(short, speech("Hi.")[:16000], 16000)
    with pytest.raises(UserError, match="at least"):
        run(fit_result["dataset"], audio=short)
    assert not (tmp_path / "out" / "eval.json").exists()  # refused before anything was written


def test_cli_eval(fit_result, other_speech, tmp_path, capsys):
    from nerf_talk.cli import main

    out = tmp_path / "cli_eval"
    rc = main(["eval", str(fit_result["avatar"]), str(fit_result["dataset"]), "--audio", str(other_speech),
               "-o", str(out), "--no-video"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "other speech" in text and str(out / "eval.json") in text
    doc = strict_json(out / "eval.json")
    assert "side_by_side.mp4" not in doc["files"] and not (out / "side_by_side.mp4").exists()
    # A bad input is a UserError: status 2 and a message, no traceback.
    assert main(["eval", str(fit_result["avatar"]), str(tmp_path / "nowhere")]) == 2
    assert "not a nerf_talk dataset" in capsys.readouterr().err

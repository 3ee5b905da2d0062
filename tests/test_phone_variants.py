"""What users really shoot: vertical phone video with rotation metadata, variable frame rate at 60 fps, HEVC.

Each variant of a shared clip is made inside the test and must preprocess to the same kind of dataset.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nerf_talk import media
from support import ffmpeg, shared_file

SECONDS = 6


def _preprocess(video, out):
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    return pipeline.run(video, out, PreprocessConfig(size=256))


def _check_dataset(ds, seconds):
    assert abs(ds.n_frames - seconds * 25) <= 2
    assert ds.read_frame(0).shape == (256, 256, 3)
    lm = ds.load_array("landmarks_2d")
    # The face is upright: eyes above the mouth, forehead above the chin.
    assert np.all(lm[:, 10, 1] < lm[:, 152, 1])
    assert ds.load_array("audio_mel").shape[0] == ds.n_frames
    assert ds.step_result("landmarks")["tracked_fraction"] > 0.95
    assert json.loads(ds.path("split.json").read_text())["val"][-1] == ds.n_frames - 1


@pytest.fixture(scope="module")
def obama():
    return str(shared_file("video/obama_450_20s.mp4"))


def _write_phone_clip(src: str, path, seconds: float) -> None:
    """A portrait 1080x1920 picture stored as rotated landscape with a display rotation, as phones write it."""
    import av
    import cv2

    video_only = path.with_name("video_only.mp4")
    with av.open(str(video_only), "w") as c:
        vs = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 1920, 1080, "yuv420p"
        vs.set_display_rotation(90)  # the player turns the stored frame 90 degrees counter-clockwise
        for k, img in media.iter_frames(src, 25):
            if k >= seconds * 25:
                break
            portrait = np.zeros((1920, 1080, 3), np.uint8)
            portrait[420:1500] = cv2.resize(img, (1080, 1080))
            stored = np.ascontiguousarray(np.rot90(portrait, k=-1))
            for pkt in vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
    ffmpeg("-i", str(video_only), "-i", src, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
           "-shortest", str(path))


def test_vertical_phone_video_with_rotation_metadata(tmp_path, obama):
    clip = tmp_path / "phone.mp4"
    _write_phone_clip(obama, clip, SECONDS)
    info = media.probe_video(clip)
    assert (info.width, info.height) == (1080, 1920) and info.rotation == 90 and info.has_audio
    _check_dataset(_preprocess(clip, tmp_path / "ds"), SECONDS)


def test_variable_frame_rate_60fps_hevc(tmp_path, obama):
    clip = tmp_path / "vfr.mkv"
    # 60 fps with irregular gaps (every 7th frame dropped): variable frame rate, HEVC in Matroska.
    ffmpeg("-i", obama, "-t", str(SECONDS), "-vf", "fps=60,select='not(eq(mod(n\\,7)\\,3))'", "-fps_mode", "vfr",
           "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error", "-c:a", "aac", str(clip))
    info = media.probe_video(clip)
    assert info.codec == "hevc"
    ds = _preprocess(clip, tmp_path / "ds")
    _check_dataset(ds, SECONDS)


def test_resampling_keeps_time(tmp_path):
    """A 60 fps clip whose frames encode their own timestamp: frame k at 25 fps shows the moment k/25."""
    frames = []
    for i in range(60):
        frames.append(np.full((64, 64, 3), i * 4, np.uint8))  # the frame index, readable back from the grey level
    clip = tmp_path / "ticks.mp4"
    media.write_video(clip, frames, 60, crf=0)
    got = [(k, int(round(img.mean() / 4))) for k, img in media.iter_frames(clip, 25)]
    assert len(got) == 25
    for k, src in got:
        assert src == int(np.floor(k * 60 / 25 + 1e-6)), (k, src)

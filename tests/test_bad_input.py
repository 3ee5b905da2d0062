"""Bad input gets a clear error that names the problem and what to do, a non-zero exit, and loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from nerf_talk import media
from nerf_talk.cli import main
from support import ffmpeg, shared_file


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["preprocess", *map(str, argv)])
    return code, capsys.readouterr().err


def test_missing_path(tmp_path, capsys):
    code, err = run_cli(capsys, tmp_path / "nope.mp4", "-o", tmp_path / "ds")
    assert code == 2 and "not found" in err and "nope.mp4" in err
    assert not (tmp_path / "ds").exists()


def test_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    code, err = run_cli(capsys, bad, "-o", tmp_path / "ds")
    assert code == 2 and "corrupt" in err


def test_truncated_file(tmp_path, capsys):
    src = shared_file("video/obama_450_20s.mp4").read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(src[: len(src) // 3])
    code, err = run_cli(capsys, bad, "-o", tmp_path / "ds")
    assert code == 2
    assert "corrupt" in err or "truncated" in err


def test_short_clip(tmp_path, capsys):
    short = tmp_path / "short.mp4"
    ffmpeg("-i", str(shared_file("video/obama_450_20s.mp4")), "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
           str(short))
    code, err = run_cli(capsys, short, "-o", tmp_path / "ds")
    assert code == 2 and "2.0 s long" in err and "longer video" in err


def test_no_audio_track(tmp_path, capsys):
    code, err = run_cli(capsys, shared_file("video/reagan_256_26s_silent.mp4"), "-o", tmp_path / "ds")
    assert code == 2 and "no audio track" in err and "--audio" in err


def test_no_face(tmp_path, capsys):
    rng = np.random.default_rng(1)
    frames = (rng.random((1, 64, 64, 3)) * 255).astype(np.uint8).repeat(150, 0)
    frames = [np.kron(f, np.ones((4, 4, 1), np.uint8)) for f in frames]  # 256 px of coloured blocks
    clip = tmp_path / "noface.mp4"
    media.write_video(clip, frames, 25, audio=np.zeros(16000 * 6, np.float32))
    code, err = run_cli(capsys, clip, "-o", tmp_path / "ds")
    assert code == 2 and "no face" in err


def test_two_faces_of_similar_size(tmp_path, capsys):
    twin = tmp_path / "twins.mp4"
    src = str(shared_file("video/obama_450_20s.mp4"))
    ffmpeg("-i", src, "-i", src, "-t", "6", "-filter_complex", "[0:v][1:v]hstack", "-c:v", "libx264", "-preset",
           "ultrafast", "-map", "0:a", str(twin))
    code, err = run_cli(capsys, twin, "-o", tmp_path / "ds")
    assert code == 2 and "two or more faces" in err


def test_refuses_a_directory_with_other_content(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    code, err = run_cli(capsys, shared_file("video/obama_450_20s.mp4"), "-o", out)
    assert code == 2 and "not empty" in err
    assert (out / "precious.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_refuses_a_dataset_of_another_video(tmp_path, capsys):
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    out = tmp_path / "ds"
    ds, m = pipeline.open_or_create(out, shared_file("video/lieu_256_60s.mp4"), PreprocessConfig())
    m["steps"]["ingest"] = {"version": 1, "result": {"n_frames": 1500}}  # a finished step: work to keep
    ds.save_manifest(m)
    before = (out / "manifest.json").read_text()
    code, err = run_cli(capsys, shared_file("video/obama_450_20s.mp4"), "-o", out)
    assert code == 2 and "another video" in err and "never overwrites" in err
    assert (out / "manifest.json").read_text() == before


@pytest.mark.parametrize("step", ["nonsense"])
def test_force_unknown_step(tmp_path, capsys, step):
    code, err = run_cli(capsys, shared_file("video/obama_450_20s.mp4"), "-o", tmp_path / "ds", "--force", step)
    assert code == 2 and "unknown steps" in err

"""The `nerf-talk` command line as a user meets it."""

from __future__ import annotations

import pytest

from nerf_talk.cli import main
from nerf_talk.recipes import resolve_recipe


def test_train_from_the_command_line(tmp_path, capsys):
    from nerf_talk.train.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(tmp_path / "ds", n_frames=16, size=32).root
    out = tmp_path / "avatar"
    argv = ["train", str(ds), "-o", str(out), "--recipe", "smoke_cpu", "--set", "data.scale=1.0"]
    for i, steps in enumerate((8, 2, 4)):
        argv += ["--set", f"stages.{i}.steps={steps}"]
    assert main(argv) == 0
    assert (out / "avatar.safetensors").exists()
    assert f"avatar: {out}" in capsys.readouterr().out
    # A second run into the same directory must not clobber it.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_train_refuses_what_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--recipe", "smoke_cpu"]) == 2
    assert "not a nerf_talk dataset" in capsys.readouterr().err


def test_recipe_names_resolve_and_unknown_ones_are_refused():
    assert resolve_recipe("head").name == "head.toml"
    assert resolve_recipe("recipes/torso.toml").name == "torso.toml"
    from nerf_talk.errors import UserError

    with pytest.raises(UserError, match="smoke_cpu"):
        resolve_recipe("nonexistent")


# -- fit / render / export ----------------------------------------------------------------------------------------
from test_fit_render import STEPS, fitted, speech, synthetic_dataset, tiny_motion_model  # noqa: E402


@pytest.fixture(scope="module")
def fit_result(tmp_path_factory):
    return fitted(tmp_path_factory)


def test_fit_from_a_dataset_resumes_and_writes_one_file(tmp_path, capsys, monkeypatch):
    import nerf_talk.motion

    monkeypatch.setattr(nerf_talk.motion, "load_default_model", lambda device="cpu": tiny_motion_model())
    ds = synthetic_dataset(tmp_path / "ds")
    out = tmp_path / "me.avatar"
    argv = ["fit", "--dataset", str(ds.root), "-o", str(out), "--recipe", "smoke_cpu"]
    for s in STEPS[:1] + ["stages.0.steps=10", "stages.1.steps=2", "stages.2.steps=4", "stop_at_step=6"]:
        argv += ["--set", s]
    assert main(argv) == 2  # stopped before the end, as an interrupted run would
    assert "run the same command again" in capsys.readouterr().err and not out.exists()
    assert main(argv[:-2] + ["--set", "stop_at_step=0"]) == 0
    text = capsys.readouterr().out
    assert f"avatar: {out}" in text and out.is_file()
    assert main(["fit", "-o", str(out)]) == 2  # neither video nor dataset
    assert main(["fit", "--dataset", str(ds.root), "-o", str(tmp_path / "me.mp4")]) == 2


def test_render_audio_file_and_text(fit_result, tmp_path, capsys):
    from nerf_talk import media

    wav = tmp_path / "speech.wav"
    media.write_wav(wav, speech("Hi there.", pad_s=0.2, rate=48000), 48000)
    out = tmp_path / "a.mp4"
    assert main(["render", str(fit_result["avatar"]), "--audio", str(wav), "-o", str(out), "--still"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "frames per second" in text
    assert main(["render", str(fit_result["avatar"]), "--text", "Yes.", "-o", str(tmp_path / "b.mp4")]) == 0
    assert (tmp_path / "b.mp4").is_file()
    assert main(["render", str(fit_result["avatar"]), "-o", str(tmp_path / "c.mp4")]) == 2  # no speech given


def test_render_refuses_a_damaged_avatar(fit_result, tmp_path, capsys):
    data = bytearray(fit_result["avatar"].read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "bad.avatar"
    bad.write_bytes(bytes(data))
    assert main(["render", str(bad), "--text", "Hello.", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_export_from_a_training_directory(fit_result, tmp_path, capsys, monkeypatch):
    import nerf_talk.motion

    monkeypatch.setattr(nerf_talk.motion, "load_default_model", lambda device="cpu": fit_result["motion_model"])
    out = tmp_path / "exported.avatar"
    assert main(["export", str(fit_result["train_dir"]), "-o", str(out)]) == 0
    assert out.is_file() and f"avatar: {out}" in capsys.readouterr().out
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "y.avatar")]) == 2


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_render_leaves_no_file_and_offers_no_resume(fit_result, tmp_path, sig, code):
    import signal
    import subprocess
    import sys
    import time

    from nerf_talk.media import TEMP_MARK

    out = tmp_path / "long.mp4"
    text = "This sentence is long enough that the render is still writing frames when the signal comes. " * 3
    # As from a terminal: SIGINT at its default even when the suite runs as a background job (which inherits
    # SIG_IGN for it, and Python then leaves Ctrl-C ignored, as POSIX asks of background jobs).
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from nerf_talk.cli import main; sys.exit(main())",
                             "render", str(fit_result["avatar"]), "--text", text, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while not list(tmp_path.glob(f".*{TEMP_MARK}*")):  # the video is being written
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 120, "the render did not start"
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert "resume" not in err and "no partial file is left" in err
    assert list(tmp_path.iterdir()) == []

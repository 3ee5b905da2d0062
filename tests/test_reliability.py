"""Faults a careful user meets (issue 15): signals, torn logs, damaged checkpoints, full disks, temporary files, the
umask, failed first runs, paths that cannot be written, concurrent runs. See docs/RELIABILITY.md.

Synthetic data only (a 16-frame, 32 px dataset); the signal tests run the real command in a subprocess, bounded in
time."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nerf_talk import media
from nerf_talk.cli import main
from nerf_talk.errors import Interrupted, UserError
from nerf_talk.train import checkpoint as ck
from nerf_talk.train import train
from nerf_talk.train.trainer import read_log

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "recipes/smoke_cpu.toml"
TINY = ["data.scale=1.0", "log_every=1", "data.rays_per_step=64"]
SIGNAL_TIMEOUT_S = 120  # start (imports, data) + a few steps + the save, on a loaded 2-core machine


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nerf_talk.train.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_frames=16, size=32).root


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{media.TEMP_MARK}*")) + sorted(folder.rglob("*.partial"))


# -- 5: signals during training ------------------------------------------------------------------------------------
def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from nerf_talk.cli import main; sys.exit(main())", *argv]


def _train_argv(dataset: Path, out: Path) -> list[str]:
    argv = ["train", str(dataset), "-o", str(out), "--recipe", "smoke_cpu"]
    for s in TINY + ["stages.0.steps=100000", "checkpoint_every=100000"]:  # never ends nor saves by itself
        argv += ["--set", s]
    return argv


def _wait_for_steps(proc: subprocess.Popen, log_path: Path) -> None:
    t0 = time.monotonic()
    while not (log_path.exists() and log_path.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < SIGNAL_TIMEOUT_S, "training did not start"
        time.sleep(0.2)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_training_with_a_checkpoint_and_a_failing_exit(dataset, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(*_train_argv(dataset, out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        _wait_for_steps(proc, out / "train_log.jsonl")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=SIGNAL_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    step = ck.load_state(out / "checkpoints" / "last")["step"]
    assert step >= 2
    assert f"stopped at step {step}" in stderr and "--resume" in stderr
    assert "avatar:" not in stdout and not (out / "avatar.json").exists() and not temps(out)


def test_ctrl_c_stops_train_and_export_chain(dataset, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground group: here a shell running `train && export`."""
    out, went_on = tmp_path / "run", tmp_path / "went_on"
    cmd = " ".join(f"'{a}'" for a in _cli(*_train_argv(dataset, out))) + f" && touch '{went_on}'"
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_steps(proc, out / "train_log.jsonl")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=SIGNAL_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and not went_on.exists()
    assert (out / "checkpoints" / "last" / "state.json").exists()


# -- 3: torn logs, damaged checkpoints -----------------------------------------------------------------------------
def _stopped_run(dataset, out: Path, steps: int = 6, stop: int = 3) -> Path:
    return train(dataset, out, SMOKE, TINY + [f"stages.0.steps={steps}", "stages.1.steps=0", "stages.2.steps=0",
                                              f"stop_at_step={stop}", "checkpoint_every=100"])


def test_a_torn_log_line_is_dropped_and_training_finishes(dataset, tmp_path, caplog):
    out = _stopped_run(dataset, tmp_path / "run")
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "stage": "he')  # killed in the middle of a write
    train(dataset, out, None, ["stop_at_step=0"], resume=True)
    assert (out / "metrics.json").exists()
    assert "torn last line" in caplog.text
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))  # every line parses
    # A log damaged in another way is still read, its bad lines skipped.
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"st\n{"step": 2}\n[1]\n')
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")] == [1, 2]


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated copy, a disk that filled up


@pytest.mark.parametrize("name", ["state.json", "model.safetensors", "optimizer.pt", "rng.safetensors"])
def test_a_damaged_checkpoint_file_is_named_with_the_way_out(dataset, tmp_path, capsys, name):
    out = _stopped_run(dataset, tmp_path / "run")
    _corrupt(out / "checkpoints" / "last" / name)
    argv = ["train", str(dataset), "-o", str(out), "--resume", "--set", "stop_at_step=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoints' / 'last' / name} is damaged" in err and "start again" in err
    assert "Traceback" not in err
    # With the previous checkpoint still there (a save interrupted between its renames), that is the way out.
    ck.save_checkpoint(tmp_path / "ck", torch.nn.Linear(1, 1), None, {"x": torch.zeros(1)},
                       {"step": 1, "opt_stage": -1, "config": {}})
    os.replace(tmp_path / "ck" / "last", tmp_path / "ck" / ".last.old")
    (tmp_path / "ck" / "last").mkdir()
    (tmp_path / "ck" / "last" / "state.json").write_text("{")
    with pytest.raises(UserError, match=r"damaged.*\n.*previous checkpoint .*\.last\.old"):
        ck.load_state(tmp_path / "ck" / "last")


# -- 6 and 9: full disk, temporary files ---------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/checkpoints/.last.partial/optimizer.pt")


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(dataset, tmp_path, capsys, monkeypatch):
    out = _stopped_run(dataset, tmp_path / "run")
    before = (out / "checkpoints" / "last" / "model.safetensors").read_bytes()
    monkeypatch.setattr(ck.torch, "save", _enospc)
    argv = ["train", str(dataset), "-o", str(out), "--resume", "--set", "stop_at_step=5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err[err.index("error:"):].splitlines() == [
        "error: No space left on device: /data/run/checkpoints/.last.partial/optimizer.pt",
        "  -> free some disk space (or write to another disk) and run the same command again"], err
    assert not (out / "checkpoints" / ".last.partial").exists() and not temps(out)
    assert (out / "checkpoints" / "last" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("fault", [KeyboardInterrupt, Interrupted(signal.SIGTERM), OSError(errno.ENOSPC, "full")])
def test_a_failed_video_write_leaves_no_temporary_file(tmp_path, fault):
    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise fault

    with pytest.raises(fault if isinstance(fault, type) else type(fault)):
        media.write_video(tmp_path / "out.mp4", frames(), 25)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_dead_runs_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out{media.TEMP_MARK}{dead.pid}-0a1b2c3d.mp4"
    alive = tmp_path / f".out{media.TEMP_MARK}{os.getppid()}-0a1b2c3d.mp4"  # a run still writing
    stale.write_bytes(b"x" * 1000)
    alive.write_bytes(b"x")
    media.write_atomic(tmp_path / "other.txt", lambda p: p.write_text("hello"))
    assert not stale.exists() and alive.exists() and (tmp_path / "other.txt").read_text() == "hello"


# -- 7: the umask --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    from safetensors.torch import save_file

    from preprocess.dataset import Dataset

    old = os.umask(umask)
    try:
        media.write_video(tmp_path / "v.mp4", [np.zeros((16, 16, 3), np.uint8)] * 2, 25)
        media.write_wav(tmp_path / "a.wav", np.zeros(160, np.float32))
        ds = Dataset(tmp_path / "ds")
        ds.root.mkdir()
        ds.save_array("x", np.zeros(3))
        ds.write_image("b.png", np.zeros((4, 4, 3), np.uint8))
        # safetensors writes its own 0600 file (the avatar, the trained weights)
        media.write_atomic(tmp_path / "w.avatar", lambda p: save_file({"a": torch.zeros(2)}, str(p)))
    finally:
        os.umask(old)
    for p in (tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "ds" / "x.npy", tmp_path / "ds" / "b.png",
              tmp_path / "w.avatar"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


# -- 9: what is checked before the work -----------------------------------------------------------------------------
def test_output_paths_that_cannot_be_written_are_refused_first(dataset, tmp_path, capsys):
    from support import shared_file

    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, says in [
        (["train", str(dataset), "-o", str(afile / "run"), "--recipe", "smoke_cpu"], "is a file, not a folder"),
        (["preprocess", str(shared_file("video/obama_450_20s.mp4")), "-o", str(afile / "ds")], "is a file, not a"),
        (["fit", "--dataset", str(dataset), "-o", str(afile / "me.avatar")], "is a file, not a folder"),
        (["fit", "--dataset", str(dataset), "-o", str(tmp_path)], "NAME.avatar"),
        (["render", "x.avatar", "--text", "hi", "-o", str(tmp_path)], "is a directory"),
        (["render", "x.avatar", "--text", "hi", "-o", str(afile / "x.mp4")], "is a file, not a folder"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (argv, err)
    assert afile.read_text() == "x"


def test_read_only_folders_are_refused_first(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere: stand in for the kernel's answer to a normal user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    with pytest.raises(UserError, match="not writable"):
        media.check_output_file(ro / "sub" / "out.mp4")


@pytest.mark.parametrize("size", ["0", "-5", "65", "4000"])
def test_render_size_out_of_range_is_refused_first(tmp_path, capsys, size):
    assert main(["render", str(tmp_path / "none.avatar"), "--text", "hi", "-o", str(tmp_path / "o.mp4"),
                 "--size", size]) == 2
    err = capsys.readouterr().err
    assert f"--size {size}" in err and "even number of pixels from 32 to 2048" in err


@pytest.mark.parametrize("size", ["0", "-5", "65", "4000"])
def test_preprocess_size_out_of_range_is_refused_first(tmp_path, capsys, size):
    from support import shared_file

    video = shared_file("video/obama_450_20s.mp4")
    assert main(["preprocess", str(video), "-o", str(tmp_path / "ds"), "--size", size]) == 2
    assert "128 to 2048 pixels" in capsys.readouterr().err and not (tmp_path / "ds").exists()


def test_concurrent_preprocess_runs_are_refused_and_stale_locks_taken_over(tmp_path, capsys, caplog):
    from nerf_talk import lockfile
    from preprocess.pipeline import LOCK

    out = tmp_path / "ds"
    out.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01 10:00:00 +0000"}
    (out / LOCK).write_text(json.dumps(holder))
    from support import shared_file

    video = shared_file("video/obama_450_20s.mp4")
    assert main(["preprocess", str(video), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getppid()} on {socket.gethostname()}, started 2026-01-01 10:00:00" in err
    assert "delete the lock file" in err and not (out / "manifest.json").exists()
    # A lock of a process that is gone is taken over, and released at the end.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps(dict(holder, pid=dead.pid)))
    with lockfile.hold(out / LOCK, "it"):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # a second holder is refused
            with lockfile.hold(out / LOCK, "it"):
                pass
    assert "stale lock" in caplog.text and not (out / LOCK).exists()


# -- 8: a failed first preprocess does not block the retry ---------------------------------------------------------
def _noface_clip(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    frames = (rng.random((1, 64, 64, 3)) * 255).astype(np.uint8).repeat(150, 0)
    media.write_video(path, [np.kron(f, np.ones((4, 4, 1), np.uint8)) for f in frames], 25,
                      audio=np.zeros(16000 * 6, np.float32))
    return path


def test_a_failed_first_preprocess_does_not_block_the_retry(tmp_path, capsys):
    out = tmp_path / "ds"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert main(["preprocess", str(empty), "-o", str(out)]) == 2
    assert not out.exists()  # validated before the folder was touched
    # A video that passes the file checks but fails in ingest leaves an unfinished dataset; another video may use it.
    assert main(["preprocess", str(_noface_clip(tmp_path / "a.mp4", 1)), "-o", str(out)]) == 2
    assert "no face" in capsys.readouterr().err and (out / "manifest.json").exists()
    assert main(["preprocess", str(_noface_clip(tmp_path / "b.mp4", 2)), "-o", str(out), "--size", "256"]) == 2
    err = capsys.readouterr().err
    assert "no face" in err and "another video" not in err
    assert json.loads((out / "manifest.json").read_text())["source"]["path"].endswith("b.mp4")
    assert not temps(out) and not any(out.glob(".*lock"))


# -- 10: the avatar path --------------------------------------------------------------------------------------------
def test_a_directory_or_fifo_given_as_the_avatar_is_named_as_such(tmp_path, capsys):
    fifo = tmp_path / "pipe.avatar"
    os.mkfifo(fifo)
    for path, says in [(tmp_path, "is a directory"), (fifo, "not a regular file"), (tmp_path / "no.avatar",
                                                                                   "not found")]:
        assert main(["render", str(path), "--text", "hi", "-o", str(tmp_path / "o.mp4")]) == 2
        assert says in capsys.readouterr().err

"""preprocess.parallel: segments, the helper process, work sent ahead, CPU accounting, and the one-core fallbacks."""

from __future__ import annotations

import logging

import pytest

from preprocess import parallel


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    # Each test starts with a usable helper and two workers, whatever the machine or an earlier test did.
    monkeypatch.setattr(parallel, "_broken", False)
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 500])
def test_segments_cover_the_clip_in_order(n):
    segs = parallel.segments(n)
    assert [i for a, b in segs for i in range(a, b)] == list(range(n))
    if n >= 2:
        assert len(segs) == parallel.SEGMENTS and abs((segs[0][1] - segs[0][0]) - (segs[1][1] - segs[1][0])) <= 1


def test_map_segments_runs_the_second_job_in_the_helper_and_counts_its_cpu():
    # The function must be importable by name in the helper: parallel.segments itself serves.
    before = parallel.helper_cpu_seconds()
    out = parallel.map_segments(parallel.segments, [(10, 2), (7, 3)])
    assert out == [parallel.segments(10, 2), parallel.segments(7, 3)]
    assert parallel.helper_cpu_seconds() > before  # the helper reported its time (its start-up at least)
    assert parallel.reported_cpu_seconds() == pytest.approx(0.0, abs=1e-9)  # exited: now in RUSAGE_CHILDREN


def test_an_error_in_the_helper_is_raised_here():
    with pytest.raises(ValueError, match="invalid literal"):
        parallel.map_segments(int, [("1",), ("not a number",)])


def test_one_worker_runs_everything_here(monkeypatch):
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    started = []
    monkeypatch.setattr(parallel, "_Helper", lambda: started.append(1))
    assert parallel.map_segments(int, [("1",), ("2",)]) == [1, 2]
    assert not started


def test_work_sent_ahead_is_taken_in_a_session():
    with parallel.session():
        assert parallel.take_ahead("nothing") is None
        assert parallel.submit_ahead("k", parallel.segments, (9, 3))
        # A map in between would drop it: take it first, as the steps do.
        assert parallel.take_ahead("k") == parallel.segments(9, 3)
        assert parallel.map_segments(int, [("3",), ("4",)]) == [3, 4]  # the same helper serves on


def test_a_dead_helper_falls_back_to_this_process(caplog):
    with parallel.session():
        parallel.prestart()
        parallel._session.proc.kill()
        parallel._session.proc.wait()
        with caplog.at_level(logging.WARNING, logger="nerf_talk.preprocess"):
            assert parallel.map_segments(int, [("5",), ("6",)]) == [5, 6]
        assert "one core" in caplog.text
        assert parallel.submit_ahead("k", int, ("7",)) is False  # no helper any more: the step computes itself


def test_the_dataset_is_the_same_on_one_core_and_two(tmp_path, monkeypatch):
    """Fixed segments: one worker runs them one after another and must write the same files as two workers."""
    import filecmp

    import numpy as np

    from nerf_talk.sample_clip import make_sample_clip
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    clip = make_sample_clip(tmp_path / "clip", seconds=6.0)
    out = {}
    for workers in ("2", "1"):
        monkeypatch.setenv(parallel.WORKERS_ENV, workers)
        out[workers] = pipeline.run(clip.video, tmp_path / f"ds{workers}", PreprocessConfig(size=256))
    two, one = out["2"], out["1"]
    assert two.manifest["steps"]["parsing"]["helper_cpu_seconds"] > 0  # the helper did work with two
    assert "helper_cpu_seconds" not in one.manifest["steps"]["parsing"] or \
        one.manifest["steps"]["parsing"]["helper_cpu_seconds"] == 0
    for name in ("landmarks_3d", "poses", "mouth_opening", "audio_ppg"):
        assert np.array_equal(two.load_array(name), one.load_array(name)), name
    for d in ("parsing", "torso"):
        names = sorted(p.name for p in two.path(d).iterdir())
        assert names and all(filecmp.cmp(two.path(d) / f, one.path(d) / f, shallow=False) for f in names), d
    assert filecmp.cmp(two.path("background.png"), one.path("background.png"), shallow=False)

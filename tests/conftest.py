"""Shared fixtures: datasets of the shared clips, built once per session."""

from __future__ import annotations

import os

import pytest

from support import CLIPS, shared_file

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's native logging


@pytest.fixture(scope="session")
def shared_clip():
    return lambda name: (shared_file(CLIPS[name][0]), shared_file(CLIPS[name][1]) if CLIPS[name][1] else None)


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, shared_clip):
    """preprocessed(name) -> Dataset of a shared clip run through the whole pipeline, built once per session."""
    from preprocess import pipeline
    from preprocess.config import PreprocessConfig

    built = {}

    def get(name: str):
        if name not in built:
            video, audio = shared_clip(name)
            out = tmp_path_factory.mktemp(f"ds_{name}") / "dataset"
            cfg = PreprocessConfig(audio=str(audio) if audio else None)
            built[name] = pipeline.run(video, out, cfg)
        return built[name]

    return get

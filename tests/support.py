"""Helpers for tests: the shared test media (skipped with a reason when absent) and ffmpeg for synthetic variants."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = {
    "obama": ("video/obama_450_20s.mp4", None),
    "lieu": ("video/lieu_256_60s.mp4", None),
    "reagan": ("video/reagan_256_26s_silent.mp4", "video/reagan_256_26s.wav"),
}


def shared_file(rel: str) -> Path:
    """A file of the shared test media, or skip the test saying what is missing."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared test media not found: {p} (the tests that need real clips run where ../shared/data exists)")
    return p


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg CLI (installed by scripts/install.sh) to make synthetic variants of clips inside tests."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg CLI not installed (scripts/install.sh installs it)")
    r = subprocess.run([exe, "-y", "-hide_banner", "-loglevel", "error", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {r.stderr}")

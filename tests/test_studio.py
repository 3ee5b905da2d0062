"""The studio's HTTP API (`nerf-talk serve --data DIR`) with aiohttp's client against a real server: uploads (size and
type limits, generated names, the command line's errors for bad files), the job queue (one at a time, queued jobs
shown as such, cancel, a restart that resumes a fit from its checkpoint), renders and evaluations, and the files a
job may serve. Fits use a synthetic 48 px dataset and the smoke recipe cut short (as tests/test_fit_render.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from nerf_talk import media
from nerf_talk.serve import ServeConfig, start_in_thread
from support import ffmpeg, shared_file
from test_fit_render import STEPS, synthetic_dataset

CLIP = "video/obama_450_20s.mp4"
LIMIT = 4 * 2**20
# Long enough to be caught running, short enough for a test: 48 px frames, 80 + 6 + 30 steps, a checkpoint every 10.
FIT = [s for s in STEPS if not s.startswith("checkpoint")] + ["checkpoint_every=10"]


def run(coro, timeout: float = 300):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def cli_error(capsys, *argv) -> tuple[str, str]:
    """(problem, hint) the command line prints for `argv`."""
    from nerf_talk.cli import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    problem = next(line[len("error: "):] for line in err if line.startswith("error: "))
    hint = next((line.strip()[3:] for line in err if line.strip().startswith("-> ")), "")
    return problem, hint


async def post(s, url, **kw) -> tuple[int, dict]:
    async with s.post(url, **kw) as r:
        return r.status, await r.json(content_type=None)


async def get(s, url) -> dict:
    async with s.get(url) as r:
        assert r.status == 200, (url, r.status)
        return await r.json()


async def wait_job(s, srv, job_id: str, until, timeout: float = 240) -> dict:
    t0 = time.monotonic()
    while True:
        j = await get(s, f"{srv.url}/api/jobs/{job_id}")
        if until(j):
            return j
        assert time.monotonic() - t0 < timeout, j
        await asyncio.sleep(0.3)


def finished_dataset(root: Path, name: str) -> Path:
    """A synthetic dataset in the data folder, as a preprocess job leaves it (the studio lists a dataset once its
    report is written; the synthetic one has none of its own)."""
    ds = synthetic_dataset(root / "datasets" / name)
    (ds.root / "report").mkdir()
    (ds.root / "report" / "index.html").write_text("<p>synthetic</p>")
    return ds.root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("studio")
    finished_dataset(d, "d-000000000001")
    return d


def test_uploads_are_checked_named_and_limited(tmp_path, capsys, data):
    clip = shared_file(CLIP)
    short = tmp_path / "short.mp4"
    ffmpeg("-i", str(clip), "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", str(short))
    text = tmp_path / "notes.mp4"  # (named .txt, ffmpeg would read it as a 0.2 s "tty" video: by its extension)
    text.write_bytes(b"these are my notes, not a video\n" * 40)
    srv = start_in_thread(ServeConfig(data_dir=data, port=0, max_upload_bytes=LIMIT))

    async def go():
        async with aiohttp.ClientSession() as s:
            url = f"{srv.url}/api/uploads"
            # A text file, a 2 s clip: the command line's problem and hint (the label in place of the path).
            code, j = await post(s, f"{url}?kind=video&name=notes.mp4", data=text.read_bytes())
            problem, hint = cli_error(capsys, "preprocess", text, "-o", tmp_path / "ds1")
            assert code == 400 and j == {"problem": problem.replace(str(text), "notes.mp4"), "hint": hint}, j
            code, j = await post(s, f"{url}?kind=video&name=short.mp4", data=short.read_bytes())
            problem, hint = cli_error(capsys, "preprocess", short, "-o", tmp_path / "ds2")
            assert code == 400 and j == {"problem": problem, "hint": hint} and "2.0 s long" in problem, j
            # Over the size limit (declared, and streamed without a length): refused, nothing kept.
            code, j = await post(s, f"{url}?kind=video", data=b"\0" * (LIMIT + 1))
            assert code == 413 and "over the 4 MB limit" in j["problem"], j

            async def chunks():
                for _ in range(5):
                    yield b"\0" * (LIMIT // 4)

            code, j = await post(s, f"{url}?kind=video", data=chunks())
            assert code == 413 and "over the 4 MB limit" in j["problem"], j
            code, j = await post(s, f"{url}?kind=script", data=b"x")
            assert code == 400 and "unknown upload kind" in j["problem"]
            # Another site's page may not upload (nor start jobs).
            code, _ = await post(s, f"{url}?kind=video", data=b"x", headers={"Origin": "http://evil.example"})
            assert code == 403
            code, _ = await post(s, f"{srv.url}/api/jobs", json={"kind": "eval"},
                                 headers={"Origin": "http://evil.example"})
            assert code == 403
            # A good clip: stored under a generated name; the client's name is a label only.
            code, up = await post(s, f"{url}?kind=video&name=../../etc/passwd%00.mp4", data=clip.read_bytes())
            assert code == 200 and up["duration"] == pytest.approx(20.0, abs=0.1), up
            assert up["id"].startswith("u-") and "/" not in up["label"] and "\0" not in up["label"]
            info = await get(s, f"{srv.url}/api/studio")
            assert [u["id"] for u in info["uploads"]] == [up["id"]]
            assert "en-us" in [v["id"] for v in info["voices"]] and "smoke_cpu" in info["recipes"]
            # The files route serves job outputs only: not uploads, not the job records, nothing outside.
            for path in [f"uploads/{up['id']}", "jobs", "../etc/passwd", "datasets/d-000000000001/manifest.json",
                         "%2e%2e/%2e%2e/etc/passwd"]:
                async with s.get(f"{srv.url}/studio/files/{path}") as r:
                    assert r.status == 404, path
            async with s.get(f"{srv.url}/studio") as r:
                assert r.status == 200 and "nerf_talk studio" in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    try:
        run(go())
    finally:
        srv.stop()
    assert sorted(p.name for p in (data / "uploads").iterdir()) == sorted([up_name(data), up_name(data) + ".json"])


def up_name(data: Path) -> str:
    return next(p.name for p in (data / "uploads").iterdir() if not p.name.endswith(".json"))


def test_a_video_without_a_face_fails_its_job_with_the_cli_error(tmp_path, capsys, data):
    rng = np.random.default_rng(1)
    frames = [np.kron((rng.random((64, 64, 3)) * 255).astype(np.uint8), np.ones((4, 4, 1), np.uint8))] * 150
    clip = tmp_path / "noface.mp4"
    media.write_video(clip, frames, 25, audio=np.zeros(16000 * 6, np.float32))
    problem, hint = cli_error(capsys, "preprocess", clip, "-o", tmp_path / "ds")
    srv = start_in_thread(ServeConfig(data_dir=data, port=0, max_upload_bytes=LIMIT))

    async def go():
        async with aiohttp.ClientSession() as s:
            code, up = await post(s, f"{srv.url}/api/uploads?kind=video&name=noface.mp4", data=clip.read_bytes())
            assert code == 200, up  # readable, long enough, has sound: the face is looked for by the job
            code, job = await post(s, f"{srv.url}/api/jobs", json={"kind": "preprocess", "video": up["id"],
                                                                   "size": 128})
            assert code == 200 and job["state"] == "queued", job
            j = await wait_job(s, srv, job["id"], lambda j: j["state"] not in ("queued", "running"))
            assert j["state"] == "failed" and j["error"] == {"problem": problem, "hint": hint}, j
            assert "no face" in problem
    try:
        run(go())
    finally:
        srv.stop()


def test_queue_cancel_and_resume_after_a_restart(data):
    cfg = dict(data_dir=data, port=0, fit_overrides=FIT)
    srv = start_in_thread(ServeConfig(**cfg))
    fit = {"kind": "fit", "dataset": "d-000000000001", "recipe": "smoke_cpu"}

    async def first():
        async with aiohttp.ClientSession() as s:
            bad = [({"kind": "fit", "dataset": "d-000000000001", "recipe": "smoke_cpu", "name": "../x"}, "bad avatar"),
                   ({"kind": "fit", "dataset": "d-00000000000f", "recipe": "smoke_cpu", "name": "x"}, "no finished"),
                   ({"kind": "fit", "dataset": "d-000000000001", "recipe": "../x", "name": "x"}, "unknown recipe"),
                   ({"kind": "render", "avatar": "nobody", "text": "hi"}, "no avatar named"),
                   ({"kind": "dance"}, "unknown job kind"), ([1], "JSON object")]
            for spec, expect in bad:
                code, j = await post(s, f"{srv.url}/api/jobs", json=spec)
                assert code == 400 and expect in j["problem"], (spec, j)
            _, a = await post(s, f"{srv.url}/api/jobs", json=fit | {"name": "alice"})
            _, b = await post(s, f"{srv.url}/api/jobs", json=fit | {"name": "bob"})
            code, j = await post(s, f"{srv.url}/api/jobs", json=fit | {"name": "alice"})
            assert code == 400 and "already fitting 'alice'" in j["problem"]
            assert b["state"] == "queued" and b["position"] >= 1
            b = (await post(s, f"{srv.url}/api/jobs/{b['id']}/cancel"))[1]
            assert b["state"] == "cancelled"
            # Alice's fit trains: its progress and loss/PSNR curve are reported; then the server stops.
            j = await wait_job(s, srv, a["id"], lambda j: len(j.get("curve") or []) >= 2 and j["state"] == "running")
            assert j["progress"]["stage"] == "train" and j["progress"]["bar"]["total"] > 0
            assert all(len(p) == 3 and p[2] > 0 for p in j["curve"])
            return a["id"], b["id"]

    try:
        a, b = run(first())
    finally:
        srv.stop()
    rec = json.loads((data / "jobs" / a / "job.json").read_text())
    assert rec["state"] == "queued" and "resumes" in rec["note"]
    assert list((data / "avatars" / "alice.avatar.work" / "train" / "checkpoints").iterdir())

    srv = start_in_thread(ServeConfig(**cfg))

    async def second():
        async with aiohttp.ClientSession() as s:
            jobs = {j["id"]: j for j in (await get(s, f"{srv.url}/api/jobs"))["jobs"]}
            assert jobs[b]["state"] == "cancelled" and jobs[a]["state"] in ("queued", "running")
            j = await wait_job(s, srv, a, lambda j: j["state"] not in ("queued", "running"))
            assert j["state"] == "done" and j["outputs"] == {"avatar": "alice"}, j
            info = await get(s, f"{srv.url}/api/studio")
            assert [x["name"] for x in info["avatars"]] == ["alice"]
            assert info["avatars"][0]["dataset"] == "d-000000000001"
            # Cancel a running fit: it stops as on Ctrl-C and keeps its checkpoint.
            _, c = await post(s, f"{srv.url}/api/jobs", json=fit | {"name": "carol"})
            await wait_job(s, srv, c["id"], lambda j: len(j.get("curve") or []) >= 1)
            code, j = await post(s, f"{srv.url}/api/jobs/{c['id']}/cancel")
            assert code == 200 and j["state"] == "cancelling"
            j = await wait_job(s, srv, c["id"], lambda j: j["state"] not in ("running", "cancelling"), 90)
            assert j["state"] == "cancelled" and "checkpoint" in j["note"], j
            code, j = await post(s, f"{srv.url}/api/jobs/{c['id']}/cancel")
            assert code == 409 and "nothing to cancel" in j["problem"]
    try:
        run(second())
    finally:
        srv.stop()
    log = (data / "jobs" / a / "worker.log").read_text()
    assert "resuming training 'train'" in log  # the fit went on from its checkpoint, as `nerf-talk fit` does
    assert not (data / "avatars" / "carol.avatar").exists()
    assert list((data / "avatars" / "carol.avatar.work" / "train" / "checkpoints").iterdir())


def test_render_and_eval_jobs(data, tmp_path):
    if not (data / "avatars" / "alice.avatar").is_file():
        pytest.skip("needs the avatar fitted by test_queue_cancel_and_resume_after_a_restart")
    from test_fit_render import speech

    wav = tmp_path / "speech.wav"
    media.write_wav(wav, speech("Papa bought a map.", pad_s=0.3), 16000)
    srv = start_in_thread(ServeConfig(data_dir=data, port=0))

    async def go():
        async with aiohttp.ClientSession() as s:
            code, j = await post(s, f"{srv.url}/api/jobs", json={"kind": "render", "avatar": "alice", "text": "hi",
                                                                 "voice": "xx-nonsense"})
            assert code == 400 and "no voice" in j["problem"]
            code, j = await post(s, f"{srv.url}/api/jobs", json={"kind": "render", "avatar": "alice", "text": "hi",
                                                                 "size": 33})
            assert code == 400 and "bad size" in j["problem"]
            _, t = await post(s, f"{srv.url}/api/jobs", json={"kind": "render", "avatar": "alice", "pose": "still",
                                                              "text": "Hello there.", "voice": "en"})
            code, up = await post(s, f"{srv.url}/api/uploads?kind=audio&name=speech.wav", data=wav.read_bytes())
            assert code == 200, up
            _, f = await post(s, f"{srv.url}/api/jobs", json={"kind": "render", "avatar": "alice", "speech": up["id"],
                                                              "size": 64})
            _, e = await post(s, f"{srv.url}/api/jobs", json={"kind": "eval", "avatar": "alice",
                                                              "dataset": "d-000000000001"})
            out = []
            for job in (t, f, e):
                j = await wait_job(s, srv, job["id"], lambda j: j["state"] not in ("queued", "running"))
                assert j["state"] == "done", j
                out.append(j)
            videos = []
            for j in out[:2]:
                async with s.get(srv.url + j["files"]["video"]) as r:
                    assert r.status == 200 and r.content_type == "video/mp4"
                    videos.append(await r.read())
            async with s.get(srv.url + out[2]["files"]["eval.json"]) as r:
                figures = json.loads(await r.read())
            return out, videos, figures

    try:
        out, videos, figures = run(go())
    finally:
        srv.stop()
    for job, blob, height in zip(out, videos, (48, 64)):
        p = tmp_path / f"{job['id']}.mp4"
        p.write_bytes(blob)
        with av.open(str(p)) as c:
            assert c.streams.video[0].height == height and c.streams.audio
        assert job["outputs"]["frames"] > 10
    assert "psnr" in json.dumps(figures) and out[2]["outputs"]["summary"]
    assert any(k.endswith(".png") for k in out[2]["files"])

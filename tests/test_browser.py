"""The live page in headless Chromium (Debian's `chromium`, driven by Playwright): a shared speech clip streamed from
a picked file and from the (fake) microphone; frames must arrive, change while speech plays, and the page must show
its measured latency and frame rate. Skips, saying why, without chromium, playwright or the shared clip."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from support import shared_file
from test_fit_render import fitted

CLIP = "speech/en_radio40_8s.wav"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("the chromium browser is not installed (scripts/install.sh installs Debian's `chromium` as root)")
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')")
    return exe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from nerf_talk.serve import ServeConfig, start_in_thread

    d = tmp_path_factory.mktemp("browser_avatars")
    shutil.copy(fitted(tmp_path_factory)["avatar"], d / "syn.avatar")
    srv = start_in_thread(ServeConfig(avatar_dir=d, port=0, preload=["syn"]))
    yield srv
    srv.stop()


async def wait_for(page, predicate: str, timeout: float) -> dict:
    """Poll window.liveStats until `predicate` (JS, over `s`) holds; returns the stats."""
    t0 = time.monotonic()
    while True:
        s = await page.evaluate("(() => { const s = window.liveStats; return {...s, log: undefined, "
                                f"ok: (s => {predicate})(s)}}; }})()")
        if s["ok"]:
            return s
        if s["errors"] or time.monotonic() - t0 > timeout:
            raise AssertionError(f"waiting for {predicate}: {s}")
        await asyncio.sleep(0.25)


async def wait_js(page, expression: str, timeout: float = 30) -> None:
    """Poll a JS expression until it is true. Not page.wait_for_function: that evaluates its predicate with eval,
    which the page's Content-Security-Policy (default-src 'self') forbids whenever it has to poll."""
    t0 = time.monotonic()
    while not await page.evaluate(expression):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        await asyncio.sleep(0.1)


def test_page_streams_a_file_and_the_microphone(server):
    exe = chromium()
    clip = shared_file(CLIP)
    from playwright.async_api import async_playwright

    async def go():
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=exe, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={clip}", "--autoplay-policy=no-user-gesture-required"])
            try:
                page = await browser.new_page()
                problems = []
                page.on("pageerror", lambda e: problems.append(str(e)))
                await page.goto(server.url + "/")
                await wait_js(page, "document.querySelector('#avatar').options.length > 0")
                assert await page.input_value("#avatar") == "syn"

                # A file that is not audio: the page says so, nothing is streamed.
                await page.set_input_files("#file", files=[{"name": "notes.wav", "mimeType": "audio/wav",
                                                            "buffer": b"this is not a recording" * 40}])
                await page.click("#play")
                await wait_js(page, "window.liveStats.state === 'failed'")
                assert "cannot decode notes.wav" in await page.inner_text("#status")
                await page.evaluate("window.liveStats.errors = []")

                # A picked file, played and streamed at real-time pace (8 s).
                await page.set_input_files("#file", str(clip))
                await page.click("#play")
                s = await wait_for(page, "s.ended", 60)
                log = await page.evaluate("window.liveStats.log")
                idx = [f["i"] for f in log]
                assert len(log) >= 15 and idx == sorted(idx), f"{len(log)} frames: {idx[:20]}"
                talking = [f for f in log if f["speech"]]
                assert len(talking) >= 5 and len({f["hash"] for f in talking}) >= 5, \
                    "the frames do not change while speech plays"
                assert s["latencyMs"] is not None and s["latencyMs"] > 0
                assert "ms" in await page.inner_text("#latency")
                assert (await page.inner_text("#fps")).strip().isdigit()
                assert "done:" in await page.inner_text("#status")

                # The microphone: Chromium's fake capture device plays the same clip (looped).
                await page.click("#mic")
                s = await wait_for(page, "s.frames >= 15 && s.distinct >= 5", 60)
                await page.click("#stop")
                s = await wait_for(page, "s.ended", 60)
                assert s["frames"] >= 15 and not s["errors"]
                assert not problems, problems
            finally:
                await browser.close()

    asyncio.run(go())


# -- the studio page (`nerf-talk serve --data DIR`) ----------------------------------------------------------------
STUDIO_CLIP = "video/obama_450_20s.mp4"
# The smoke recipe cut short (quality is not what is tested here): the whole flow takes a few minutes on 2 cores.
STUDIO_FIT = ["stages.0.steps=40", "stages.1.steps=4", "stages.2.steps=10", "checkpoint_every=20"]


async def studio_state(page, js: str):
    return await page.evaluate(f"(() => {{ const s = window.studio; return {js}; }})()")


async def wait_job_state(page, kind: str, states: tuple[str, ...], timeout: float) -> dict:
    """The newest job of `kind` once its state is one of `states` (read from the page's own job list)."""
    t0 = time.monotonic()
    while True:
        jobs = await studio_state(page, f"s.jobs.filter((j) => j.kind === {kind!r})")
        if jobs and jobs[-1]["state"] in states:
            return jobs[-1]
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"waiting for a {kind} job in {states}: {jobs[-1:] if jobs else 'none'}")
        await asyncio.sleep(0.5)


async def shot(page, name: str) -> None:
    """Screenshots for docs/figures, when STUDIO_SCREENSHOTS names a folder."""
    folder = os.environ.get("STUDIO_SCREENSHOTS")
    if folder:
        await page.screenshot(path=f"{folder}/{name}.png", full_page=True)


async def upload_refused(page, name: str, data: bytes) -> str:
    await page.evaluate("window.studio.errors = []")
    await page.set_input_files("#video-file", files=[{"name": name, "mimeType": "video/mp4", "buffer": data}])
    await page.click("#upload-video")
    await wait_js(page, "window.studio.errors.length > 0", 60)
    return await page.inner_text("#status")


def test_studio_page_from_video_to_rendered_speech(tmp_path):
    exe = chromium()
    clip = shared_file(STUDIO_CLIP)
    from support import ffmpeg

    short = tmp_path / "short.mp4"
    ffmpeg("-i", str(clip), "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", str(short))
    import numpy as np

    from nerf_talk import media

    blocks = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    noface = tmp_path / "noface.mp4"  # 6 s of coloured blocks with (silent) sound: readable, but nobody in it
    media.write_video(noface, [np.kron(blocks, np.ones((4, 4, 1), np.uint8))] * 150, 25,
                      audio=np.zeros(16000 * 6, np.float32))
    from nerf_talk.serve import ServeConfig, start_in_thread
    from playwright.async_api import async_playwright

    # The docs' screenshots show the full smoke recipe's avatar; the test alone cuts the fit short.
    fit = [] if os.environ.get("STUDIO_SCREENSHOTS") else STUDIO_FIT
    srv = start_in_thread(ServeConfig(data_dir=tmp_path / "data", port=0, fit_overrides=fit))

    async def go():
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=exe, args=["--autoplay-policy=no-user-gesture-required"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                problems = []
                page.on("pageerror", lambda e: problems.append(str(e)))
                await page.goto(srv.url + "/studio")
                await wait_js(page, "document.querySelector('#voice').options.length > 10")
                await shot(page, "studio_start")

                # Bad uploads: the command line's problem and hint, shown on the page.
                text = await upload_refused(page, "notes.mp4", b"these are my notes, not a video\n" * 40)
                assert "cannot read notes.mp4" in text and "-> the file is corrupt or not a media file" in text, text
                text = await upload_refused(page, "short.mp4", short.read_bytes())
                assert "the clip is 2.0 s long; at least 5 s are needed" in text and "-> use a longer video" in text
                await shot(page, "studio_bad_upload")
                # A video without a face is accepted; its preprocess job fails with the command line's error.
                await page.evaluate("window.studio.errors = []")
                await page.set_input_files("#video-file", str(noface))
                await page.click("#upload-video")
                await wait_js(page, "document.querySelector('#video-pick').value !== ''", 60)
                await page.click("#preprocess")
                job = await wait_job_state(page, "preprocess", ("done", "failed"), 120)
                assert job["state"] == "failed", job
                await wait_js(page, "!document.querySelector('#detail-error').hidden")
                text = await page.inner_text("#detail-error")
                assert text.startswith("no face found in 100% of the sampled frames") and "-> give a video" in text

                # Upload the clip and preprocess it at 128 px; reload the page while it runs. (The pick is cleared
                # first: it still holds the video above, and waiting for it to be non-empty raced the upload.)
                await page.evaluate("window.studio.errors = []; document.querySelector('#video-pick').value = ''")
                await page.set_input_files("#video-file", str(clip))
                await page.click("#upload-video")
                await wait_js(page, "document.querySelector('#video-pick').value !== ''", 60)
                await page.select_option("#crop", "128")
                await page.click("#preprocess")
                job = await wait_job_state(page, "preprocess", ("running", "queued"), 60)
                await page.reload()
                await wait_js(page, "window.studio.jobs.length > 0")
                assert await studio_state(page, "s.selected") == job["id"]  # the same job, still followed
                await wait_job_state(page, "preprocess", ("running", "done"), 5)
                await wait_js(page, "(j => j.state !== 'running' || (j.progress && j.progress.stage !== 'start'))"
                              "(window.studio.jobs[window.studio.jobs.length - 1])", 60)
                if os.environ.get("STUDIO_SCREENSHOTS"):  # the docs show it halfway, a step's bar moving
                    await wait_js(page, "(j => j.state !== 'running' || (j.progress && j.progress.fraction > 0.1 && "
                                  "j.progress.bar))(window.studio.jobs[window.studio.jobs.length - 1])", 120)
                await shot(page, "studio_preprocess_running")
                job = await wait_job_state(page, "preprocess", ("done", "failed"), 300)
                assert job["state"] == "done", job
                await wait_js(page, "document.querySelectorAll('#detail-images img').length === 5 && "
                              "[...document.querySelectorAll('#detail-images img')].every((i) => i.naturalWidth > 0)",
                              30)
                await shot(page, "studio_preprocess_report")

                # Fit with the smoke recipe; a second fit queued behind it is shown as queued, then cancelled.
                await wait_js(page, "document.querySelector('#fit-dataset').options.length === 1")
                await page.select_option("#recipe", "smoke_cpu")
                name = await page.input_value("#avatar-name")
                assert name.startswith("obama"), name
                await page.click("#fit")
                await wait_job_state(page, "fit", ("queued", "running"), 10)
                await page.fill("#avatar-name", "second")
                await page.click("#fit")
                second = await wait_job_state(page, "fit", ("queued",), 10)
                await wait_js(page, f"document.querySelector('li.job[data-id=\"{second['id']}\"] .state')"
                              ".textContent.startsWith('queued')")
                await page.click(f"li.job[data-id='{second['id']}']")
                await page.click("#detail-cancel")
                await wait_job_state(page, "fit", ("cancelled",), 10)
                first = (await studio_state(page, "s.jobs.filter((j) => j.kind === 'fit')"))[0]
                await page.click(f"li.job[data-id='{first['id']}']")
                await wait_js(page, "!document.querySelector('#curve').hidden", 300)
                if os.environ.get("STUDIO_SCREENSHOTS"):  # the docs show a fit with its first preview
                    await wait_js(page, "document.querySelector('#detail-images img.preview') !== null", 300)
                await shot(page, "studio_fit_running")
                t0 = time.monotonic()
                while (await studio_state(page, f"s.jobs.find((j) => j.id === {first['id']!r}).state")) != "done":
                    assert time.monotonic() - t0 < 600 and not await studio_state(
                        page, f"s.jobs.find((j) => j.id === {first['id']!r}).error")
                    await asyncio.sleep(1)
                await shot(page, "studio_fit_done")

                # Render a typed sentence and play the video in the page.
                await wait_js(page, f"document.querySelector('#render-avatar').value === {name!r}", 10)
                await page.fill("#text", "The studio page renders what I type.")
                await page.select_option("#size", "64")  # (the avatar's frames are 32 px; 64 keeps it quick)
                await page.click("#render")
                job = await wait_job_state(page, "render", ("done", "failed"), 600)
                assert job["state"] == "done", job
                await wait_js(page, "!document.querySelector('#detail-video').hidden")
                await page.evaluate("document.querySelector('#detail-video').play()")
                await wait_js(page, "document.querySelector('#detail-video').currentTime > 0.5", 30)
                size = await page.evaluate("[document.querySelector('#detail-video').videoWidth, "
                                           "document.querySelector('#detail-video').videoHeight]")
                assert size == [64, 64], size
                assert await page.get_attribute("#detail-download", "href") == job["files"]["video"]
                await shot(page, "studio_render")
                if os.environ.get("STUDIO_SCREENSHOTS"):  # the evaluation screen, for the docs only (its job is
                    await page.click("#eval")             # tested in test_studio.py)
                    job = await wait_job_state(page, "eval", ("done", "failed"), 600)
                    assert job["state"] == "done", job
                    await wait_js(page, "!document.querySelector('#detail-summary').hidden")
                    await shot(page, "studio_eval")

                # The live page shows the new avatar's still frame, size and frame rate before anything plays.
                await page.goto(srv.url + "/")
                await wait_js(page, "document.querySelector('#frame').naturalWidth > 0", 120)
                info = await page.inner_text("#avatar-info")
                assert info.startswith(name) and "fps" in info, info
                await shot(page, "live_still")
                assert not problems, problems
            finally:
                await browser.close()

    try:
        asyncio.run(go())
    finally:
        srv.stop()

"""The live page in headless Chromium (Debian's `chromium`, driven by Playwright): a shared speech clip streamed from
a picked file and from the (fake) microphone; frames must arrive, change while speech plays, and the page must show
its measured latency and frame rate. Skips, saying why, without chromium, playwright or the shared clip."""

from __future__ import annotations

import asyncio
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

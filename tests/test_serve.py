"""`nerf-talk serve`: the WebSocket protocol end to end, and bad clients (malformed messages, oversized messages,
missing / damaged / out-of-directory avatars, idle and vanishing clients) leaving the server serving others.

The avatar is the small fitted one of test_fit_render (48x48, tiny motion model): these tests check the server,
not the picture."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time

import aiohttp
import cv2
import numpy as np
import pytest

from nerf_talk.serve import ServeConfig, start_in_thread
from nerf_talk.serve.app import unpack_frame
from test_fit_render import fitted, speech

RATE = 22050  # not 16 kHz: the server resamples


@pytest.fixture(scope="module")
def avatar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("avatars")
    shutil.copy(fitted(tmp_path_factory)["avatar"], d / "syn.avatar")
    (d / "broken.avatar").write_bytes(b"not an avatar at all" * 10)
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.avatar"
    shutil.copy(d / "syn.avatar", outside)
    os.symlink(outside, d / "escape.avatar")  # a link out of the directory must not be followed
    return d


@pytest.fixture(scope="module")
def server(avatar_dir):
    srv = start_in_thread(ServeConfig(avatar_dir=avatar_dir, port=0, max_message_bytes=64 * 1024,
                                      idle_timeout_s=3.0, max_stream_s=30.0, workers=2))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pcm():
    a = speech("Hello there, this is a live test.", pad_s=0.3, rate=RATE)
    return (np.clip(a, -1, 1) * 32767).astype("<i2")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def ws_connect(session, server):
    return await session.ws_connect(server.url.replace("http", "ws") + "/ws", max_msg_size=0)


async def next_text(ws) -> dict:
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"connection ended: {msg.type} {msg.data} {msg.extra}")


async def stream(ws, pcm, chunk: int = 441, paced: bool = False) -> tuple[list, dict]:
    """Start, send all audio in chunks, stop; the frames + end. Unpaced, the audio goes faster than real time (the
    test need not wait), so a busy machine may skip most frames as too late; paced, it arrives as from a
    microphone."""
    await ws.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE, "pose": "generate"}))
    ready = await next_text(ws)
    assert ready["type"] == "ready", ready
    t0 = time.monotonic()
    for i in range(0, len(pcm), chunk):
        await ws.send_bytes(pcm[i:i + chunk].tobytes())
        if paced:
            await asyncio.sleep(max(0.0, t0 + (i + chunk) / RATE - time.monotonic()))
    await ws.send_str(json.dumps({"type": "stop"}))
    frames = []
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(unpack_frame(msg.data))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            m = json.loads(msg.data)
            assert m["type"] == "end", m
            return frames, m | {"ready": ready}
        else:
            raise AssertionError(f"connection ended mid-stream: {msg.type}")


def test_page_api_and_a_stream(server, pcm):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(server.url + "/") as r:
                assert r.status == 200 and "nerf_talk live" in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            async with s.get(server.url + "/static/app.js") as r:
                assert r.status == 200
            async with s.get(server.url + "/static/../app.py") as r:
                assert r.status in (403, 404)  # the static route serves its own directory only
            async with s.get(server.url + "/api/avatars") as r:
                names = [a["name"] for a in (await r.json())["avatars"]]
                assert "syn" in names and "broken" in names
            async with await ws_connect(s, server) as ws:
                frames, end = await stream(ws, pcm, paced=True)
                # The same connection takes a second stream once the first has ended.
                frames2, end2 = await stream(ws, pcm[: RATE])
        return frames, end, frames2, end2

    frames, end, frames2, end2 = run(go())
    n = math.ceil(len(pcm) / RATE * end["ready"]["fps"] - 1e-6)
    assert end["frames"] == n and end["sent"] + end["dropped"] == n and len(frames) == end["sent"]
    idx = [h["i"] for h, _ in frames]
    assert idx == sorted(idx) and idx[-1] == n - 1  # in order; the newest frame is never skipped
    for h, jpeg in frames[:3]:
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (end["ready"]["height"], end["ready"]["width"])
        assert abs(h["t"] - h["i"] / end["ready"]["fps"]) < 1e-3 and h["server_ms"] >= 0
    assert any(h["speech"] for h, _ in frames)
    assert end2["frames"] == math.ceil(1.0 * end2["ready"]["fps"] - 1e-6)


def test_bad_messages_are_answered_and_the_connection_keeps_working(server, pcm):
    bad_text = [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"type": "stop"}', "without a running stream"),
        ("x" * 5000, "over 4096"),
        ('{"type": "start", "avatar": "nobody", "sample_rate": 16000}', "no avatar named 'nobody'"),
        ('{"type": "start", "avatar": "../syn", "sample_rate": 16000}', "bad avatar name"),
        ('{"type": "start", "avatar": "/etc/passwd", "sample_rate": 16000}', "bad avatar name"),
        ('{"type": "start", "avatar": "escape", "sample_rate": 16000}', "no avatar named 'escape'"),
        ('{"type": "start", "avatar": 7, "sample_rate": 16000}', "bad avatar name"),
        ('{"type": "start", "avatar": "broken", "sample_rate": 16000}', "cannot be used"),
        ('{"type": "start", "avatar": "syn", "sample_rate": 100}', "bad sample_rate"),
        ('{"type": "start", "avatar": "syn", "sample_rate": "fast"}', "bad sample_rate"),
        ('{"type": "start", "avatar": "syn", "sample_rate": 16000, "pose": "dance"}', "bad pose"),
        ('{"type": "start", "avatar": "syn", "sample_rate": 16000, "size": 100000}', "bad size"),
    ]

    async def go():
        async with aiohttp.ClientSession() as s:
            async with await ws_connect(s, server) as ws:
                await ws.send_bytes(b"\x00\x00" * 100)
                assert "without a running stream" in (await next_text(ws))["message"]
                for text, expect in bad_text:
                    await ws.send_str(text)
                    m = await next_text(ws)
                    assert m["type"] == "error" and expect in m["message"], (text, m)
                await ws.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert (await next_text(ws))["type"] == "ready"
                await ws.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert "already has a stream" in (await next_text(ws))["message"]
                await ws.send_bytes(b"\x01\x02\x03")
                assert "odd byte count" in (await next_text(ws))["message"]
                await ws.send_str('{"type": "stop"}')  # (under 0.2 s of audio sent: the stream says so)
                m = await next_text(ws)
                assert m["type"] == "error" and "under the minimum" in m["message"], m
                frames, end = await stream(ws, pcm)  # and the connection still streams
                assert end["frames"] > 10 and frames
    run(go())


def test_oversized_message_closes_only_that_connection(server, pcm):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with await ws_connect(s, server) as good, await ws_connect(s, server) as bad:
                await bad.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert (await next_text(bad))["type"] == "ready"
                await bad.send_bytes(b"\x00" * (64 * 1024 + 2))  # over max_message_bytes
                msg = await bad.receive(timeout=30)
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await bad.receive(timeout=30)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert bad.close_code == 1009  # "message too big"
                frames, end = await stream(good, pcm)
                assert frames and end["frames"] > 10
    run(go())


def test_vanishing_and_idle_clients_leave_the_server_serving(server, pcm):
    async def go():
        async with aiohttp.ClientSession() as s:
            # A client that disconnects mid-stream, twice (once while frames are being rendered for it).
            for _ in range(2):
                ws = await ws_connect(s, server)
                await ws.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert (await next_text(ws))["type"] == "ready"
                for i in range(0, len(pcm) // 2, 441):
                    await ws.send_bytes(pcm[i:i + 441].tobytes())
                await ws.close()
            # An idle connection is told and closed after idle_timeout_s (3 s here).
            async with await ws_connect(s, server) as idle:
                m = await next_text(idle)
                assert m["type"] == "error" and "idle" in m["message"]
                assert (await idle.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            async with await ws_connect(s, server) as ws:
                frames, end = await stream(ws, pcm)
                assert frames and end["frames"] > 10
    run(go())


def test_stream_length_and_count_limits(avatar_dir, pcm):
    srv = start_in_thread(ServeConfig(avatar_dir=avatar_dir, port=0, max_stream_s=0.5, max_streams=1))

    async def go():
        async with aiohttp.ClientSession() as s:
            async with await ws_connect(s, srv) as ws, await ws_connect(s, srv) as other:
                await ws.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert (await next_text(ws))["type"] == "ready"
                await other.send_str(json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE}))
                assert "busy" in (await next_text(other))["message"]  # max_streams = 1
                for i in range(0, 6 * 2205, 2205):  # the 6th chunk passes 0.5 s (11025 samples)
                    await ws.send_bytes(pcm[i:i + 2205].tobytes())
                while True:
                    m = await next_text(ws)
                    if m["type"] == "error":
                        break
                assert "over the limit of 0.5 s" in m["message"]
                frames, end = await stream(ws, pcm[: RATE // 4])  # a new, short stream is fine
                assert end["frames"] > 0
    try:
        run(go())
    finally:
        srv.stop()


def test_refuses_a_missing_avatar_directory(tmp_path):
    from nerf_talk.errors import UserError
    from nerf_talk.serve import make_app

    with pytest.raises(UserError, match="avatar directory not found"):
        make_app(ServeConfig(avatar_dir=tmp_path / "nope"))

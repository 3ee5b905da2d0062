"""`nerf-talk serve` against hostile pages and idle clients: idle streams end whatever the heartbeat does, WebSocket
upgrades only from the server's own origin (or --allow-origin), Host checked on every route (DNS rebinding),
security headers on every response, a port in use refused in one line, and what the server does with unmasked
client frames. A real server on 127.0.0.1 and real clients, each test bounded in time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from nerf_talk.serve import ServeConfig, start_in_thread
from test_serve import RATE, avatar_dir, next_text, run, ws_connect  # noqa: F401  (avatar_dir: a fixture)

IDLE = 2.0


@pytest.fixture(scope="module")
def server(avatar_dir):  # noqa: F811
    srv = start_in_thread(ServeConfig(avatar_dir=avatar_dir, port=0, idle_timeout_s=IDLE, max_streams=4,
                                      max_message_bytes=64 * 1024, allow_origins=["https://Talk.Example"],
                                      preload=["syn"]))
    yield srv
    srv.stop()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


START = json.dumps({"type": "start", "avatar": "syn", "sample_rate": RATE})


def test_idle_streams_end_despite_heartbeats_and_free_their_slots(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            # Four clients that start a stream, then send no audio: their pings (every 0.2 s) and the server's pongs
            # must not keep the slots.
            holders = [await s.ws_connect(server.url.replace("http", "ws") + "/ws", heartbeat=0.2) for _ in range(4)]
            t0 = time.monotonic()
            for ws in holders:
                await ws.send_str(START)
                assert (await next_text(ws))["type"] == "ready"
            async with await ws_connect(s, server) as fifth:
                await fifth.send_str(START)
                assert "busy" in (await next_text(fifth))["message"]
            # (the refused client leaves: waiting idle it would itself be closed, at about the holders' deadline)
            for ws in holders:
                m = await next_text(ws)
                assert m["type"] == "error" and f"no audio for {IDLE:g} s" in m["message"], m
                assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert time.monotonic() - t0 < IDLE + 8
            async with await ws_connect(s, server) as fifth:
                await fifth.send_str(START)  # a new user now gets a slot
                assert (await next_text(fifth))["type"] == "ready"
                await fifth.send_bytes(b"\x00\x00" * RATE)  # audio keeps it alive past the idle time
                await asyncio.sleep(IDLE * 0.6)
                await fifth.send_bytes(b"\x00\x00" * RATE)
                await asyncio.sleep(IDLE * 0.6)
                await fifth.send_str('{"type": "stop"}')
                while (m := await next_text(fifth))["type"] != "end":
                    assert m["type"] != "error", m
            # Control messages that start nothing are not activity either.
            async with await ws_connect(s, server) as chatty:
                t0 = time.monotonic()
                while True:
                    await chatty.send_str('{"type": "dance"}')
                    m = await next_text(chatty)
                    if "idle" in m["message"]:
                        break
                    await asyncio.sleep(0.3)
                assert "no stream started" in m["message"] and time.monotonic() - t0 < IDLE + 3
        for ws in holders:
            await ws.close()
    run(go())


def test_websocket_only_from_its_own_origin(server):
    port = port_of(server)

    async def go():
        async with aiohttp.ClientSession() as s:
            url = server.url.replace("http", "ws") + "/ws"
            for origin in ("http://evil.example", "http://localhost.evil.example:%d" % port, "null",
                           f"http://127.0.0.1:{port + 1}"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await s.ws_connect(url, origin=origin)
                assert e.value.status == 403, origin
            # The page's own origin (as the browser sends it), an --allow-origin (case-insensitive), and a client
            # that is not a browser (no Origin) are accepted.
            for origin in (f"http://127.0.0.1:{port}", "https://talk.example", None):
                async with s.ws_connect(url, origin=origin) as ws:
                    await ws.send_str('{"type": "stop"}')
                    assert "without a running stream" in (await next_text(ws))["message"]
    run(go())


def test_host_is_checked_on_every_route(server):
    port = port_of(server)

    async def go():
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/api/avatars", "/static/app.js", "/ws", "/nothing"):
                for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",
                             f"localhost:{port + 1}"):
                    async with s.get(server.url + path, headers={"Host": host}) as r:
                        assert r.status == 403, (path, host)
                        assert "does not answer to Host" in await r.text()
                        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "talk.example"):
                async with s.get(server.url + "/api/avatars", headers={"Host": host}) as r:
                    assert r.status == 200, host
    run(go())


def test_security_headers_on_every_response(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            for path, status in (("/", 200), ("/api/avatars", 200), ("/static/app.js", 200), ("/favicon.ico", 204),
                                 ("/no/such/page", 404), ("/static/../app.py", 403), ("/ws", 400)):
                async with s.get(server.url + path) as r:
                    assert r.status == status or (status == 403 and r.status == 404), (path, r.status)
                    h = r.headers
                    assert "frame-ancestors 'none'" in h["Content-Security-Policy"], path
                    assert "default-src 'self'" in h["Content-Security-Policy"], path
                    assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff", path
                    assert h["Referrer-Policy"] == "no-referrer", path
                    assert h["Cross-Origin-Resource-Policy"] == "same-origin", path
    run(go())


async def _raw_ws(port: int):
    """A WebSocket opened by hand, so that frames can be sent unmasked."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _read_frame(reader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


def test_unmasked_client_frames_get_the_same_checks_and_limits(server):
    """RFC 6455 says a server must close on an unmasked client frame; aiohttp's reader has no option for it and
    unmasks only when the bit is set, so the server sees an unmasked frame as any other. Masking protects proxies
    from pages in browsers, and browsers always mask: what matters here is that such a frame gets every check and
    limit a masked one does."""
    async def go():
        reader, writer = await _raw_ws(port_of(server))
        try:
            payload = b'{"type": "dance"}'
            writer.write(bytes([0x81, len(payload)]) + payload)  # FIN + text, mask bit clear
            op, data = await _read_frame(reader)
            assert op == 1 and "unknown message type" in json.loads(data)["message"]
            big = b"\x00" * (64 * 1024 + 2)  # over max_message_bytes
            writer.write(bytes([0x82, 127]) + len(big).to_bytes(8, "big") + big)
            op, data = await _read_frame(reader)
            assert op == 8 and int.from_bytes(data[:2], "big") == 1009  # closed: message too big
        finally:
            writer.close()
    run(go())


def test_a_port_in_use_is_one_line_exit_2_and_no_address(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-c", "import sys; from nerf_talk.cli import main; sys.exit(main())",
                            "serve", "--avatar-dir", str(tmp_path), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "http://" not in r.stdout  # the address is printed only once bound
    assert f"error: cannot listen on 127.0.0.1 port {port}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "--port" in r.stderr


@pytest.mark.parametrize("args,expected", [
    (["--port", "70000"], "--port 70000 is not a TCP port"),
    (["--idle-timeout", "0"], "--idle-timeout 0 must be > 0"),
    (["--allow-origin", "ftp://talk.example"], "bad origin 'ftp://talk.example'"),
    (["--allow-origin", "https://talk.example/page"], "bad origin"),
])
def test_bad_serve_arguments_are_one_line_exit_2(tmp_path, capsys, args, expected):
    from nerf_talk.cli import main

    assert main(["serve", "--avatar-dir", str(tmp_path), *args]) == 2
    out = capsys.readouterr()
    assert expected in out.err and "http://" not in out.out, out

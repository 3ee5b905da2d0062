"""The live server: aiohttp routes, the avatar store and the WebSocket stream handler.

Routes
  GET /              the page (static/index.html); its script and audio worklet under /static/
  GET /api/avatars   {"avatars": [{"name", "loaded"}], "limits": {...}}: what a client may ask for
  GET /api/avatars/NAME            {"name", "width", "height", "fps"} (loads the avatar)
  GET /api/avatars/NAME/still.jpg  the avatar's still frame (its first tracked pose, mouth closed), shown before playing
  GET /ws            the stream, one per connection at a time
  with a data folder (--data DIR): the studio's page, uploads, jobs and files (serve/studio.py)

WebSocket protocol (docs/LIVE.md has it with examples)
  client -> server, text (JSON objects):
    {"type": "start", "avatar": NAME, "sample_rate": 4000..192000, "pose": "generate"|"still", "size": H?}
    {"type": "stop"}                      the audio has ended: the server renders the last frames, then "end"
  client -> server, binary: mono 16-bit little-endian PCM at sample_rate, any chunk size (<= max_message_bytes)
  server -> client, text: {"type": "ready", ...} | {"type": "end", ...} | {"type": "error", "message", "hint"}
  server -> client, binary: a frame: 4-byte big-endian header length, the header (UTF-8 JSON: "i" frame index,
    "t" / "t_end" its span in the audio in seconds, "server_ms" the time from the arrival of the audio up to
    t_end to sending, "speech", "dropped"), then the JPEG.

Safety: binds to 127.0.0.1 unless told otherwise; WebSocket messages over max_message_bytes close that connection
(1009); a stream is limited to max_stream_s of audio and max_queued_s of audio waiting to be processed; avatar names
are resolved only inside avatar_dir (a bare name, no path: nothing outside can be named, symlinks out are refused);
a connection with no start and no audio for idle_timeout_s has its stream ended and is closed (heartbeats do not
count); WebSocket upgrades only from the server's own origin or allow_origins; every route checks Host against the
server's names (DNS rebinding); every response carries the security headers; every error in a handler is reported
to that client only and the server goes on serving the others.

Latency: motion runs for all audio received as soon as a block is complete; rendering runs in parallel, frame by
frame. A frame is skipped (counted as "dropped") when a newer one is waiting and either it is already later than
the algorithmic delay + max_lag_s or the renderer is slower than the frame rate (then only the newest frame is
worth rendering): a slow machine shows fewer frames, each as recent as it can be, not later and later ones.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web

from nerf_talk.errors import UserError
from nerf_talk.motion.stream import StreamConfig

log = logging.getLogger("nerf_talk.serve")
STATIC = Path(__file__).resolve().parent / "static"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
MIN_SIZE, MAX_SIZE = 32, 1024
CONFIG = web.AppKey("config", object)  # ServeConfig
STORE = web.AppKey("store", object)  # AvatarStore
POOL = web.AppKey("pool", ThreadPoolExecutor)
ACTIVE = web.AppKey("active", object)  # Running: streams running (mutable: app state is frozen once started)


@dataclass
class ServeConfig:
    avatar_dir: Path | None = None  # None: DIR/avatars of the data folder
    data_dir: Path | None = None  # the studio's data folder (`--data DIR`): uploads, jobs and their outputs
    max_upload_bytes: int = 2 * 1024**3  # one upload: 5 minutes of 1080p H.264 at 40 Mbit/s is 1.5 GB
    fit_overrides: list[str] = field(default_factory=list)  # --set items added to every studio fit (tests)
    preload: list[str] = field(default_factory=list)  # avatar names loaded at start
    host: str = "127.0.0.1"
    port: int = 8765
    max_message_bytes: int = 256 * 1024  # one WebSocket message: 2.7 s of 48 kHz PCM16, far above a live chunk
    max_stream_s: float = 600.0  # audio in one stream
    max_queued_s: float = 20.0  # audio received but not yet processed (a client sending far faster than real time)
    idle_timeout_s: float = 30.0  # no start and no audio for this long: the stream ends, the connection closes
    allow_origins: list[str] = field(default_factory=list)  # other origins whose pages may open /ws
    max_streams: int = 4  # streams at once, all clients together
    max_lag_s: float = 0.15  # a frame later than the algorithmic delay + this is skipped when a newer one waits
    jpeg_quality: int = 80
    workers: int = 2  # threads for features, motion and rendering
    size: int | None = None  # default render height (None: the avatar's trained size)
    device: str | None = None
    stream: StreamConfig = field(default_factory=StreamConfig.for_hardware)  # `nerf-talk serve`'s defaults

    def validate(self) -> None:
        """Something to serve: an avatar directory, or a data folder (whose avatars/ is then the avatar directory)."""
        if self.avatar_dir is None and self.data_dir is None:
            raise UserError("nothing to serve: neither avatar_dir nor data_dir is set",
                            "give NAME.avatar files, --avatar-dir DIR or --data DIR")


class Running:
    n = 0


class AvatarStore:
    """Avatars by name, loaded once, only from avatar_dir."""

    def __init__(self, root: Path, device: str | None):
        self.root = Path(root).resolve()
        self.device = device
        self.loaded: dict = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.stills: dict[str, bytes] = {}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.avatar")
                      if NAME_RE.fullmatch(p.stem) and p.resolve().parent == self.root and p.is_file())

    def path_of(self, name) -> Path:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith(".avatar"):
            raise UserError(f"bad avatar name {str(name)[:80]!r}",
                            "give the bare name of an avatar this server lists (letters, digits, _ . -)")
        p = (self.root / f"{name}.avatar").resolve()
        if p.parent != self.root or not p.is_file():  # (a symlink pointing out of the directory resolves outside)
            raise UserError(f"no avatar named {name!r} on this server", f"available: {', '.join(self.names()) or 'none'}")
        return p

    async def get(self, name, pool: ThreadPoolExecutor):
        path = self.path_of(name)
        if name in self.loaded:
            return self.loaded[name]
        lock = self.locks.setdefault(name, asyncio.Lock())
        async with lock:  # two clients asking for the same avatar load it once
            if name not in self.loaded:
                self.loaded[name] = await asyncio.get_running_loop().run_in_executor(pool, self._load, name, path)
        return self.loaded[name]

    def _load(self, name: str, path: Path):
        from nerf_talk.api import Avatar

        try:
            avatar = Avatar.load(path, self.device)
            warm_up(avatar)
        except UserError as e:
            raise UserError(f"avatar {name!r} cannot be used: {e.problem}", e.hint) from None
        except Exception as e:  # a damaged file can fail anywhere in the loader: say so, keep serving
            raise UserError(f"avatar {name!r} cannot be used: {type(e).__name__}: {e}",
                            "re-export it with `nerf-talk export`") from None
        log.info("loaded avatar %s (%dx%d at %g fps)", name, avatar.size[1], avatar.size[0], avatar.fps)
        return avatar


    async def still(self, name, pool: ThreadPoolExecutor) -> bytes:
        """The avatar's still frame as a JPEG (rendered once per avatar)."""
        avatar = await self.get(name, pool)
        if name not in self.stills:
            self.stills[name] = await asyncio.get_running_loop().run_in_executor(pool, still_frame, avatar)
        return self.stills[name]


def still_frame(avatar, quality: int = 90) -> bytes:
    """The first frame of the avatar holding still in silence: its own first tracked pose, eyes open, mouth closed."""
    import cv2
    import numpy as np

    drive = avatar.drive(np.zeros(4000, np.float32), 16000, pose="still", blinks=False)
    frame = next(avatar.render_drive(drive))
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpeg.tobytes()


def warm_up(avatar) -> None:
    """Run the whole live path once on half a second of silence: the posteriorgram's session, the motion model and
    the renderer pay their first-call costs (over a second on a CPU) at load time, not in a client's first frames."""
    import numpy as np

    from nerf_talk.live import LiveStream

    live = LiveStream(avatar, 16000, pose="still")
    frames = live.push(np.zeros(8000, np.int16)) + live.finish()
    live.render_jpeg(frames[-1])


def pack_frame(header: dict, jpeg: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(h)) + h + jpeg


def unpack_frame(data: bytes) -> tuple[dict, bytes]:
    """(header, jpeg) of a frame message (for clients written in Python: tests, bench)."""
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + n]), data[4 + n:]


class Stream:
    """One running stream: the LiveStream, its audio queue, its processing task and its arrival log."""

    def __init__(self, live, rate: int):
        self.live, self.rate = live, rate
        self.queue: asyncio.Queue = asyncio.Queue()  # audio chunks (bytes), None at the end
        self.frames: deque = deque()  # LiveFrames waiting to be rendered
        self.wake = asyncio.Event()  # set when frames are added or motion has ended
        self.queued = 0  # samples received, not yet processed
        self.received = 0  # samples received
        self.arrivals: deque = deque()  # (samples received in all, monotonic time), one per chunk
        self.dropped = 0
        self.sent = 0
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.render_s: float | None = None  # running mean of one frame's render + JPEG time
        self.motion_done = False  # the last frames are queued for rendering

    def arrival(self, sample: int) -> float:
        """Monotonic time at which input sample `sample` had arrived (the first chunk that covered it)."""
        for n, t in self.arrivals:
            if n >= sample:
                return t
        return time.monotonic()


class Client:
    """One WebSocket connection."""

    def __init__(self, ws: web.WebSocketResponse, app: web.Application, peer: str):
        self.ws, self.app, self.peer = ws, app, peer
        self.cfg: ServeConfig = app[CONFIG]
        self.stream: Stream | None = None
        self.active_at = time.monotonic()  # the last start or audio chunk

    async def send_json(self, obj: dict) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(obj))

    async def error(self, problem: str, hint: str = "") -> None:
        try:
            await self.send_json({"type": "error", "message": problem, "hint": hint})
        except Exception:  # the client is gone: nothing to tell
            pass

    async def run(self) -> None:
        # The deadline moves only with a start or with audio: control messages that start nothing, and the pings and
        # pongs of the heartbeat (answered inside aiohttp's receive), are not activity. The wait is bounded from
        # outside receive() because receive's own timeout restarts at every ping or pong it handles.
        self.active_at = time.monotonic()
        while not self.ws.closed:
            left = self.active_at + self.cfg.idle_timeout_s - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(self.ws.receive(), left)
            except asyncio.TimeoutError:
                if self.stream is not None and self.stream.stopping:
                    self.active_at = time.monotonic()  # still rendering the end of a finished stream: not idle
                    continue
                what = "no audio" if self.stream is not None else "no stream started"
                await self.end_stream()
                await self.error(f"{what} for {self.cfg.idle_timeout_s:g} s: closing this idle connection",
                                 "connect again when there is audio to send")
                await self.ws.close(code=1000, message=b"idle")
                return
            if msg.type == WSMsgType.TEXT:
                await self.guarded(self.on_text, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.guarded(self.on_audio, msg.data)
            elif msg.type == WSMsgType.ERROR:  # e.g. a message over max_message_bytes: aiohttp closes with 1009
                log.info("%s: connection error: %s", self.peer, self.ws.exception())
                return
            else:  # CLOSE / CLOSING / CLOSED
                return

    async def guarded(self, handler, data) -> None:
        """Every failure of a handler goes to this client only; a failure inside a stream ends that stream."""
        try:
            await handler(data)
        except UserError as e:
            await self.error(e.problem, e.hint)
        except Exception as e:
            log.exception("%s: handler failed", self.peer)
            await self.error(f"internal error: {type(e).__name__}: {e}", "the stream was ended; start a new one")
            await self.end_stream()

    async def on_text(self, data: str) -> None:
        if len(data) > 4096:
            raise UserError("a control message over 4096 characters", "control messages are small JSON objects")
        try:
            msg = json.loads(data)
        except ValueError:
            raise UserError("a text message that is not JSON", 'send e.g. {"type": "start", ...}') from None
        if not isinstance(msg, dict):
            raise UserError("a control message must be a JSON object")
        kind = msg.get("type")
        if kind == "start":
            await self.start(msg)
        elif kind == "stop":
            if self.stream is None or self.stream.stopping:
                raise UserError("stop without a running stream")
            self.stream.stopping = True
            self.stream.queue.put_nowait(None)
        else:
            raise UserError(f"unknown message type {str(kind)[:40]!r}", "known: start, stop")

    async def start(self, msg: dict) -> None:
        from nerf_talk.live import LiveStream

        if self.stream is not None:
            raise UserError("this connection already has a stream", "one stream per connection: send stop first")
        cfg = self.cfg
        rate = msg.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 4000 <= rate <= 192000:
            raise UserError(f"bad sample_rate {str(rate)[:20]!r}", "an integer from 4000 to 192000 (Hz)")
        pose = msg.get("pose", "generate")
        if pose not in ("generate", "still"):
            raise UserError(f"bad pose {str(pose)[:20]!r}", "generate or still")
        size = msg.get("size", cfg.size)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE):
            raise UserError(f"bad size {str(size)[:20]!r}", f"a height in pixels from {MIN_SIZE} to {MAX_SIZE}")
        if self.app[ACTIVE].n >= cfg.max_streams:
            raise UserError(f"the server is busy ({cfg.max_streams} streams running)", "try again in a moment")
        avatar = await self.app[STORE].get(msg.get("avatar"), self.app[POOL])
        live = LiveStream(avatar, rate, pose=pose, blinks=bool(msg.get("blinks", True)), seed=0, size=size,
                          cfg=cfg.stream, max_seconds=cfg.max_stream_s)
        h, w = avatar.size
        if size is not None:
            h, w = size, round(size * w / h)
        self.stream = Stream(live, rate)
        self.app[ACTIVE].n += 1
        self.active_at = time.monotonic()
        self.stream.task = asyncio.create_task(self.process(self.stream))
        await self.send_json({"type": "ready", "avatar": msg["avatar"], "fps": avatar.fps, "width": w, "height": h,
                              "sample_rate": rate, "algorithmic_delay_ms": round(live.algorithmic_delay_s * 1000),
                              "max_stream_s": cfg.max_stream_s, "max_message_bytes": cfg.max_message_bytes})

    async def on_audio(self, data: bytes) -> None:
        s = self.stream
        if s is None or s.stopping:
            raise UserError("audio without a running stream", 'send {"type": "start", ...} first')
        if len(data) % 2:
            raise UserError(f"an audio chunk of {len(data)} bytes is not 16-bit PCM (odd byte count)",
                            "send mono 16-bit little-endian samples")
        n = len(data) // 2
        if s.received + n > self.cfg.max_stream_s * s.rate:
            await self.end_stream()
            raise UserError(f"the stream is over the limit of {self.cfg.max_stream_s:g} s of audio; it was ended",
                            "start a new stream")
        if s.queued + n > self.cfg.max_queued_s * s.rate:
            await self.end_stream()
            raise UserError(f"over {self.cfg.max_queued_s:g} s of audio waiting: audio is arriving faster than it "
                            "can be processed; the stream was ended", "send audio at real-time pace")
        s.received += n
        s.queued += n
        self.active_at = time.monotonic()
        s.arrivals.append((s.received, time.monotonic()))
        s.queue.put_nowait(data)

    async def process(self, s: Stream) -> None:
        """Two stages in parallel threads: motion (features, network, drive) for all queued audio, and rendering of
        the frames it produced; each stage runs as soon as it has work, so a frame waits for at most one render."""
        motion = asyncio.create_task(self.motion_frames(s))
        render = asyncio.create_task(self.render_frames(s))
        try:
            await asyncio.gather(motion, render)  # the first failure of either ends the stream (finally: both)
            await self.send_json({"type": "end", "frames": s.live.frames, "sent": s.sent, "dropped": s.dropped,
                                  "seconds": round(s.live.n_in / s.rate, 3)})
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:  # the client went away mid-stream
            log.info("%s: client gone mid-stream", self.peer)
        except UserError as e:
            await self.error(e.problem, e.hint)
        except Exception as e:
            log.exception("%s: stream failed", self.peer)
            await self.error(f"internal error: {type(e).__name__}: {e}", "the stream was ended; start a new one")
        finally:
            motion.cancel()
            render.cancel()
            if self.stream is s:
                self.stream = None
                self.app[ACTIVE].n -= 1

    async def motion_frames(self, s: Stream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await s.queue.get()]
            while not s.queue.empty():  # everything that arrived meanwhile, in one push
                items.append(s.queue.get_nowait())
            final = any(i is None for i in items)
            pcm = b"".join(i for i in items if i is not None)
            s.queued -= len(pcm) // 2
            frames = await loop.run_in_executor(self.app[POOL], s.live.push, pcm) if pcm else []
            if final:
                frames += await loop.run_in_executor(self.app[POOL], s.live.finish)
            s.frames.extend(frames)
            s.motion_done = final
            s.wake.set()
            if final:
                return

    async def render_frames(self, s: Stream) -> None:
        loop = asyncio.get_running_loop()
        live = s.live
        hop_s = live.cfg.hop_frames / 25.0
        while True:
            if not s.frames:
                if s.motion_done:
                    return
                s.wake.clear()
                await s.wake.wait()
                continue
            if not s.motion_done and s.queued > (hop_s + self.cfg.max_lag_s) * s.rate:
                # Motion is falling behind the audio (the machine is too slow for both): let it have the CPU, or
                # every later frame would be later still. Rendering resumes when it has caught up.
                s.wake.clear()
                try:
                    await asyncio.wait_for(s.wake.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
                continue
            f = s.frames.popleft()
            end_sample = min(s.received, int(-(-(f.index + 1) * s.rate // live.fps)))
            t_audio = s.arrival(end_sample)
            late = time.monotonic() - t_audio > live.algorithmic_delay_s + self.cfg.max_lag_s
            newer = len(s.frames)  # frames waiting behind this one
            # A renderer slower than the frame rate cannot show every frame: it then shows the newest one waiting
            # (the same number of frames, each as recent as it can be). A faster one shows all, unless a frame is
            # already too late. Either way a slow machine shows fewer frames instead of falling further behind.
            slow = s.render_s is not None and s.render_s > 1.0 / live.fps
            if newer > 0 and (late or slow):
                s.dropped += 1
                continue
            t0 = time.monotonic()
            jpeg = await loop.run_in_executor(self.app[POOL], live.render_jpeg, f, self.cfg.jpeg_quality)
            dt = time.monotonic() - t0
            s.render_s = dt if s.render_s is None else 0.8 * s.render_s + 0.2 * dt  # running mean render time
            header = {"i": f.index, "t": round(f.t, 4), "t_end": round((f.index + 1) / live.fps, 4),
                      "server_ms": round((time.monotonic() - t_audio) * 1000, 1), "speech": f.speech,
                      "dropped": s.dropped}
            await self.ws.send_bytes(pack_frame(header, jpeg))
            s.sent += 1
            # Forget arrivals no later frame will look up.
            while len(s.arrivals) > 1 and s.arrivals[0][0] < end_sample:
                s.arrivals.popleft()

    async def end_stream(self) -> None:
        s, self.stream = self.stream, None
        if s is None:
            return
        self.app[ACTIVE].n -= 1
        if s.task is not None and not s.task.done():
            s.task.cancel()
            try:
                await s.task
            except (asyncio.CancelledError, Exception):
                pass


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    cfg: ServeConfig = request.app[CONFIG]
    if not origin_allowed(request):  # a page of another site: it must not hear or drive this server
        raise web.HTTPForbidden(text=f"WebSocket from origin {request.headers['Origin'][:80]!r} refused: only this "
                                "server's own page (or an --allow-origin) may connect\n")
    ws = web.WebSocketResponse(max_msg_size=cfg.max_message_bytes, heartbeat=20.0)
    await ws.prepare(request)
    client = Client(ws, request.app, request.remote or "?")
    try:
        await client.run()
    except Exception:  # nothing a client does may take the server down
        log.exception("%s: connection failed", client.peer)
    finally:
        await client.end_stream()
        if not ws.closed:
            await ws.close()
    return ws


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def avatars(request: web.Request) -> web.Response:
    app = request.app
    store: AvatarStore = app[STORE]
    cfg: ServeConfig = app[CONFIG]
    return web.json_response({
        "avatars": [{"name": n, "loaded": n in store.loaded} for n in store.names()],
        "studio": cfg.data_dir is not None,
        "limits": {"max_message_bytes": cfg.max_message_bytes, "max_stream_s": cfg.max_stream_s,
                   "idle_timeout_s": cfg.idle_timeout_s, "max_streams": cfg.max_streams}})


async def avatar_info(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        avatar = await request.app[STORE].get(name, request.app[POOL])
    except UserError as e:
        return web.json_response({"problem": e.problem, "hint": e.hint}, status=404)
    h, w = avatar.size
    return web.json_response({"name": name, "width": w, "height": h, "fps": avatar.fps})


async def avatar_still(request: web.Request) -> web.Response:
    try:
        jpeg = await request.app[STORE].still(request.match_info["name"], request.app[POOL])
    except UserError as e:
        raise web.HTTPNotFound(text=f"{e.problem}\n") from None
    return web.Response(body=jpeg, content_type="image/jpeg")


LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def normalize_origin(origin: str) -> str:
    """scheme://host[:port] in lower case, as browsers send it in Origin; anything else is a UserError."""
    from urllib.parse import urlsplit

    u = urlsplit(origin.strip().lower())
    if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/") or u.query or u.fragment:
        raise UserError(f"bad origin {origin!r}", "give scheme://host[:port], e.g. --allow-origin https://talk.example")
    return f"{u.scheme}://{u.netloc}"


def _port(request: web.Request) -> int:
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return sock[1] if sock else request.app[CONFIG].port


def host_allowed(request: web.Request) -> bool:
    """Whether the request's Host names this server: localhost, 127.0.0.1, [::1] or --host, with the port it listens
    on, or the host of an --allow-origin. A page on another site that resolves its own name to 127.0.0.1 (DNS
    rebinding) sends its own name here and is refused. Served on every address (0.0.0.0, ::), any IP literal with
    the port is accepted too: rebinding needs a name."""
    import ipaddress

    cfg: ServeConfig = request.app[CONFIG]
    host = request.headers.get("Host", "").lower()
    port = _port(request)
    bound = cfg.host.lower()
    names = set(LOCAL_NAMES) | {f"[{bound}]" if ":" in bound else bound}
    allowed = {f"{n}:{port}" for n in names} | (names if port == 80 else set())
    allowed |= {o.split("://", 1)[1] for o in cfg.allow_origins}
    if host in allowed:
        return True
    if bound in WILDCARD_HOSTS:
        name, _, p = host.rpartition(":")
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            return False
        return p == str(port)
    return False


def origin_allowed(request: web.Request) -> bool:
    """A WebSocket upgrade's Origin: none (not a browser: a script on this machine can connect anyway), this
    server's own (the page it served, by the Host it was reached at), or one of --allow-origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", "").lower()
    return origin.lower() in ({f"http://{host}", f"https://{host}"} | set(request.app[CONFIG].allow_origins))


@web.middleware
async def check_host(request: web.Request, handler):
    """Host on every route; Origin on every request that changes something (the studio's uploads and jobs): a page
    of another site must not start jobs or fill the disk (a form or fetch POST reaches localhost without CORS)."""
    if not host_allowed(request):
        raise web.HTTPForbidden(text=f"this server does not answer to Host {request.headers.get('Host', '')[:80]!r}"
                                "\n(open it at http://localhost:PORT/, or start it with --allow-origin)\n")
    if request.method not in ("GET", "HEAD") and not origin_allowed(request):
        raise web.HTTPForbidden(text=json.dumps({
            "problem": f"request from origin {request.headers['Origin'][:80]!r} refused",
            "hint": "only this server's own page (or an --allow-origin) may change anything"}),
            content_type="application/json")
    return await handler(request)


async def security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """On every response (pages, API, errors, the 404 page): the page loads only its own script, worklet, frames
    (blob: URLs) and WebSocket; no other site may frame it, read it or learn where its visitors came from."""
    host = request.headers.get("Host", "")
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'self'; img-src 'self' blob:; connect-src 'self' ws://{host} wss://{host}; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"


def make_app(cfg: ServeConfig) -> web.Application:
    cfg.validate()
    studio = None
    if cfg.data_dir is not None:
        from nerf_talk.serve.jobs import Studio

        if Path(cfg.data_dir).exists() and not Path(cfg.data_dir).is_dir():
            raise UserError(f"--data {cfg.data_dir} is a file", "give a folder (it is created when missing)")
        studio = Studio(Path(cfg.data_dir), cfg.max_upload_bytes, cfg.fit_overrides)
        if cfg.avatar_dir is None:
            cfg.avatar_dir = studio.path("avatars")
    root = Path(cfg.avatar_dir)
    if not root.is_dir():
        raise UserError(f"avatar directory not found: {root}", "give --avatar-dir DIR holding NAME.avatar files")
    # client_max_size bounds every HTTP request body (the routes take none; aiohttp's default is 1 MB).
    cfg.allow_origins = [normalize_origin(o) for o in cfg.allow_origins]
    app = web.Application(middlewares=[check_host], client_max_size=64 * 1024)
    app.on_response_prepare.append(security_headers)
    app[CONFIG] = cfg
    app[STORE] = AvatarStore(root, cfg.device)
    app[POOL] = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="nerf_talk_live")
    app[ACTIVE] = Running()
    app.router.add_get("/", index)
    app.router.add_get("/api/avatars", avatars)
    app.router.add_get("/api/avatars/{name}", avatar_info)
    app.router.add_get("/api/avatars/{name}/still.jpg", avatar_still)
    app.router.add_get("/favicon.ico", no_content)
    app.router.add_get("/ws", ws_handler)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    if studio is not None:
        from nerf_talk.serve.studio import add_routes

        add_routes(app, studio)

    async def preload(app):
        for name in cfg.preload:
            await app[STORE].get(name, app[POOL])

    async def shutdown(app):
        app[POOL].shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(preload)
    app.on_cleanup.append(shutdown)
    return app


def run(cfg: ServeConfig) -> None:
    """Serve until interrupted (`nerf-talk serve`): Ctrl+C or SIGTERM stop it."""
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the avatars", cfg.host)
    app = make_app(cfg)
    try:
        asyncio.run(_serve(app, cfg))
    except KeyboardInterrupt:
        pass
    print("nerf_talk live: stopped", flush=True)


async def _serve(app: web.Application, cfg: ServeConfig) -> None:
    import signal

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, cfg.host, cfg.port).start()
        except OSError as e:  # in use, not allowed (< 1024), no such address or name
            raise UserError(f"cannot listen on {cfg.host} port {cfg.port}: {e.strerror or e}",
                            "another program (perhaps another `nerf-talk serve`) holds it: stop it or give --port N"
                            if e.errno == errno.EADDRINUSE else "give another --host or --port") from None
        # The address is printed only once it is bound (it is what users click).
        shown = "localhost" if cfg.host in ("127.0.0.1", "::1") else cfg.host
        print(f"nerf_talk live: http://{shown}:{cfg.port}/  (avatars: {', '.join(app[STORE].names()) or 'none'} in "
              f"{app[STORE].root}; Ctrl+C stops)", flush=True)
        if cfg.data_dir is not None:
            print(f"nerf_talk studio: http://{shown}:{cfg.port}/studio  (data folder {cfg.data_dir})", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


class ServerThread:
    """A server on its own event loop in a background thread (tests, benchmarks): .url, .stop()."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="nerf_talk_serve")
        self.thread.start()
        self.ready.wait(120)
        if self.failed is not None:
            raise self.failed
        if not self.ready.is_set():
            raise RuntimeError("the server did not start in 120 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.runner = web.AppRunner(make_app(self.cfg), access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port)
            self.loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://{self.cfg.host}:{port}"
        except BaseException as e:
            self.failed = e
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def start_in_thread(cfg: ServeConfig) -> ServerThread:
    """Start a server in the background (port 0 picks a free port); returns it with its .url."""
    return ServerThread(cfg)

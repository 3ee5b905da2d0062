"""Live streaming benchmark: end-to-end latency and sustained frames per second of `nerf-talk serve`.

    python bench/bench_live.py AVATAR.avatar [--audio SPEECH.wav] [--size 512] [--threads 1] [--json out.json]

Two parts:
  engine  the streaming engine alone (nerf_talk.live.LiveStream), no server: compute seconds per second of
          audio for resampling + features + motion + drive, and rendering + JPEG frames per second;
  server  a real server (aiohttp, in a thread of this process) and a WebSocket client that streams the speech file
          at real-time pace in 20 ms chunks of 48 kHz PCM16, as the page does. Latency of a frame = the time it
          arrives minus the time the last sample of its audio was captured (the client paces capture: sample s is
          captured at t0 + s / rate); FPS = frames received per second of audio streamed. Frames the server skips
          as too late (it keeps up with the audio rather than falling behind) are counted.
Run once at the avatar's own size and once per --size. On a GPU the renderer runs on CUDA when torch sees one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_AUDIO = ROOT.parent / "shared" / "data" / "speech" / "en_radio40_8s.wav"
RATE = 48000  # what a browser's AudioContext usually runs at: the server resamples, as it does for the page
CHUNK_S = 0.02


def engine(avatar, audio: np.ndarray, size: int | None, render_frames: int) -> dict:
    from nerf_talk.live import LiveStream

    live = LiveStream(avatar, RATE, size=size)
    step = int(CHUNK_S * RATE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    t0 = time.perf_counter()
    frames = []
    for i in range(0, len(pcm), step):
        frames += live.push(pcm[i:i + step])
    frames += live.finish()
    motion_s = time.perf_counter() - t0
    picks = frames[:: max(1, len(frames) // render_frames)][:render_frames]
    live.render_jpeg(picks[0])  # first-call costs
    t0 = time.perf_counter()
    for f in picks:
        live.render_jpeg(f)
    render_s = time.perf_counter() - t0
    h, w = live._renderer.size
    return {"size": f"{w}x{h}", "audio_s": round(len(audio) / RATE, 2), "frames": len(frames),
            "motion_realtime_factor": round(motion_s / (len(audio) / RATE), 3),
            "render_fps": round(len(picks) / render_s, 2), "algorithmic_delay_ms": round(live.algorithmic_delay_s * 1e3)}


async def stream_client(url: str, name: str, audio: np.ndarray, size: int | None) -> dict:
    import aiohttp

    from nerf_talk.serve.app import unpack_frame

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    step = int(CHUNK_S * RATE)
    lat, server_ms, arrivals, speech = [], [], [], []
    result: dict = {}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url.replace("http", "ws") + "/ws", max_msg_size=0) as ws:
            start = {"type": "start", "avatar": name, "sample_rate": RATE, "pose": "generate"}
            if size:
                start["size"] = size
            await ws.send_str(json.dumps(start))
            ready = json.loads((await ws.receive()).data)
            if ready.get("type") != "ready":
                raise RuntimeError(f"server refused the stream: {ready}")
            t0 = time.perf_counter()

            async def send():
                for k, i in enumerate(range(0, len(pcm), step)):
                    # Real-time pace: chunk k is sent when its last sample has been "captured".
                    due = t0 + (i + step) / RATE
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    await ws.send_bytes(pcm[i:i + step].tobytes())
                await ws.send_str(json.dumps({"type": "stop"}))

            sender = asyncio.create_task(send())
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    now = time.perf_counter()
                    header, _ = unpack_frame(msg.data)
                    end_sample = min(len(pcm), math.ceil(header["t_end"] * RATE))
                    captured = t0 + math.ceil(end_sample / step) * step / RATE  # its chunk's send time
                    lat.append((now - captured) * 1e3)
                    server_ms.append(header["server_ms"])
                    arrivals.append(now)
                    speech.append(header["speech"])
                else:
                    m = json.loads(msg.data)
                    if m["type"] == "end":
                        result = m
                        break
                    if m["type"] == "error":
                        raise RuntimeError(f"server error: {m}")
            await sender
    duration = len(pcm) / RATE
    lat_a = np.asarray(lat)
    return {"size": f"{ready['width']}x{ready['height']}", "audio_s": round(duration, 2),
            "frames_total": result.get("frames"), "frames_received": len(lat), "frames_skipped": result.get("dropped"),
            "fps_sustained": round(len(lat) / duration, 2),
            "latency_ms_median": round(float(np.median(lat_a)), 1) if len(lat_a) else None,
            "latency_ms_p90": round(float(np.percentile(lat_a, 90)), 1) if len(lat_a) else None,
            "server_ms_median": round(float(np.median(server_ms)), 1) if server_ms else None,
            "algorithmic_delay_ms": ready["algorithmic_delay_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("avatar", type=Path)
    ap.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    ap.add_argument("--size", type=int, action="append", default=[], help="also at this height (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machine)")
    ap.add_argument("--render-frames", type=int, default=20, help="frames timed in the engine's render figure")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from nerf_talk import media
    from nerf_talk.api import Avatar
    from nerf_talk.serve import ServeConfig, start_in_thread

    audio = media.read_audio(args.audio, RATE)
    avatar = Avatar.load(args.avatar)
    print(f"avatar {args.avatar.name}: {avatar.size[1]}x{avatar.size[0]} on {avatar.device}; "
          f"speech {args.audio.name} ({len(audio) / RATE:.1f} s); torch threads {args.threads}", flush=True)
    # The machine's load is part of the figure on a shared CPU: recorded at the start and the end.
    out = {"device": str(avatar.device), "threads": args.threads, "audio": args.audio.name, "engine": [], "server": [],
           "load_average_start": os.getloadavg()[0]}
    sizes = [None] + args.size
    for size in sizes:
        e = engine(avatar, audio, size, args.render_frames if size is None else max(3, args.render_frames // 5))
        print("engine", json.dumps(e), flush=True)
        out["engine"].append(e)
    srv = start_in_thread(ServeConfig(avatar_dir=args.avatar.resolve().parent, port=0,
                                      preload=[args.avatar.stem]))
    try:
        for size in sizes:
            s = asyncio.run(stream_client(srv.url, args.avatar.stem, audio, size))
            print("server", json.dumps(s), flush=True)
            out["server"].append(s)
    finally:
        srv.stop()
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average (1 min): {out['load_average_start']:.1f} at the start, {out['load_average_end']:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

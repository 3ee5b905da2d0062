"use strict";
// The live page: captures audio (a decoded file played through the audio graph, or the microphone) with an
// AudioWorklet, streams it to /ws as 16-bit PCM chunks, and shows the frames that come back at their time in the
// audio. Measured figures are shown on the page and kept in window.liveStats (read by the browser test).

const $ = (id) => document.getElementById(id);
const MAX_FILE_BYTES = 50 * 1024 * 1024;  // a speech file is decoded in the page: bound its size
const CHUNK_S = 0.02;  // 20 ms chunks: small enough not to add latency, large enough not to flood the socket
const live = window.liveStats = {
  state: "idle", frames: 0, skipped: 0, distinct: 0, speechFrames: 0, speechDistinct: 0,
  latencyMs: null, serverMs: null, fps: 0, errors: [], ended: false, log: [],
};
let session = null;

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "status error" : "status";
  if (isError) live.errors.push(text);
}

function fnv1a(bytes) {  // a cheap fingerprint of a frame, to tell whether frames change
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
  return h;
}

function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function loadAvatars() {
  try {
    const r = await fetch("/api/avatars");
    const j = await r.json();
    const sel = $("avatar");
    sel.innerHTML = "";
    for (const a of j.avatars) {
      const o = document.createElement("option");
      o.value = o.textContent = a.name;
      sel.appendChild(o);
    }
    $("studio-link").hidden = !j.studio;
    if (!j.avatars.length) {
      status(j.studio ? "this server has no avatars yet: fit one in the studio" :
             "this server has no avatars (start it with NAME.avatar files)", true);
    } else {
      status(`ready: ${j.avatars.length} avatar(s). Play a speech file or speak.`);
      showAvatar();
    }
  } catch (e) {
    status(`cannot reach the server: ${e.message || e}`, true);
  }
}

async function showAvatar() {
  // The chosen avatar's still frame, name, size and frame rate, before anything plays (loading it takes a moment).
  const name = $("avatar").value;
  live.avatar = null;
  $("avatar-info").textContent = `${name}: loading...`;
  try {
    const r = await fetch(`/api/avatars/${encodeURIComponent(name)}`);
    const a = await r.json();
    if (!r.ok) throw new Error(a.hint ? `${a.problem} (${a.hint})` : a.problem);
    if ($("avatar").value !== name) return;  // another avatar was chosen meanwhile
    const img = $("frame");
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    delete img.dataset.url;
    img.src = `/api/avatars/${encodeURIComponent(name)}/still.jpg`;
    $("avatar-info").textContent = `${a.name}: ${a.width}x${a.height} at ${a.fps} fps`;
    live.avatar = a;
  } catch (e) {
    $("avatar-info").textContent = "";
    status(`avatar ${name}: ${e.message || e}`, true);
  }
}

class Session {
  constructor(kind) {
    this.kind = kind;  // "file" or "mic"
    this.sent = [];  // [samples sent in all, performance.now() when that chunk was captured]
    this.queue = [];  // frames waiting for their time: {t, url}
    this.latencies = [];
    this.servers = [];
    this.arrivals = [];
    this.closed = false;
    this.lastHash = null;
    this.lastStats = 0;
  }

  async begin() {
    const avatar = $("avatar").value;
    if (!avatar) throw new Error("choose an avatar first");
    this.ctx = new AudioContext();
    await this.ctx.resume();
    await this.ctx.audioWorklet.addModule("/static/capture-worklet.js");
    const rate = this.rate = this.ctx.sampleRate;
    let source, limit = 0;
    if (this.kind === "file") {
      const f = $("file").files[0];
      if (!f) throw new Error("choose a speech file first");
      if (f.size > MAX_FILE_BYTES) throw new Error(`${f.name} is ${(f.size / 1e6).toFixed(1)} MB, over the 50 MB limit`);
      let buf;
      try {
        buf = await this.ctx.decodeAudioData(await f.arrayBuffer());
      } catch (e) {
        throw new Error(`cannot decode ${f.name} as audio (${e.message || e})`);
      }
      if (buf.duration < 0.3) throw new Error(`${f.name} holds ${buf.duration.toFixed(2)} s of audio: too short`);
      source = this.fileSource = new AudioBufferSourceNode(this.ctx, {buffer: buf});
      limit = buf.length;
    } else {
      this.media = await navigator.mediaDevices.getUserMedia(
        {audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true}});
      source = this.ctx.createMediaStreamSource(this.media);
    }
    // The worklet captures nothing until told the audio frame to start at (a file's first sample).
    this.node = new AudioWorkletNode(this.ctx, "capture",
      {processorOptions: {chunk: Math.round(rate * CHUNK_S), start: Number.MAX_SAFE_INTEGER, limit: limit || 0}});
    const mute = new GainNode(this.ctx, {gain: 0});  // keeps the worklet pulled by the graph, silently
    source.connect(this.node).connect(mute).connect(this.ctx.destination);

    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new WebSocket(`${proto}//${location.host}/ws`);
    this.ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("cannot connect to the server"));
    });
    const ready = new Promise((resolve, reject) => { this.onReady = resolve; this.onRefused = reject; });
    this.ws.onmessage = (e) => this.onMessage(e);
    this.ws.onclose = (e) => this.onClose(e);
    this.ws.send(JSON.stringify({type: "start", avatar, sample_rate: rate, pose: $("pose").value}));
    const r = await ready;
    $("delay").textContent = `${r.algorithmic_delay_ms} ms`;

    this.startTime = this.ctx.currentTime + 0.05;
    this.node.port.onmessage = (e) => this.onCapture(e.data);
    this.node.port.postMessage({type: "begin", start: Math.round(this.startTime * rate)});
    if (this.kind === "file") {
      // The file is heard `playout` seconds after it is streamed, so that its frames are back in time to be shown
      // with it: the algorithmic delay plus a margin for compute (?delay=MS in the page's address overrides).
      const q = new URLSearchParams(location.search).get("delay");
      this.playout = q !== null ? Number(q) / 1000 : (r.algorithmic_delay_ms + 400) / 1000;
      const delay = this.delayNode = new DelayNode(this.ctx, {maxDelayTime: 10, delayTime: Math.min(this.playout, 10)});
      this.fixedPlayout = q !== null;
      source.connect(delay).connect(this.ctx.destination);
      source.start(this.startTime);
      $("playout").textContent = `${Math.round(this.playout * 1000)} ms`;
    } else {
      $("playout").textContent = "- (live)";
    }
    live.state = "streaming";
    status(this.kind === "file" ? "streaming the file..." : "listening: speak now");
    requestAnimationFrame(() => this.draw());
  }

  onCapture(m) {
    if (this.closed) return;
    if (m.type === "pcm") {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(m.pcm);
      this.sent.push([m.end, performance.now()]);
      if (this.sent.length > 3000) this.sent.splice(0, 1000);
    } else if (m.type === "done") {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({type: "stop"}));
      live.state = "finishing";
    }
  }

  captureTime(sample) {  // performance.now() at which input sample `sample` was captured
    for (const [end, t] of this.sent) {
      if (end >= sample) return t - (end - sample) / this.rate * 1000;
    }
    return null;
  }

  onMessage(e) {
    if (typeof e.data === "string") {
      let m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === "ready") this.onReady(m);
      else if (m.type === "error") {
        status(`server: ${m.message}${m.hint ? " (" + m.hint + ")" : ""}`, true);
        if (this.onRefused) this.onRefused(new Error(m.message));
      } else if (m.type === "end") {
        live.ended = true;
        live.state = "ended";
        status(`done: ${m.frames} frames, ${m.sent} shown, ${m.dropped} skipped as too late`);
        this.finish(false);
      }
      return;
    }
    const now = performance.now();
    const dv = new DataView(e.data);
    const n = dv.getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(e.data, 4, n)));
    const jpeg = new Uint8Array(e.data, 4 + n);
    const captured = this.captureTime(Math.ceil(header.t_end * this.rate));
    const latency = captured === null ? null : now - captured;
    if (latency !== null) this.latencies.push(latency);
    this.servers.push(header.server_ms);
    this.arrivals.push(now);
    live.frames++;
    live.skipped = header.dropped;
    const h = fnv1a(jpeg);
    if (header.speech) live.speechFrames++;
    if (h !== this.lastHash) {
      live.distinct++;
      if (header.speech) live.speechDistinct++;
    }
    this.lastHash = h;
    if (live.log.length < 5000) live.log.push({i: header.i, t: header.t, speech: header.speech, hash: h, latency});
    this.queue.push({t: header.t, url: URL.createObjectURL(new Blob([jpeg], {type: "image/jpeg"}))});
  }

  show(f) {
    const img = $("frame");
    const old = img.dataset.url;
    img.src = f.url;
    img.dataset.url = f.url;
    if (old) URL.revokeObjectURL(old);
  }

  draw() {
    if (this.closed && !this.queue.length) return;
    let pick = null;
    // A file's frame is shown when the audio being heard reaches it; the microphone's as soon as it arrives.
    const heard = this.kind === "file" ? this.ctx.currentTime - this.startTime - this.delayNode.delayTime.value
      : Infinity;
    while (this.queue.length && this.queue[0].t <= heard) {
      if (pick) URL.revokeObjectURL(pick.url);
      pick = this.queue.shift();
    }
    if (pick) this.show(pick);
    const now = performance.now();
    if (now - this.lastStats > 250) {
      this.lastStats = now;
      while (this.arrivals.length && this.arrivals[0] < now - 1000) this.arrivals.shift();
      live.fps = this.arrivals.length;
      const lat = this.latencies.slice(-25), srv = this.servers.slice(-25);
      live.latencyMs = median(lat);
      live.serverMs = median(srv);
      $("latency").textContent = live.latencyMs === null ? "-" : `${Math.round(live.latencyMs)} ms (median of last ${lat.length})`;
      $("server").textContent = live.serverMs === null ? "-" : `${Math.round(live.serverMs)} ms`;
      $("fps").textContent = `${live.fps}`;
      $("frames").textContent = `${live.frames} / ${live.skipped}`;
      this.adaptPlayout(lat);
    }
    if (!this.closed || this.queue.length) requestAnimationFrame(() => this.draw());
  }

  adaptPlayout(recent) {
    // A jitter buffer for the file: when frames come back later than the audio is heard (a slow machine), the
    // playback delay grows, over a second (a brief slow-down of the sound), to the 90th percentile of the measured
    // latency + 200 ms, so that frames and sound stay in sync. It never shrinks: that would skip audio.
    if (this.kind !== "file" || this.fixedPlayout || recent.length < 10) return;
    const s = [...recent].sort((a, b) => a - b);
    const want = Math.min(9.5, s[Math.floor(0.9 * (s.length - 1))] / 1000 + 0.2);
    if (want <= this.playout + 0.05) return;
    const t = this.ctx.currentTime;
    const p = this.delayNode.delayTime;
    p.cancelScheduledValues(t);
    p.setValueAtTime(p.value, t);
    p.linearRampToValueAtTime(want, t + 1.0);
    this.playout = want;
    $("playout").textContent = `${Math.round(want * 1000)} ms (grown to the measured latency)`;
  }

  onClose(e) {
    if (!live.ended && !this.closed) {
      const why = e.code === 1009 ? "a message was over the server's size limit" : (e.reason || `code ${e.code}`);
      status(`the server closed the stream: ${why}`, true);
    }
    this.finish(false);
  }

  stop() {
    if (this.fileSource) { try { this.fileSource.stop(); } catch (e) { /* not started */ } }
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
    if (this.node) this.node.port.postMessage({type: "stop"});  // flushes the last chunk, then "done" -> stop
  }

  finish(closeSocket) {
    if (this.closed) return;
    this.closed = true;
    $("stop").disabled = true;
    $("play").disabled = $("mic").disabled = false;
    if (closeSocket && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close();
    if (this.media) this.media.getTracks().forEach((t) => t.stop());
    // Let a file's delayed playback finish (and its last frames be shown) before closing the audio.
    const wait = this.kind === "file" ? (this.playout || 0) * 1000 + 500 : 0;
    setTimeout(() => { if (this.ctx) this.ctx.close(); }, wait);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) setTimeout(() => this.ws.close(), wait);
  }
}

async function startSession(kind) {
  if (session && !session.closed) session.finish(true);
  Object.assign(live, {state: "starting", frames: 0, skipped: 0, distinct: 0, speechFrames: 0, speechDistinct: 0,
                       latencyMs: null, serverMs: null, fps: 0, ended: false, log: []});
  session = new Session(kind);
  $("stop").disabled = false;
  $("play").disabled = $("mic").disabled = true;
  try {
    await session.begin();
  } catch (e) {
    status(e.message || String(e), true);
    live.state = "failed";
    session.finish(true);
  }
}

$("avatar").addEventListener("change", showAvatar);
$("play").addEventListener("click", () => startSession("file"));
$("mic").addEventListener("click", () => startSession("mic"));
$("stop").addEventListener("click", () => { if (session) session.stop(); });
loadAvatars();

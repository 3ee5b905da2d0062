// Audio capture on the audio thread: mono 16-bit PCM chunks of `chunk` samples posted to the page, from the
// audio frame `start` on (so a file's first sample is the stream's first sample) and for at most `limit` samples.
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.chunk = o.chunk || 960;
    this.start = o.start || 0;     // audio frame (context sample index) of the first sample to capture
    this.limit = o.limit || Infinity;
    this.buf = new Int16Array(this.chunk);
    this.n = 0;
    this.total = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "stop") { this.flush(); this.finish(); }
      if (e.data && e.data.type === "begin") { this.start = e.data.start; }
    };
  }
  flush() {
    if (this.n > 0) {
      const out = this.buf.slice(0, this.n);
      this.port.postMessage({type: "pcm", pcm: out.buffer, end: this.total}, [out.buffer]);
      this.buf = new Int16Array(this.chunk);
      this.n = 0;
    }
  }
  finish() {
    if (this.running) { this.running = false; this.port.postMessage({type: "done", total: this.total}); }
  }
  process(inputs) {
    if (!this.running) return false;
    const chans = inputs[0];
    if (!chans || chans.length === 0) return true;
    const len = chans[0].length;
    for (let i = 0; i < len; i++) {
      if (currentFrame + i < this.start) continue;
      let v = 0;
      for (let c = 0; c < chans.length; c++) v += chans[c][i];
      v = Math.max(-1, Math.min(1, v / chans.length));
      this.buf[this.n++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
      this.total++;
      if (this.n === this.chunk) this.flush();
      if (this.total >= this.limit) { this.flush(); this.finish(); return false; }
    }
    return true;
  }
}
registerProcessor("capture", Capture);

"""Live motion: audio arriving in chunks -> the person's lower-face motion per output frame, with a bounded delay.

The offline path (`predict_motion`) sees the whole utterance. A live stream cannot: every stage here works on what
has arrived plus a fixed, stated look-ahead, and keeps only bounded state. The live engine (nerf_talk/live.py's
LiveStream) chains these stages with the causal head-pose and blink generators (generate.py, through drive.py) and
the renderer.

Stages (each its own class, each testable against its offline counterpart):
  1. `StreamResampler`: input rate -> 16 kHz mono with scipy's polyphase filter, on overlapping windows, so the
     output equals resample_poly on the whole signal (a few input samples of look-ahead: the filter's half length).
  2. `FeatureStream`: per-model-frame audio features in blocks of `hop_frames`, each computed by
     audio_features.compute_features on a window of `context_s` past audio + the block + `lookahead_s` future
     audio. Energy, log-mel and pitch are local (21 ms of look-ahead at most) and equal the offline ones exactly;
     hama's posteriorgram attends over its whole input, so near the window edges it differs from the offline one
     (measured in tests/test_stream.py and docs/LIVE.md).
  3. `RunningStats`: the utterance normalisers (features.Stats) from the frames seen so far (the last
     STATS_WINDOW_S), with priors for the first seconds, never from the future.
  4. `MotionStream`: StreamingPredictor (the network's own `lookahead` frames), the silence gate on the speech seen
     so far plus that look-ahead, the personal adapter (past frames only) and resampling to the avatar's rate.

Algorithmic delay of frame k (the audio of [k/fps, (k+1)/fps) must have arrived, then): the feature look-ahead
(max(lookahead_s, 21 ms)) + the network's look-ahead (160 ms for the shipped model) + up to hop_frames - 1 frames
of blocking + the resampler's few samples: 322 ms at most with the defaults. `LiveStream.algorithmic_delay_s` states it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from nerf_talk import audio_features as af
from nerf_talk.errors import UserError
from nerf_talk.motion import features as mf

MODEL_FPS = 25.0  # = motion.model.MODEL_FPS (not imported: that module imports torch)
FRAME_SAMPLES = int(af.SAMPLE_RATE / MODEL_FPS)  # 640 samples per model frame at 16 kHz
# Samples after the end of a model frame that its log-mel / pitch read: the last 10 ms analysis frame overlapping it
# is centred on the frame's end, and the YIN window reaches half its length (YIN_WIN + one 60 Hz period) beyond.
MEL_LOOKAHEAD = (af.YIN_WIN + int(math.ceil(af.SAMPLE_RATE / af.F0_MIN)) + 1) // 2

STATS_WINDOW_S = 60.0  # running normalisers follow the last minute (a speaker moving nearer the mic, a new room)
WARMUP_S = 3.0  # before this much audio the priors below bound the running normalisers
PRIOR_FLOOR_DB = -55.0  # a noise floor no higher than this while warming up: speech from the first word counts
PRIOR_LEVEL_DB = -30.0  # a loud-speech level no lower than this while warming up: leading room tone is not "loud"


@dataclass(frozen=True)
class StreamConfig:
    """The latency / accuracy trade-offs of a live stream."""

    hop_frames: int = 4  # model frames per feature block (4 = 160 ms): the posteriorgram runs once per block
    context_s: float = 0.6  # past audio the posteriorgram sees before each block (its cost grows with it)
    # Future audio the posteriorgram sees after each block. Measured on the shared speech (docs/LIVE.md), 0 to 300 ms
    # change the streamed motion's agreement with the offline one by under 0.03 of correlation: one frame is kept.
    lookahead_s: float = 0.04
    gate_lookahead: int | None = None  # frames of speech mask the silence gate reads ahead (None: the network's)

    def __post_init__(self):
        if self.hop_frames < 1:
            raise ValueError(f"hop_frames must be >= 1, is {self.hop_frames}")
        if not 0 <= self.lookahead_s <= 2.0 or not 0 <= self.context_s <= 10.0:
            raise ValueError(f"lookahead_s must be in [0, 2] and context_s in [0, 10], got {self.lookahead_s}, "
                             f"{self.context_s}")

    @classmethod
    def for_hardware(cls, gpu: bool | None = None, **settings) -> "StreamConfig":
        """The live defaults for this machine (gpu None: whether torch sees CUDA), then `settings` (a None value
        keeps the default). A GPU runs the recogniser once per 40 ms frame with room to spare: hop 1 and no
        look-ahead, the shortest delay the model allows (181 ms). A CPU cannot afford four times the recogniser's
        work, so it blocks 4 frames with 40 ms of look-ahead (326 ms): the class defaults."""
        if gpu is None:
            import torch

            gpu = torch.cuda.is_available()
        values = {"hop_frames": 1, "lookahead_s": 0.0} if gpu else {}
        values.update({k: v for k, v in settings.items() if v is not None})
        return cls(**values)


# ------------------------------------------------------------------------------------------------ 1. resampling
class StreamResampler:
    """Any rate -> 16 kHz, chunk by chunk, equal to resample_poly(whole, up, down) (tested).

    Output sample n sits at input time n * down / up; resample_poly's filter reaches `half` upsampled taps either
    side, so n is final once input up to n * down / up + half / up has arrived. Each push re-filters a window that
    starts on a multiple of `down` input samples (so its output grid is the global one) far enough back that the
    first new output sample's filter lies inside it, and keeps only the new samples."""

    def __init__(self, rate: int):
        rate = int(rate)
        if not 4000 <= rate <= 192000:
            raise UserError(f"sample rate {rate} Hz is outside 4000-192000 Hz", "send the audio's true rate.")
        g = math.gcd(rate, af.SAMPLE_RATE)
        self.up, self.down = af.SAMPLE_RATE // g, rate // g
        half = 10 * max(self.up, self.down)  # resample_poly's default filter: 2 * 10 * max(up, down) + 1 taps
        self.margin = half // self.up + 2  # input samples the filter reaches either side of an output sample
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # input index of buf[0]
        self.n_in = 0
        self.n_out = 0

    @property
    def delay_s(self) -> float:
        return 0.0 if self.up == self.down else self.margin * self.down / self.up / af.SAMPLE_RATE

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        if self.up == self.down:
            self.n_in += len(x)
            self.n_out += len(x)
            return x
        self.buf = np.concatenate([self.buf, x])
        self.n_in += len(x)
        if final:
            ready = -(-self.n_in * self.up // self.down)  # resample_poly's output length: ceil(n * up / down)
        else:
            ready = max(0, (self.n_in - self.margin) * self.up // self.down)
        if ready <= self.n_out:
            return np.zeros(0, np.float32)
        # Window start: a multiple of `down` at least `margin` input samples before the first new output's time.
        first_in = self.n_out * self.down // self.up
        w0 = max(0, (first_in - self.margin) // self.down * self.down)
        w0 = max(w0, self.buf_start)  # (buf_start is itself a multiple of down, see below)
        y = resample_poly(self.buf[w0 - self.buf_start:], self.up, self.down).astype(np.float32)
        o0 = w0 * self.up // self.down  # global index of y[0]
        out = y[self.n_out - o0: ready - o0]
        self.n_out = ready
        # Keep what the next window can need: from the next window's start on.
        nxt = max(0, (self.n_out * self.down // self.up - self.margin) // self.down * self.down)
        if nxt > self.buf_start:
            self.buf, self.buf_start = self.buf[nxt - self.buf_start:], nxt
        return out


# ------------------------------------------------------------------------------------------------ 2. features
class FeatureStream:
    """16 kHz audio in, per-model-frame features (audio_features.compute_features' dict at 25 fps) out, in blocks.

    Block b holds frames [b H, (b + 1) H) (H = hop_frames); it is computed once the audio reaches the block's end
    plus the look-ahead, from a window starting context_s before the block (on the frame grid, so that every
    analysis frame lines up with the offline one). What a block holds depends only on the audio, not on how it was
    chunked."""

    def __init__(self, cfg: StreamConfig = StreamConfig(), include: tuple[str, ...] = af.FEATURE_NAMES):
        self.cfg, self.include = cfg, tuple(include)
        self.look = max(int(round(cfg.lookahead_s * af.SAMPLE_RATE)), MEL_LOOKAHEAD)
        self.ctx_frames = int(math.ceil(cfg.context_s * MODEL_FPS))
        self.audio = np.zeros(0, np.float32)
        self.audio_start = 0  # sample index of audio[0] (a multiple of FRAME_SAMPLES)
        self.n = 0  # samples received
        self.done = 0  # frames emitted
        self.finished = False

    @property
    def lookahead_s(self) -> float:
        return self.look / af.SAMPLE_RATE

    def push(self, audio16k: np.ndarray, final: bool = False) -> dict[str, np.ndarray]:
        """Returns the features of every newly complete block (frames [done, done + M)); M may be 0."""
        if self.finished:
            raise RuntimeError("the stream has ended")
        a = np.asarray(audio16k, np.float32).reshape(-1)
        if a.size and not np.isfinite(a).all():
            raise UserError("the audio holds NaN or infinite samples")
        self.audio = np.concatenate([self.audio, a])
        self.n += len(a)
        H = self.cfg.hop_frames
        if final:
            self.finished = True
            # As compute_features: ceil(duration * fps) frames, every sample in some frame.
            end = max(self.done, math.ceil(self.n / FRAME_SAMPLES - 1e-6))
        else:
            end = (self.n - self.look) // FRAME_SAMPLES // H * H  # whole blocks whose look-ahead has arrived
        parts = []
        while self.done < end:
            f1 = min(end, self.done + H)
            parts.append(self._block(self.done, f1, final))
            self.done = f1
        keep_from = max(0, self.done - self.ctx_frames) * FRAME_SAMPLES
        if keep_from > self.audio_start:
            self.audio = self.audio[keep_from - self.audio_start:]
            self.audio_start = keep_from
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _block(self, f0: int, f1: int, final: bool) -> dict[str, np.ndarray]:
        w0 = max(0, f0 - self.ctx_frames)  # window start, in frames
        a0 = w0 * FRAME_SAMPLES
        a1 = self.n if final else min(self.n, f1 * FRAME_SAMPLES + self.look)
        window = self.audio[a0 - self.audio_start: a1 - self.audio_start]
        if final:  # as compute_features at the end of a file: silence up to the last frame's end
            window = np.concatenate([window, np.zeros(max(0, f1 * FRAME_SAMPLES - a1), np.float32)])
        pad = 0
        short = int(math.ceil(af.MIN_SECONDS * af.SAMPLE_RATE)) - len(window)
        if short > 0:
            # The very first block can be under compute_features' minimum: lead it with whole frames of silence
            # (the log-mel framing already reads zeros before sample 0; only the posteriorgram sees the difference).
            pad = -(-short // FRAME_SAMPLES)
            window = np.concatenate([np.zeros(pad * FRAME_SAMPLES, np.float32), window])
        feats = af.compute_features(window, MODEL_FPS, n_frames=pad + f1 - w0, include=self.include)
        r0 = pad + f0 - w0
        return {k: v[r0:] for k, v in feats.items()}


# ------------------------------------------------------------------------------------------------ 3. statistics
class RunningStats:
    """features.Stats from the frames seen so far (the last STATS_WINDOW_S), bounded by priors while warming up."""

    def __init__(self, window_s: float = STATS_WINDOW_S):
        self.frames = int(window_s * MODEL_FPS)
        self.mel: deque = deque(maxlen=self.frames)
        self.pitch: deque = deque(maxlen=self.frames)
        self.energy: deque = deque(maxlen=self.frames)
        self.heard: deque = deque(maxlen=self.frames)  # af.phonemes_heard, for the noise floor
        self.seen = 0

    def update(self, feats: dict[str, np.ndarray]) -> mf.Stats:
        self.mel.extend(np.asarray(feats["mel"], np.float32))
        self.pitch.extend(np.asarray(feats["pitch"], np.float32))
        self.energy.extend(np.asarray(feats["energy"], np.float32))
        self.heard.extend(af.phonemes_heard(feats["ppg"]))
        self.seen += len(feats["energy"])
        return self.stats()

    def stats(self) -> mf.Stats:
        s = mf.utterance_stats({"mel": np.asarray(self.mel), "pitch": np.asarray(self.pitch),
                                "energy": np.asarray(self.energy)}, np.asarray(self.heard, bool))
        if self.seen < WARMUP_S * MODEL_FPS:
            s = mf.Stats(s.mel_median, s.f0_median, max(s.level_db, PRIOR_LEVEL_DB), min(s.floor_db, PRIOR_FLOOR_DB))
        return s


# ------------------------------------------------------------------------------------------------ 4. motion
class MotionStream:
    """Model-rate features in, the person's lower-face motion at the output rate out, as predict_motion computes it
    offline (see the module docstring for where they differ)."""

    GATE_REACH = 7  # frames either side that silence_gate's dilation (5) and ramp filter (1) read, plus one (this
    # also covers close_bilabials' +-1 frame)

    def __init__(self, model, fps: float, adapter=None, stats: mf.Stats | None = None,
                 cfg: StreamConfig = StreamConfig()):
        from nerf_talk.motion.predict import StreamingPredictor

        if not fps > 0:
            raise UserError(f"fps must be > 0, is {fps}")
        self.model, self.adapter, self.fps = model, adapter, float(fps)
        self.running = None if stats is not None else RunningStats()
        self.predictor = StreamingPredictor(model, stats if stats is not None else mf.Stats(
            np.zeros(af.N_MELS, np.float32), 0.0, PRIOR_LEVEL_DB, PRIOR_FLOOR_DB))
        self.lookahead = int(model.net.cfg.lookahead)
        self.gate_look = self.lookahead if cfg.gate_lookahead is None else int(cfg.gate_lookahead)
        self.speech = np.zeros(0, bool)  # model-rate speech mask from speech_start on
        self.ppg = np.zeros((0, len(model.vocab)), np.float32)  # the posteriorgram of the same frames
        self.speech_start = 0
        self.coeffs = np.zeros((0, model.net.cfg.n_coeffs), np.float32)  # ungated, from coeffs_start on
        self.coeffs_start = 0
        self.gated = 0  # model frames gated and adapted so far
        self.ctx = np.zeros((0, model.net.cfg.n_coeffs), np.float32)  # the adapter's past frames
        ctx_len = -min(adapter.context) if adapter is not None else 0
        self.ctx_len = ctx_len
        k = adapter.components.shape[1] // 3 if adapter is not None else len(model.basis.points)
        self.motion = np.zeros((0, k, 3), np.float32)  # model-rate motion (the person's points) from motion_start
        self.motion_speech = np.zeros(0, np.float32)
        self.motion_start = 0
        self.out = 0  # output frames emitted
        self.n_model = None  # model frames in all, known at the end

    @property
    def lookahead_s(self) -> float:
        return max(self.lookahead, self.gate_look) / MODEL_FPS

    def push(self, feats: dict[str, np.ndarray], final: bool = False, seconds: float | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Features of the next model frames -> (motion [M, K, 3], speech [M] bool) of the next output frames.
        The final push gives the audio's duration in `seconds`: the output has ceil(seconds * fps) frames."""
        if feats:
            if self.running is not None:
                self.predictor.stats = self.running.update(feats)
            stats = self.predictor.stats
            self.speech = np.concatenate([self.speech, mf.speech_mask(feats, stats)])
            self.ppg = np.concatenate([self.ppg, np.asarray(feats["ppg"], np.float32)])
        n_in = self.speech_start + len(self.speech)
        if final:
            self.n_model = n_in
        c = self.predictor.push(feats if feats else _empty_features(), final=final)
        self.coeffs = np.concatenate([self.coeffs, c])
        self._gate(final)
        return self._resample(final, seconds)

    def _gate(self, final: bool) -> None:
        from nerf_talk.motion.predict import close_bilabials, silence_gate

        known = self.speech_start + len(self.speech)  # speech mask frames known
        have = self.coeffs_start + len(self.coeffs)  # network outputs known
        upto = have if final else min(have, known - self.gate_look)
        lo = max(self.speech_start, self.gated - self.GATE_REACH)
        hi = min(known, upto + 1)
        # (np.convolve in visemes.ppg_to_visemes needs a window at least as long as its 3-frame kernel)
        if upto <= self.gated or (hi - lo < 3 and not final):
            return
        # silence_gate on the mask from GATE_REACH frames before the first frame to gate (or from frame 0, as
        # offline) to the newest frame known: exact where GATE_REACH future frames are known, and at the end.
        g = silence_gate(self.speech[lo - self.speech_start:], MODEL_FPS)[self.gated - lo: upto - lo]
        c = self.coeffs[self.gated - self.coeffs_start: upto - self.coeffs_start] * g[:, None]
        # predict.close_bilabials reads the posteriorgram one frame either side: run it on [lo, upto + 1) (the
        # next frame is known: upto <= known - gate_look) and keep the rows being gated.
        pad = np.zeros((self.gated - lo, c.shape[1]), np.float32)
        tail = np.zeros((hi - upto, c.shape[1]), np.float32)
        win = slice(lo - self.speech_start, hi - self.speech_start)
        c = close_bilabials(self.model, np.concatenate([pad, c, tail]), {"ppg": self.ppg[win]},
                            self.speech[win])[self.gated - lo: upto - lo]
        if self.adapter is not None:
            full = np.concatenate([self.ctx, c])
            m = self.adapter.apply(full)[len(self.ctx):]
            self.ctx = full[-self.ctx_len:] if self.ctx_len else full[:0]
        else:
            m = self.model.basis.decode(c)
        sp = self.speech[self.gated - self.speech_start: upto - self.speech_start]
        self.motion = np.concatenate([self.motion, m.astype(np.float32)])
        self.motion_speech = np.concatenate([self.motion_speech, sp.astype(np.float32)])
        self.gated = upto
        # Drop what no later step reads: coefficients already gated, speech older than the gate's reach.
        self.coeffs, self.coeffs_start = self.coeffs[upto - self.coeffs_start:], upto
        drop = max(0, upto - self.GATE_REACH - self.speech_start)
        self.speech, self.ppg, self.speech_start = self.speech[drop:], self.ppg[drop:], self.speech_start + drop

    def _resample(self, final: bool, seconds: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Model-rate motion -> output frames, as predict_motion: linear interpolation between frame centres."""
        have = self.motion_start + len(self.motion)
        if abs(self.fps - MODEL_FPS) < 1e-6:
            n_out = have
        else:
            if final:
                duration = seconds if seconds is not None else self.n_model / MODEL_FPS
                n_out = max(1, math.ceil(duration * self.fps - 1e-6))  # as predict_motion
            else:
                # output frame n at (n + 0.5) / fps needs model frame floor(t * 25 - 0.5) + 1
                n_out = max(0, int(math.floor(((have - 1) + 0.5) / MODEL_FPS * self.fps - 0.5)) + 1)
        if n_out <= self.out:
            return np.zeros((0,) + self.motion.shape[1:], np.float32), np.zeros(0, bool)
        if abs(self.fps - MODEL_FPS) < 1e-6:
            m = self.motion[self.out - self.motion_start: n_out - self.motion_start]
            sp = self.motion_speech[self.out - self.motion_start: n_out - self.motion_start] > 0.5
        else:
            t_out = (np.arange(self.out, n_out) + 0.5) / self.fps
            t_model = (np.arange(self.motion_start, have) + 0.5) / MODEL_FPS
            m = mf.interp_frames(self.motion, t_model, t_out).astype(np.float32)
            sp = mf.interp_frames(self.motion_speech, t_model, t_out) > 0.5
        self.out = n_out
        # Keep the model frames the next output frame interpolates from.
        first_needed = max(self.motion_start, int(math.floor((self.out + 0.5) / self.fps * MODEL_FPS - 0.5)))
        drop = first_needed - self.motion_start
        if drop > 0:
            self.motion, self.motion_speech = self.motion[drop:], self.motion_speech[drop:]
            self.motion_start = first_needed
        return m, sp


def _empty_features() -> dict[str, np.ndarray]:
    n_ppg = len(af.phoneme_vocabulary())
    return {"ppg": np.zeros((0, n_ppg), np.float32), "mel": np.zeros((0, af.N_MELS), np.float32),
            "pitch": np.zeros((0, 2), np.float32), "energy": np.zeros(0, np.float32)}


def stream_motion(model, audio: np.ndarray, sample_rate: int, fps: float, adapter=None, chunk_s: float = 0.02,
                  cfg: StreamConfig = StreamConfig(), stats: mf.Stats | None = None) -> dict:
    """predict_motion's streaming counterpart on a whole array fed in chunks of chunk_s: {"lower_face_motion",
    "speech"} with the same number of frames (for tests and benchmarks)."""
    from nerf_talk.motion.predict import to_mono16k

    mono = to_mono16k(audio, 16000)  # with its own rate: channels averaged, integer PCM scaled; no resampling
    rs, fs = StreamResampler(sample_rate), FeatureStream(cfg)
    ms = MotionStream(model, fps, adapter, stats, cfg)
    step = max(1, int(chunk_s * sample_rate))
    motion, speech = [], []
    n16 = 0
    for i in range(0, len(mono), step):
        a = rs.push(mono[i:i + step])
        n16 += len(a)
        m, s = ms.push(fs.push(a))
        motion.append(m), speech.append(s)
    a = rs.push(np.zeros(0, np.float32), final=True)
    n16 += len(a)
    if n16 < af.MIN_SECONDS * af.SAMPLE_RATE:
        raise UserError(f"the audio is {n16 / af.SAMPLE_RATE:.3f} s long, under {af.MIN_SECONDS} s")
    m, s = ms.push(fs.push(a, final=True), final=True, seconds=n16 / af.SAMPLE_RATE)
    motion.append(m), speech.append(s)
    return {"lower_face_motion": np.concatenate(motion), "speech": np.concatenate(speech)}


def pcm_to_float(pcm: np.ndarray | bytes) -> np.ndarray:
    """int16 little-endian bytes, an int16 array or a float array -> float32 [S] in [-1, 1]."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise UserError(f"an audio chunk of {len(pcm)} bytes is not 16-bit PCM (an odd byte count)",
                            "send mono 16-bit little-endian samples")
        return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    a = np.asarray(pcm)
    if a.ndim != 1:
        raise UserError(f"an audio chunk must be mono [samples], got shape {a.shape}")
    if a.dtype.kind in "iu":
        return a.astype(np.float32) / 32768.0
    a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise UserError("the audio holds NaN or infinite samples")
    return a

"""Running the generic model on new speech: any sample rate and channel count in, per-video-frame motion out.

    model = load_default_model()
    out = predict_motion(model, audio, sample_rate, fps)       # audio [S] or [S, C] or [C, S] (C <= 8 channels)
    out["lower_face_motion"]  [N, K, 3] identity-normalised (generic space; pass adapter= for a person's space)
    out["blink"]              [N] blink probability from the audio (phrase-boundary blinks; see generate.py)
    out["mouth_opening"]      [N] inner-lip gap change over face size (metrics.mouth_opening)
    out["speech"]             [N] bool voice activity
with N = ceil(duration * fps). The network runs at MODEL_FPS; its output is interpolated to the frame centres of
`fps`.

Silence: frames further than SILENCE_MARGIN_S from any detected speech are faded to the neutral face (coefficients
0, a closed mouth). The network already learns this from the data; the gate makes it a guarantee, for room tone and
breaths the network has never heard.

Bilabials: where the phoneme recogniser hears /p b m/, the coefficients are pulled toward the model's closed-lip
viseme motion in proportion to that posterior (close_bilabials). The network alone closes the lips too little on
them (1.8 min of real motion hold few clear closures, and a regression to the mean blurs short ones); the pull needs
one frame of look-ahead, inside the network's own. On held-out clips it raised mouth-opening correlation (lieu
0.236 -> 0.281, reagan 0.093 -> 0.124) and lowered landmark error (docs/MOTION_MODEL.md).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation, uniform_filter1d
from scipy.signal import resample_poly

from nerf_talk import audio_features as af
from nerf_talk.errors import UserError
from nerf_talk.motion import features as mf
from nerf_talk.motion.metrics import mouth_opening
from nerf_talk.motion.model import MODEL_FPS, MotionModel

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "audio2motion.safetensors"
MIN_RATE, MAX_RATE = 4000, 192000
SILENCE_MARGIN_S = 0.2  # speech keeps the mouth free this long before and after it (anticipation, release)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, device: str) -> MotionModel:
    return MotionModel.load(path, device)


def load_default_model(device: str = "cpu") -> MotionModel:
    """The generic model shipped in the package (nerf_talk/assets/audio2motion.*); see docs/MOTION_MODEL.md."""
    if not DEFAULT_MODEL.exists():
        raise UserError(f"the shipped motion model {DEFAULT_MODEL} is missing",
                        "reinstall nerf_talk, or train one with scripts/train_default_motion.py")
    return _load_cached(str(DEFAULT_MODEL), device)


def to_mono16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[S] float32 at 16 kHz from audio [S], [S, C] or [C, S] (channels averaged) at `sample_rate`."""
    a = np.asarray(audio)
    if a.ndim == 2:
        # The channel axis is the short one: a stereo file is [S, 2] from most readers, [2, S] from some.
        a = a.mean(axis=1 if a.shape[1] <= 8 and a.shape[0] > a.shape[1] else 0)
    elif a.ndim != 1:
        raise UserError(f"audio must be [samples] or [samples, channels], got shape {a.shape}")
    if a.dtype.kind in "iu":  # integer PCM: scale to [-1, 1]
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    sr = int(sample_rate)
    if not MIN_RATE <= sr <= MAX_RATE:
        raise UserError(f"sample rate {sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz",
                        "give the audio's true sample rate (speech is usually 8-48 kHz).")
    if sr != af.SAMPLE_RATE and a.size:
        g = math.gcd(sr, af.SAMPLE_RATE)
        a = resample_poly(a, af.SAMPLE_RATE // g, sr // g).astype(np.float32)
    return a


@torch.no_grad()
def run_network(model: MotionModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [N, D] -> (coeffs [N, C], blink probability [N]) at MODEL_FPS."""
    dev = next(model.net.parameters()).device
    coeffs, logit = model.net(torch.from_numpy(x)[None].to(dev))
    return coeffs[0].cpu().numpy(), torch.sigmoid(logit[0]).cpu().numpy()


def silence_gate(speech: np.ndarray, fps: float = MODEL_FPS) -> np.ndarray:
    """[N] in [0, 1]: 1 near speech, fading to 0 beyond SILENCE_MARGIN_S from it (a 2-frame ramp)."""
    near = binary_dilation(np.asarray(speech, bool), iterations=max(1, int(round(SILENCE_MARGIN_S * fps))))
    return np.clip(uniform_filter1d(near.astype(np.float32), 3, mode="nearest") * 1.5 - 0.25, 0.0, 1.0) * near


def close_bilabials(model: MotionModel, coeffs: np.ndarray, features: dict[str, np.ndarray],
                    speech: np.ndarray) -> np.ndarray:
    """coeffs [N, C] at MODEL_FPS pulled toward the closed-lip viseme motion by the /p b m/ posterior of each frame
    (posteriorgram spread over +-1 frame; 0 outside speech)."""
    from nerf_talk.motion import visemes as vz

    vis = vz.ppg_to_visemes(np.asarray(features["ppg"]), speech, tuple(model.vocab), spread=1)
    w = np.clip(vis[:, vz.V["bilabial"]], 0.0, 1.0)[:, None]
    closed = np.asarray(model.viseme_motion, np.float32)[vz.V["bilabial"]][None]
    return (coeffs * (1.0 - w) + w * closed).astype(np.float32)


def motion_coeffs(model: MotionModel, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coeffs [M, C], blink probability [M], speech [M] bool) of per-frame features at MODEL_FPS: the network,
    faded to the neutral face away from speech (silence_gate), with the bilabial closures (close_bilabials)."""
    coeffs, blink = run_network(model, mf.input_features(features))
    speech = mf.speech_mask(features)
    coeffs = (coeffs * silence_gate(speech)[:, None]).astype(np.float32)
    return close_bilabials(model, coeffs, features, speech), blink, speech


def predict_motion(model: MotionModel, audio: np.ndarray, sample_rate: int, fps: float, adapter=None) -> dict:
    """Motion for every video frame of `audio` at `fps` (see the module docstring). Raises UserError for empty,
    too short (< audio_features.MIN_SECONDS) or non-finite audio, and for sample rates outside 4-192 kHz."""
    if not fps > 0:
        raise UserError(f"fps must be > 0, is {fps}")
    a = to_mono16k(audio, sample_rate)
    feats = af.compute_features(a, MODEL_FPS)  # raises UserError for empty / short / non-finite audio
    coeffs, blink, speech = motion_coeffs(model, feats)  # [M, C] at MODEL_FPS
    # The adapter reads past frames, so it runs at the model's rate; the motion is resampled afterwards.
    motion = adapter.apply(coeffs) if adapter is not None else model.basis.decode(coeffs)  # [M, K, 3]
    duration = len(a) / af.SAMPLE_RATE
    n = max(1, math.ceil(duration * fps - 1e-6))
    if abs(fps - MODEL_FPS) > 1e-6 or n != len(coeffs):
        t_model = (np.arange(len(coeffs)) + 0.5) / MODEL_FPS
        t_out = (np.arange(n) + 0.5) / fps
        coeffs, motion, blink = (mf.interp_frames(v, t_model, t_out) for v in (coeffs, motion, blink))
        speech = mf.interp_frames(speech.astype(np.float32), t_model, t_out) > 0.5
    return {"lower_face_motion": motion.astype(np.float32), "coeffs": coeffs.astype(np.float32),
            "blink": blink.astype(np.float32), "mouth_opening": mouth_opening(motion, model.basis.points),
            "speech": speech, "fps": float(fps), "points": list(model.basis.points)}


class StreamingPredictor:
    """Chunk-by-chunk inference with a bounded delay: push per-frame features (at MODEL_FPS) as they arrive, get
    the coefficients of every frame whose look-ahead is complete. Output equals the offline network's on the same
    features (see tests), delayed by model.net.cfg.lookahead frames.

    `stats` are the utterance normalisers (features.Stats), e.g. from the first seconds of the stream.
    """

    def __init__(self, model: MotionModel, stats: mf.Stats):
        self.model, self.stats = model, stats
        self.ctx = model.net.receptive_left
        self.look = model.net.cfg.lookahead
        self.buf = np.zeros((0, model.net.in_dim), np.float32)  # [ctx + pending, D]
        self.buf_start = 0  # global index of buf[0]
        self.done = 0  # frames already returned

    def push(self, features: dict[str, np.ndarray], final: bool = False) -> np.ndarray:
        """features: a chunk of per-frame features; returns coeffs [M, C] for the next M frames (M may be 0)."""
        self.buf = np.concatenate([self.buf, mf.input_features(features, self.stats)])
        end = self.buf_start + len(self.buf)
        ready = end if final else end - self.look
        if ready <= self.done:
            return np.zeros((0, self.model.net.cfg.n_coeffs), np.float32)
        coeffs, _ = run_network(self.model, self.buf)
        out = coeffs[self.done - self.buf_start: ready - self.buf_start]
        self.done = ready
        drop = max(0, self.done - self.ctx - self.buf_start)  # keep receptive_left frames of context
        self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return out

"""Synthetic training speech: espeak-ng voices in many languages with known phoneme timings -> viseme targets.

Real talking-head clips are scarce here (three short clips), and they are all American English. Text-to-speech adds
the other languages, voices, speaking rates and pitches, with the phonemes known exactly (not recognised), so the
model learns to read the posteriorgram of unfamiliar voices. Each utterance is:
  several sentences of one language, joined with pauses; espeak-ng at a random rate (wpm), pitch and voice variant;
  augmented: random gain, background noise at 5-40 dB SNR (white or pink), a round trip through a random sample
  rate in 8-48 kHz (8 kHz drops everything over 4 kHz, as a phone line does);
  turned into the same per-frame features as real clips (audio_features.compute_features at MODEL_FPS) and a viseme
  track [N, V] from the phoneme timings (visemes.viseme_track), written as one .npz shard (corpus.save_synthetic).
The motion targets are made from the viseme track at training time (corpus.synthetic_targets), with the per-viseme
motion learned from the real clips, so shards do not depend on any basis.

TTS: nerf_talk.speech.synthesize when that module is present; otherwise libespeak-ng directly through ctypes
(`espeak_timed`): the library reports each phoneme (IPA) with its sample position while it synthesises.
"""

from __future__ import annotations

import ctypes
import logging
import math
import random
from pathlib import Path

import numpy as np

from nerf_talk import audio_features as af
from nerf_talk.motion import corpus as cp
from nerf_talk.motion import visemes as vz
from nerf_talk.motion.model import MODEL_FPS
from nerf_talk.motion.predict import to_mono16k

log = logging.getLogger("nerf_talk.motion")

# A few everyday sentences per language (written for this project). espeak-ng voice names as keys.
SENTENCES = {
    "en-us": ["Good morning, my name is Paul and I build small boats.", "The weather will be warm and bright tomorrow.",
              "Please remember to bring the maps before we leave.", "We measured every part of the bridge twice.",
              "My brother plays the violin in a band.", "Five big ships moved past the harbour at noon.",
              "Would you like some more bread and butter?", "Thank you all for coming to this meeting."],
    "en": ["I think we should open the window, it is rather warm.", "Maybe the museum opens at nine on Mondays.",
              "Beautiful blue paint covers the old boat.", "The pupils wrote poems about the moon."],
    "de": ["Guten Morgen, wie geht es dir heute?", "Wir fahren morgen mit dem Zug nach München.",
           "Das Buch liegt auf dem großen braunen Tisch.", "Meine Mutter backt am Sonntag immer Brot.",
           "Bitte mach das Fenster wieder zu.", "Im Sommer schwimmen wir oft im blauen Meer."],
    "fr": ["Bonjour, je voudrais un café et un petit pain.", "Nous partons en vacances au bord de la mer.",
           "Mon père parle beaucoup de politique.", "Le musée ouvre ses portes à midi.",
           "Pouvez-vous m'aider à porter ce paquet?", "Il fait beau, allons marcher au parc."],
    "es": ["Buenos días, me llamo Pablo y vivo en Madrid.", "Mañana vamos a comprar pan y manzanas.",
           "El perro blanco duerme bajo la mesa.", "Muchas gracias por venir a la reunión.",
           "¿Puedes abrir la puerta, por favor?", "Mi madre prepara una paella muy buena."],
    "it": ["Buongiorno, vorrei un biglietto per Milano.", "Mio padre beve sempre un caffè dopo pranzo.",
           "La biblioteca apre alle nove del mattino.", "Abbiamo mangiato una pizza molto buona.",
           "Per favore, parla più piano."],
    "pt": ["Bom dia, o meu nome é Maria e moro em Lisboa.", "Vamos ao mercado comprar peixe e batatas.",
           "O barco partiu para o Brasil ontem.", "Muito obrigado pela ajuda de ontem."],
    "nl": ["Goedemorgen, mag ik een kopje koffie?", "Mijn broer woont in een mooi huis bij de zee.",
           "Morgen gaan we met de fiets naar de markt."],
    "pl": ["Dzień dobry, poproszę bilet do Warszawy.", "Mój brat mieszka w małym mieście.",
           "Jutro pójdziemy do parku z psem."],
    "ru": ["Доброе утро, как у вас дела?", "Мы пойдём в музей в понедельник.", "Моя мама варит очень вкусный борщ."],
    "sv": ["God morgon, vill du ha en kopp kaffe?", "Vi bor i ett stort hus vid sjön."],
    "tr": ["Günaydın, bugün hava çok güzel.", "Babam her sabah ekmek alıyor."],
    "hi": ["नमस्ते, आप कैसे हैं?", "मेरा भाई बाज़ार गया है।"],
    "cmn": ["你好，我们明天去北京。", "妈妈买了很多苹果。"],
}
VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f4", "+croak", "+klatt")


# ------------------------------------------------------------------------------------------------ espeak-ng
class _Event(ctypes.Structure):
    """speak_lib.h espeak_EVENT (the union `id` read as its char[8] member, which holds a phoneme's IPA)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7
_AUDIO_SYNCHRONOUS, _INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 2, 0x1, 0x2
_RATE, _PITCH = 1, 3
_CHARS_UTF8, _POS_CHARACTER = 1, 1


class _Espeak:
    """libespeak-ng in synchronous mode; one per process (the library has global state)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        self.rate = self.lib.espeak_Initialize(_AUDIO_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._cb = _CALLBACK(self._on_audio)  # kept referenced: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.sample, bytes(e.id).split(b"\0")[0].decode("utf-8", "replace")))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int):
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        # Each phoneme lasts until the next event; "" events are pauses and word/clause boundaries.
        starts = [s / self.rate for s, _ in self._events] + [len(audio) / self.rate]
        phonemes = [(starts[i], starts[i + 1], ph) for i, (_, ph) in enumerate(self._events) if ph]
        return audio, self.rate, phonemes


_engine: _Espeak | None = None


def espeak_timed(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50):
    """(audio float32 [S], sample_rate, phonemes [(start_s, end_s, ipa)]) from nerf_talk.speech when present (the
    project's TTS module), else from libespeak-ng directly."""
    global _engine
    try:
        from nerf_talk import speech  # noqa: F401  (another module of the project; optional here)

        return speech.synthesize(text, voice=voice, rate_wpm=rate_wpm, pitch=pitch)
    except ImportError:
        pass
    if _engine is None:
        _engine = _Espeak()
    return _engine.synthesize(text, voice, rate_wpm, pitch)


# ------------------------------------------------------------------------------------------------ augmentation
def augment(audio: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Gain, background noise and a sample-rate round trip; returns 16 kHz mono and what was done."""
    info = {}
    a = audio.astype(np.float64) * 10 ** (rng.uniform(-20, 3) / 20)
    if rng.random() < 0.8:
        snr = rng.uniform(5, 40)
        noise = rng.standard_normal(len(a))
        if rng.random() < 0.5:  # pink: 1/f power, by a running sum leak (a cheap 1-pole low-pass)
            from scipy.signal import lfilter

            noise = lfilter([1.0], [1.0, -0.97], noise)
        p_sig = np.mean(a[np.abs(a) > 1e-4] ** 2) if np.any(np.abs(a) > 1e-4) else 1e-8
        a = a + noise * np.sqrt(p_sig / 10 ** (snr / 10) / np.mean(noise ** 2))
        info["snr_db"] = round(float(snr), 1)
    via = int(rng.choice([8000, 11025, 16000, 22050, 32000, 44100, 48000]))
    info["via_rate"] = via
    a = to_mono16k(a.astype(np.float32), sr)  # sr -> 16 kHz
    if via != af.SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(via, af.SAMPLE_RATE)
        a = resample_poly(a, via // g, af.SAMPLE_RATE // g).astype(np.float32)
        a = to_mono16k(a, via)
    return np.clip(a, -1, 1).astype(np.float32), info


def make_utterance(seed: int) -> tuple[dict, np.ndarray, dict]:
    """One synthetic utterance: (features at MODEL_FPS, viseme track [N, V], info)."""
    rng = np.random.default_rng(seed)
    lang = str(rng.choice(sorted(SENTENCES)))
    voice = lang + str(rng.choice(VARIANTS))
    rate = int(rng.integers(110, 280))
    pitch = int(rng.integers(15, 85))
    pieces, phonemes, t = [], [], 0.0
    sr = None
    lead = rng.uniform(0.2, 0.8)
    for k in range(int(rng.integers(2, 5))):
        text = str(rng.choice(SENTENCES[lang]))
        audio, sr, ph = espeak_timed(text, voice, rate, pitch)
        gap = lead if k == 0 else rng.uniform(0.1, 0.9)
        pieces.append(np.zeros(int(gap * sr), np.float32))
        t += gap
        pieces.append(audio)
        phonemes += [(s + t, e + t, p) for s, e, p in ph]
        t += len(audio) / sr
    pieces.append(np.zeros(int(rng.uniform(0.2, 0.8) * sr), np.float32))
    audio = np.concatenate(pieces)
    a16, aug = augment(audio, sr, rng)
    n = int(len(a16) / af.SAMPLE_RATE * MODEL_FPS)
    feats = af.compute_features(a16, MODEL_FPS, n)
    vis = vz.viseme_track(phonemes, MODEL_FPS, n)
    info = {"lang": lang, "voice": voice, "rate_wpm": rate, "pitch": pitch, "seconds": len(a16) / af.SAMPLE_RATE,
            "seed": seed, **aug}
    return feats, vis, info


def _write(args) -> str:
    seed, out = args
    path = Path(out) / f"syn_{seed:06d}.npz"
    if not path.exists():
        feats, vis, info = make_utterance(seed)
        cp.save_synthetic(path, feats, vis, info)
    return str(path)


def generate(out_dir: str | Path, n: int, workers: int = 1, first_seed: int = 0) -> list[Path]:
    """Write `n` synthetic utterances (seeds first_seed..first_seed+n-1) into out_dir; existing ones are kept."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(first_seed + i, str(out)) for i in range(n)]
    from tqdm import tqdm

    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            paths = list(tqdm(pool.imap_unordered(_write, jobs), total=n, desc="synthetic speech"))
    else:
        paths = [_write(j) for j in tqdm(jobs, desc="synthetic speech")]
    return sorted(Path(p) for p in paths)

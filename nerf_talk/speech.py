"""Text to speech with phoneme timings: libespeak-ng through ctypes (no Python binding package needed).

espeak-ng speaks ~100 languages from a small system package and, in synchronous mode, reports every phoneme (as IPA)
with its sample position through the synthesis callback. Those timings are exact by construction, which is what the
sample clip (lips driven by the speech) and `--text` rendering need; no forced aligner is involved.

    speech = synthesize("Hello there.", voice="en-us")      # Speech(audio, sample_rate, phonemes)
    audio, sr, phonemes = speech                            # it unpacks like a tuple

`mouth_target(ipa)` maps a phoneme to a mouth-opening target in [0, 1] for the sample clip's lip animation.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

import numpy as np

from nerf_talk.errors import UserError

_LIB_NAME = "libespeak-ng.so.1"
_INSTALL_HINT = "install it: sudo apt-get install espeak-ng libespeak-ng1 (or run scripts/install.sh)"


class Speech(NamedTuple):
    """Synthesised speech. `phonemes` are (start_s, end_s, ipa) in time order; silences between them are not listed."""

    audio: np.ndarray  # [S] float32 mono in [-1, 1]
    sample_rate: int
    phonemes: list[tuple[float, float, str]]


# ------------------------------------------------------------------------------------------------ the C API
class _Event(ctypes.Structure):
    """speak_lib.h `espeak_EVENT`. The union `id` is read as its `char string[8]` member, which holds a phoneme's IPA
    (UTF-8, NUL-terminated unless it fills all 8 bytes) when espeakINITIALIZE_PHONEME_IPA is set."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms; too coarse, `sample` is used instead
        ("sample", ctypes.c_int),  # sample index from the start of this espeak_Synth call
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

# Enum values from speak_lib.h.
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_MARK, _EV_PLAY, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = range(8)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA, _INIT_DONT_EXIT = 0x1, 0x2, 0x8000
_PARAM_RATE, _PARAM_PITCH = 1, 3
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_EE_OK = 0


class _Voice(ctypes.Structure):
    """speak_lib.h `espeak_VOICE`. `languages` is a run of (priority byte, NUL-terminated language name) pairs ending
    with a zero byte."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Engine:
    """The library has one global synthesiser per process, so this is a singleton used under a lock."""

    def __init__(self):
        try:
            lib = ctypes.CDLL(_LIB_NAME)
        except OSError as e:
            raise UserError(f"cannot load {_LIB_NAME} (espeak-ng text to speech): {e}", _INSTALL_HINT) from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        # DONT_EXIT: without it the library calls exit() when its data directory is missing, killing the process.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                     _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
        if rate <= 0:
            raise UserError(f"espeak-ng failed to initialise (status {rate}); its voice data may be missing",
                            _INSTALL_HINT)
        self.lib, self.rate = lib, int(rate)
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._cb = _CALLBACK(self._on_audio)  # kept referenced: the library holds only the raw pointer
        lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            e = events[i]
            ipa = bytes(e.id).split(b"\0")[0].decode("utf-8", "replace") if e.type == _EV_PHONEME else ""
            self._events.append((int(e.type), int(e.sample), ipa))
            i += 1
        return 0  # 0 = carry on synthesising

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> Speech:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise UserError(f"espeak-ng has no voice {voice!r}",
                                "list the voices with `espeak-ng --voices` (e.g. en-us, en-gb, de, fr, es, cmn).")
            self.lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = ctypes.create_string_buffer(text.encode("utf-8"))
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status} for text {text[:60]!r}")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            events = self._events
        return Speech(audio.astype(np.float32), self.rate, _phoneme_spans(events, len(audio), self.rate))


def _phoneme_spans(events: list[tuple[int, int, str]], n_samples: int, rate: int) -> list[tuple[float, float, str]]:
    """Phoneme events -> (start_s, end_s, ipa). A phoneme lasts until the next event with a later sample position
    (the next phoneme, or a word / sentence / end boundary); empty-IPA phoneme events are pauses and only end spans."""
    bounds = sorted({s for _, s, _ in events} | {n_samples})
    spans = []
    for kind, s, ipa in events:
        if kind != _EV_PHONEME or not ipa.strip():
            continue
        later = [b for b in bounds if b > s]
        end = later[0] if later else n_samples
        if spans and spans[-1][0] == s / rate:  # two events at one sample: keep the later label, it is the sound
            spans.pop()
        spans.append((s / rate, end / rate, ipa))
    return _trim_trailing(spans, n_samples / rate)


def _trim_trailing(spans, duration: float, max_last: float = 0.25):
    """The last phoneme of an utterance otherwise runs through espeak's trailing silence; cap it at a plausible
    length so that a mouth animation closes when the sound stops."""
    if spans:
        s, e, p = spans[-1]
        spans[-1] = (s, min(e, s + max_last, duration), p)
    return spans


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _engine_instance() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
    return _engine


def voices() -> list[tuple[str, str]]:
    """The installed espeak-ng voices as (id to pass as `voice`, "name (language)"), sorted by id: the voice files'
    names (`en-us`, `en` for British English, `de`, `cmn`), which espeak_SetVoiceByName accepts. MBROLA voices are
    left out: they need the separate mbrola program and its voice data."""
    eng = _engine_instance()
    out = {}
    with eng.lock:
        table = eng.lib.espeak_ListVoices(None)
        i = 0
        while table[i]:
            v = table[i].contents
            ident = (v.identifier or b"").decode("utf-8", "replace")
            # `languages` starts with a priority byte, then the first language's name.
            lang = ctypes.string_at(v.languages + 1).decode("utf-8", "replace") if v.languages else ""
            if ident and not ident.startswith("mb/"):
                name = (v.name or b"").decode("utf-8", "replace")
                out[ident.rsplit("/", 1)[-1].lower()] = f"{name} ({lang})" if lang else name
            i += 1
    return sorted(out.items())


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50) -> Speech:
    """Speak `text` with espeak-ng voice `voice` (any name `espeak-ng --voices` lists, optionally `+variant`).

    rate_wpm: words per minute (80-450); pitch: 0-100 (50 = the voice's normal pitch).
    Returns Speech(audio float32 [S], sample_rate (22050 for espeak-ng), phonemes [(start_s, end_s, ipa)]).
    Not bit-reproducible across calls in one process: libespeak-ng keeps state between utterances (a repeated
    sentence can come out a few hundred samples longer); the same sequence of calls in a fresh process repeats exactly.
    """
    if not text or not text.strip():
        raise UserError("nothing to speak: the text is empty", "give some words to say.")
    return _engine_instance().synthesize(text, voice, rate_wpm, pitch)


# ------------------------------------------------------------------------------------------------ visemes
# Mouth opening (0 = lips closed, 1 = widest) per phoneme, by the jaw/lip posture needed to make the sound, for the
# sample clip's mouth animation (ground truth for tests, not a claim about a particular speaker). The IPA strings are
# espeak-ng's, which carry stress marks (ˈ ˌ), length (ː) and diacritics; `mouth_target` strips those and looks at the
# first base symbol, so "ˈaɪ" counts as the open vowel a and "tʃ" as the consonant t.
_OPEN_VOWELS = set("aɑɒæɐɶ")  # jaw dropped: "father", "cat", "lot"
_MID_VOWELS = set("eɛəɜɞɔoøœʌɘɵɤ")  # "bed", "about", "bought", "but"
_CLOSE_VOWELS = set("iyɨʉɯuɪʏʊ")  # "see", "too", "bit": lips nearly together, jaw high
_BILABIALS = set("pbmɸβ")  # lips pressed shut: the clearest visual cue of speech
_LABIODENTALS = set("fvʋ")  # lower lip under the upper teeth: almost closed
_ROUNDED_GLIDES = set("wɥ")

MOUTH_OPEN_VOWEL, MOUTH_MID_VOWEL, MOUTH_CLOSE_VOWEL = 1.0, 0.6, 0.3
MOUTH_BILABIAL, MOUTH_LABIODENTAL, MOUTH_CONSONANT = 0.0, 0.08, 0.22

_MODIFIERS = set("ˈˌːˑ̩̯̃ʰʲʷ̪-_'") | {"\u0303", "\u0329", "\u032f", "\u0361", "\u035c"}


def mouth_target(ipa: str) -> float:
    """Mouth-opening target in [0, 1] for one espeak-ng IPA phoneme: open vowels 1.0, mid vowels 0.6, close vowels
    0.3, bilabials (p b m) 0.0, labiodentals (f v) 0.08, other consonants 0.22, unknown/empty 0.0 (silence)."""
    base = next((c for c in ipa if c not in _MODIFIERS and not c.isspace()), "")
    if not base:
        return 0.0
    if base in _OPEN_VOWELS:
        return MOUTH_OPEN_VOWEL
    if base in _MID_VOWELS:
        return MOUTH_MID_VOWEL
    if base in _CLOSE_VOWELS:
        return MOUTH_CLOSE_VOWEL
    if base in _BILABIALS:
        return MOUTH_BILABIAL
    if base in _LABIODENTALS:
        return MOUTH_LABIODENTAL
    if base in _ROUNDED_GLIDES:
        return MOUTH_CLOSE_VOWEL * 0.5
    return MOUTH_CONSONANT


def mouth_track(phonemes, n_frames: int, fps: float, smooth_s: float = 0.045) -> np.ndarray:
    """[n_frames] mouth opening in [0, 1] sampled at `fps` from phoneme spans: each span holds its target, gaps are
    closed (0), then a Gaussian of `smooth_s` seconds smooths the transitions the way lips move (coarticulation).
    The targets are integrated over 8 sub-steps per frame so that short phonemes are not skipped between frames."""
    sub = 8
    t = (np.arange(n_frames * sub) + 0.5) / (fps * sub)
    raw = np.zeros(t.shape, np.float64)
    for s, e, ipa in phonemes:
        raw[(t >= s) & (t < e)] = mouth_target(ipa)
    if smooth_s > 0:
        from scipy.ndimage import gaussian_filter1d

        raw = gaussian_filter1d(raw, smooth_s * fps * sub, mode="constant")
    return np.clip(raw.reshape(n_frames, sub).mean(1), 0.0, 1.0)

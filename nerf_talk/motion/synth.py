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

TTS: nerf_talk.speech.synthesize (libespeak-ng reports each phoneme, in IPA, with its sample position). The shipped
weights' corpus was made with an equivalent inline ctypes reader of the same events, before that module existed.
"""

from __future__ import annotations

import logging
import math
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


def espeak_timed(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50):
    """(audio float32 [S], sample_rate, phonemes [(start_s, end_s, ipa)]) from the project's espeak-ng TTS."""
    from nerf_talk import speech

    return tuple(speech.synthesize(text, voice=voice, rate_wpm=rate_wpm, pitch=pitch))


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

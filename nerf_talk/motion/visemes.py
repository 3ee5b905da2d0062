"""Viseme classes: groups of phonemes that look alike on the lips, from IPA symbols by articulation rules.

Used three ways:
  * synthetic speech (espeak-ng, known phonemes) gets per-frame viseme targets (`viseme_track`), which become motion
    targets through a per-viseme mean motion learned from real clips (`fit_viseme_motion`);
  * the real clips' phoneme posteriorgrams are summarised as viseme posteriors (`ppg_to_visemes`) to learn that mean;
  * the offline mouth-sync figure (metrics.py) uses each viseme's documented mouth openness (`OPENNESS`).

The rules look only at the base letter of a symbol (diacritics, length and tone marks stripped), so they cover hama's
191 tokens and espeak-ng's IPA output with one table. A glide + vowel token (hama's "ja", "wa") takes its vowel's
class, except that /w/ rounds whatever follows.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

# Class order is part of the shipped model's metadata: append, never reorder.
VISEMES = (
    "sil",  # silence, pause
    "bilabial",  # p b m (lips closed)
    "labiodental",  # f v (lower lip under the upper teeth)
    "dental",  # θ ð (tongue between the teeth)
    "alveolar",  # t d n s z l r: jaw fairly closed, lips neutral
    "postalveolar",  # ʃ ʒ tʃ dʒ: lips protruded
    "velar",  # k g ŋ h: jaw half open, lips neutral
    "close",  # i ɪ: spread lips, jaw nearly closed
    "mid",  # e ɛ ə ʌ: jaw half open
    "open",  # a ɑ æ: jaw open
    "rounded",  # u o ɔ w y ø: rounded, protruded lips
)
V = {name: i for i, name in enumerate(VISEMES)}
N_VISEMES = len(VISEMES)

# Mouth opening of each class relative to an open vowel (1) and closed lips (0): an articulatory prior, not fitted,
# so that the sync figure stays independent of any trained model.
OPENNESS = np.array([0.0, 0.0, 0.15, 0.3, 0.3, 0.3, 0.4, 0.35, 0.65, 1.0, 0.45], np.float32)

_BILABIAL = set("pbmɓʙɸβ")
_LABIODENTAL = set("fvɱʋ")
_DENTAL = set("θð")
_ALVEOLAR = set("tdnszlrɾɹɻɽɫɮʈɖɗɬñɲʎcɟʝçɭɳ")
_POSTALVEOLAR = set("ʃʒɕʑʂʐ")
_VELAR = set("kgɡŋxɣɰhɦʔχʁʀɴħqɧ")
_CLOSE = set("iɪɨɯĩìíɘᵻ")
_MID = set("eɛəɚɜɝʌɤẽɐé")
_OPEN = set("aàãäåæɑáâ")
_ROUNDED = set("uoʊɔyøœʉɵʏɥwɒũõǐúóôɞ")
# Affricates written as two letters: their release decides the look (t͡ʃ -> postalveolar).
_AFFRICATE_RELEASE = {"ʃ": "postalveolar", "ʒ": "postalveolar", "ɕ": "postalveolar", "ʑ": "postalveolar"}
# Tokens that are no speech sound at all (hama's specials, punctuation, tone and length marks on their own).
_NON_SOUND = {"<pad>", "<sos>", "<eos>", "<unk>", "<blank>", "<wb>", " ", "%", ",", "~", "‿", "_", ":", "|", "||"}


def _base_letters(symbol: str) -> str:
    """The symbol's letters without combining marks, modifiers, length, stress and tone marks."""
    out = []
    for ch in unicodedata.normalize("NFC", symbol):
        cat = unicodedata.category(ch)
        if cat.startswith("M") or cat in ("Lm", "Sk", "No", "Po", "Pd", "Zs"):
            continue  # combining marks, ʰ ʲ ː ˈ, superscript digits, punctuation
        if ch in "ˈˌːˑ'-":
            continue
        out.append(ch)
    return "".join(out)


def viseme_of(symbol: str) -> int | None:
    """Viseme class index of one IPA phoneme symbol; None when it is no speech sound (a blank, a bare tone mark).

    Silence markers espeak-ng writes ("_", "_:", "") and hama's word boundary are None too: the caller decides
    whether a gap is silence (it is, between phonemes in a timed sequence).
    """
    if symbol in _NON_SOUND:
        return None
    letters = _base_letters(symbol)
    if not letters:
        return None
    first = letters[0]
    if first == "w" and len(letters) > 1:
        return V["rounded"]  # /w/ + vowel: the lips round whatever the vowel
    if first == "j" and len(letters) > 1:
        first = letters[1]  # /j/ + vowel: the vowel decides
    if len(letters) > 1 and letters[-1] in _AFFRICATE_RELEASE and first in "tdʈɖ":
        return V[_AFFRICATE_RELEASE[letters[-1]]]
    for table, name in ((_BILABIAL, "bilabial"), (_LABIODENTAL, "labiodental"), (_DENTAL, "dental"),
                        (_POSTALVEOLAR, "postalveolar"), (_ALVEOLAR, "alveolar"), (_VELAR, "velar"),
                        (_CLOSE, "close"), (_MID, "mid"), (_OPEN, "open"), (_ROUNDED, "rounded")):
        if first in table:
            return V[name]
    if first == "j":
        return V["close"]  # /j/ alone: spread, like /i/
    return None  # Chinese characters and other rare tokens: no claim


@functools.lru_cache(maxsize=4)
def vocabulary_matrix(vocab: tuple[str, ...]) -> np.ndarray:
    """[P, N_VISEMES] 0/1 matrix assigning each posteriorgram column to its viseme (rows of non-sounds are zero)."""
    m = np.zeros((len(vocab), N_VISEMES), np.float32)
    for i, tok in enumerate(vocab):
        v = viseme_of(tok)
        if v is not None:
            m[i, v] = 1.0
    return m


def ppg_to_visemes(ppg: np.ndarray, speech: np.ndarray, vocab: tuple[str, ...], spread: int = 2) -> np.ndarray:
    """[N, N_VISEMES] viseme posteriors of a posteriorgram ppg [N, P], given a voice-activity mask speech [N].

    A CTC recogniser fires each phoneme on a frame or two and fills the rest with blanks, so the non-blank mass is
    spread over +-`spread` frames (a triangular window) and renormalised; frames without speech, or with no
    phoneme mass nearby, are silence.
    """
    mass = np.asarray(ppg, np.float64) @ vocabulary_matrix(tuple(vocab)).astype(np.float64)  # [N, V]
    w = np.concatenate([np.arange(1, spread + 2), np.arange(spread, 0, -1)]).astype(np.float64)
    smoothed = np.stack([np.convolve(mass[:, j], w, mode="same") for j in range(N_VISEMES)], 1)
    total = smoothed.sum(1, keepdims=True)
    out = np.where(total > 1e-3, smoothed / np.maximum(total, 1e-9), 0.0)
    out[:, V["sil"]] = np.where(total[:, 0] > 1e-3, out[:, V["sil"]], 1.0)
    speech = np.asarray(speech, bool)
    out[~speech] = 0.0
    out[~speech, V["sil"]] = 1.0
    return out.astype(np.float32)


def viseme_track(phonemes, fps: float, n_frames: int) -> np.ndarray:
    """[n_frames, N_VISEMES] share of each frame [k/fps, (k+1)/fps) covered by each viseme, from timed phonemes
    [(start_s, end_s, symbol)]. Time not covered by a sounding phoneme is silence."""
    out = np.zeros((n_frames, N_VISEMES), np.float64)
    edges = np.arange(n_frames + 1) / fps
    for start, end, sym in phonemes:
        v = viseme_of(sym)
        if v is None or end <= start:
            continue
        overlap = np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0.0, None) * fps
        out[:, v] += overlap
    out[:, V["sil"]] += np.clip(1.0 - out.sum(1), 0.0, None)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def fit_viseme_motion(vis: list[np.ndarray], coeffs: list[np.ndarray], ridge: float = 1.0) -> np.ndarray:
    """[N_VISEMES, C] mean motion coefficients per viseme, by ridge regression coeffs ~ vis @ W over real clips.

    vis: per clip [N, N_VISEMES] viseme posteriors; coeffs: per clip [N, C] motion coefficients. The silence row is
    fixed at 0 (the neutral face): silence means a closed, resting mouth, whatever a speaker did between phrases.
    """
    X = np.concatenate(vis).astype(np.float64)
    Y = np.concatenate(coeffs).astype(np.float64)
    keep = [j for j in range(N_VISEMES) if j != V["sil"]]
    Xs = X[:, keep]
    W = np.linalg.solve(Xs.T @ Xs + ridge * np.eye(len(keep)), Xs.T @ Y)
    out = np.zeros((N_VISEMES, Y.shape[1]), np.float64)
    out[keep] = W
    return out.astype(np.float32)

"""The training corpus: preprocessed datasets (real speech + real lip motion) and synthetic shards (TTS speech +
viseme targets), served as fixed-length windows.

A corpus folder holds any number of dataset directories (each with manifest.json, found up to two levels down) and,
optionally, `synthetic/*.npz` shards written by synth.py. Arrays are memory-mapped and windows are cut on demand, so
a corpus larger than RAM trains, and DataLoader workers share the page cache.

Sources at a frame rate other than MODEL_FPS are brought to it once, when indexed: the features are recomputed from
the dataset's audio.wav at MODEL_FPS and the motion is linearly interpolated to the new frame times.

Speakers: several datasets may hold one person (GRID's speaker s1 is 50 one-minute files). `speaker_of` names each
dataset's speaker (CORPUS_DIR/speakers.json maps names or glob patterns to speakers; otherwise each dataset is its
own speaker). Per speaker, the motion is rescaled to the corpus's median amplitude (`normalise_speakers`: people and
trackers differ in how far a mouth opens, which is the adapter's business, not the generic model's), and windows are
drawn per speaker, not per frame (`WindowDataset.weights`), so one long-recorded speaker cannot become everyone's
mouth.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from nerf_talk import audio_features as af
from nerf_talk.errors import UserError
from nerf_talk.motion import features as mf
from nerf_talk.motion import visemes as vz
from nerf_talk.motion.basis import GenericMotionBasis
from nerf_talk.motion.model import MODEL_FPS

log = logging.getLogger("nerf_talk.motion")
FEATURES = ("ppg", "mel", "pitch", "energy")


@dataclass
class Source:
    """One utterance or clip. Real sources carry motion [N, K, 3] and blink [N]; synthetic ones visemes [N, V]."""

    name: str
    kind: str  # "real" | "synthetic"
    features: dict  # name -> [N, ...] arrays (possibly memory-mapped)
    stats: mf.Stats
    motion: np.ndarray | None = None  # [N, K, 3]
    blink: np.ndarray | None = None  # [N]
    visemes: np.ndarray | None = None  # [N, V]
    mouth_opening: np.ndarray | None = None  # [N] real clips: the measured inner-lip gap / face size
    frames: np.ndarray | None = None  # [M] the frame indices this source may train on (None: all)
    speaker: str = ""  # who speaks (speaker_of); synthetic sources leave it empty

    @property
    def n_frames(self) -> int:
        return len(self.features["energy"])


def find_datasets(corpus_dir: str | Path) -> list[Path]:
    """Dataset directories (holding manifest.json) at most two levels under `corpus_dir`, sorted by name."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise UserError(f"corpus folder {root} does not exist", "give a folder of preprocessed datasets.")
    found = [p.parent for pat in ("manifest.json", "*/manifest.json", "*/*/manifest.json") for p in root.glob(pat)]
    return sorted(set(found), key=lambda p: p.name)


def speaker_of(name: str, speakers: dict[str, str]) -> str:
    """The speaker of dataset `name` by `speakers` (a corpus's speakers.json: {dataset name or glob pattern:
    speaker}, e.g. {"grid_s1_*": "grid_s1"}): its exact entry, else the first pattern it matches, else its own name
    (a dataset nobody grouped is one speaker: interview_01 and interview_02 may well be two people)."""
    if name in speakers:
        return speakers[name]
    return next((who for pattern, who in speakers.items() if fnmatch.fnmatchcase(name, pattern)), name)


def read_speakers(corpus_dir: str | Path) -> dict[str, str]:
    """CORPUS_DIR/speakers.json ({dataset name or glob pattern: speaker}) or {} when there is none."""
    path = Path(corpus_dir) / "speakers.json"
    if not path.exists():
        return {}
    try:
        table = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}", 'write it as {"dataset name": "speaker", ...}') from e
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise UserError(f"{path} must map dataset names to speaker names", 'e.g. {"obama_a": "obama"}')
    return table


def normalise_speakers(real: list[Source]) -> dict[str, float]:
    """Rescale every real source's motion (and mouth opening) so that each speaker's motion RMS over all their frames
    equals the median over speakers; returns {speaker: gain}. Modifies the sources in place (motion becomes an
    in-memory array)."""
    sums: dict[str, list[float]] = {}
    for s in real:
        m = np.asarray(s.motion, np.float64)
        acc = sums.setdefault(s.speaker, [0.0, 0.0])
        acc[0] += float((m * m).sum())
        acc[1] += m.size
    rms = {k: math.sqrt(a / max(n, 1)) for k, (a, n) in sums.items()}
    ref = float(np.median([v for v in rms.values() if v > 0])) if any(v > 0 for v in rms.values()) else 1.0
    gains = {k: (ref / v if v > 0 else 1.0) for k, v in rms.items()}
    for s in real:
        g = gains[s.speaker]
        s.motion = (np.asarray(s.motion, np.float32) * g).astype(np.float32)
        s.mouth_opening = (np.asarray(s.mouth_opening, np.float32) * g).astype(np.float32)
    return gains


def load_real(path: Path, vocab: list[str], use_val_frames: bool = True) -> Source:
    """A preprocessed dataset as a Source at MODEL_FPS."""
    from preprocess.dataset import Dataset

    ds = Dataset(path)
    res = ds.step_result("audio_features")
    if list(res.get("phoneme_vocabulary", vocab)) != list(vocab):
        raise UserError(f"{path}: its posteriorgram columns differ from this nerf_talk's",
                        "preprocess it again with this version (`--force audio_features`).")
    feats = {k: ds.load_array(f"audio_{k}") for k in FEATURES}
    motion, blink, opening = (ds.load_array(n) for n in ("lower_face_motion", "blink", "mouth_opening"))
    frames = None
    if not use_val_frames and ds.path("split.json").exists():
        frames = np.asarray(ds.read_json("split.json")["train"], np.int64)
    if abs(ds.fps - MODEL_FPS) > 1e-6:
        from nerf_talk import media

        audio = media.read_audio(ds.path("audio.wav"), af.SAMPLE_RATE)
        n = int(math.floor(ds.n_frames / ds.fps * MODEL_FPS))
        feats = af.compute_features(audio, MODEL_FPS, n)
        t_new = (np.arange(n) + 0.5) / MODEL_FPS
        t_old = (np.arange(ds.n_frames) + 0.5) / ds.fps
        motion = mf.interp_frames(motion, t_old, t_new).astype(np.float32)
        blink = mf.interp_frames(blink, t_old, t_new).astype(np.float32)
        opening = mf.interp_frames(opening, t_old, t_new).astype(np.float32)
        if frames is not None:
            keep = np.zeros(ds.n_frames, bool)
            keep[frames] = True
            frames = np.nonzero(mf.interp_frames(keep, t_old, t_new) > 0.5)[0]
    return Source(path.name, "real", feats, mf.utterance_stats(feats), motion=motion, blink=blink,
                  mouth_opening=opening, frames=frames)


def save_synthetic(path: Path, features: dict, visemes: np.ndarray, info: dict) -> None:
    """One synthetic utterance as an .npz (plain arrays, loadable without pickle)."""
    tmp = path.with_suffix(".partial.npz")
    np.savez(tmp, **{k: np.asarray(features[k], np.float32) for k in FEATURES},
             visemes=np.asarray(visemes, np.float32), info=np.array(json.dumps(info)))
    tmp.replace(path)


def load_synthetic(path: Path) -> Source:
    with np.load(path, allow_pickle=False) as z:
        feats = {k: z[k] for k in FEATURES}
        vis = z["visemes"]
    return Source(path.stem, "synthetic", feats, mf.utterance_stats(feats), visemes=vis)


def synthetic_targets(visemes: np.ndarray, viseme_motion: np.ndarray, blur_frames: float,
                      lead_frames: float = 0.0) -> np.ndarray:
    """[N, C] motion coefficients of a viseme track [N, V]: per-viseme means blended by frame shares, blurred in time
    (coarticulation: a mouth moves towards the next shape before it arrives), then held at the bilabial shape
    wherever a /p b m/ covers half a frame or more, so the blur cannot open a closure; finally moved `lead_frames`
    earlier (linear interpolation, ends held): real lips lead the sound they make."""
    coeffs = np.asarray(visemes, np.float64) @ np.asarray(viseme_motion, np.float64)
    if blur_frames > 0:
        coeffs = gaussian_filter1d(coeffs, blur_frames, axis=0, mode="nearest")
    closed = visemes[:, vz.V["bilabial"]] >= 0.5
    coeffs[closed] = viseme_motion[vz.V["bilabial"]]
    if lead_frames:
        t = np.arange(len(coeffs), dtype=np.float64)
        at = np.clip(t + lead_frames, 0, len(coeffs) - 1)
        coeffs = np.stack([np.interp(at, t, col) for col in coeffs.T], 1)
    return coeffs.astype(np.float32)


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length windows over all sources. Item: dict of x [T, D], coeffs [T, C], blink [T], blink_mask [T]
    (1 where the blink target is real), real (0-d, 1 for real clips).

    Windows start every window/2 frames; how often each is drawn is `weights` (use with WeightedStream). Sources
    shorter than a window are padded with silence features and neutral motion, weighted 0 where padded (`weight` [T])."""

    def __init__(self, sources: list[Source], basis: GenericMotionBasis, viseme_motion: np.ndarray, window: int,
                 blur_frames: float = 1.2, blank_column: int = -1, lead_frames: float = 0.0):
        self.blank_column = blank_column  # the posteriorgram's "<blank>" column: what silence looks like there
        self.sources, self.basis, self.viseme_motion = sources, basis, viseme_motion
        self.window, self.blur, self.lead = window, blur_frames, lead_frames
        self.index: list[tuple[int, int]] = []
        for si, s in enumerate(sources):
            lo, hi = (0, s.n_frames) if s.frames is None or len(s.frames) == 0 else (int(s.frames.min()), int(s.frames.max()) + 1)
            starts = list(range(lo, max(lo + 1, hi - window + 1), max(1, window // 2)))
            self.index += [(si, st) for st in starts]
        self._targets: dict[int, np.ndarray] = {}

    def weights(self, real_share: float, speaker_cap_frames: float) -> np.ndarray:
        """[len(self)] draw probabilities. Real windows get `real_share` of all draws (synthetic ones the rest, or all
        when there is no synthetic speech); among real speakers, each gets a share proportional to its frame count
        capped at `speaker_cap_frames`, spread evenly over its windows. So speakers under the cap are drawn per frame
        as before, and one speaker with hours of video weighs like one with the cap."""
        kinds = np.array([self.sources[si].kind == "real" for si, _ in self.index])
        speakers = [self.sources[si].speaker for si, _ in self.index]
        frames: dict[str, int] = {}
        windows: dict[str, int] = {}
        for s in self.sources:
            if s.kind == "real":
                frames[s.speaker] = frames.get(s.speaker, 0) + s.n_frames
        for sp, real in zip(speakers, kinds):
            if real:
                windows[sp] = windows.get(sp, 0) + 1
        share = {sp: min(n, speaker_cap_frames) for sp, n in frames.items()}
        total = sum(share.values())
        n_syn = int((~kinds).sum())
        r = real_share if n_syn and kinds.any() else float(kinds.any())
        w = np.array([r * share[sp] / total / windows[sp] if real else (1 - r) / max(n_syn, 1)
                      for sp, real in zip(speakers, kinds)])
        return w / w.sum()

    def __len__(self) -> int:
        return len(self.index)

    def _coeffs(self, si: int) -> np.ndarray:
        if si not in self._targets:  # per worker process; a source's targets are small ([N, C])
            s = self.sources[si]
            if s.kind == "real":
                self._targets[si] = self.basis.encode(np.asarray(s.motion)).astype(np.float32)
            else:
                self._targets[si] = synthetic_targets(np.asarray(s.visemes), self.viseme_motion, self.blur,
                                                      self.lead)
        return self._targets[si]

    def __getitem__(self, i: int) -> dict:
        si, start = self.index[i]
        s = self.sources[si]
        end = min(start + self.window, s.n_frames)
        feats = {k: np.asarray(v[start:end]) for k, v in s.features.items()}
        x = mf.input_features(feats, s.stats)  # [t, D]
        coeffs = self._coeffs(si)[start:end]  # [t, C]
        t = end - start
        pad = self.window - t
        weight = np.ones(self.window, np.float32)
        blink = np.zeros(self.window, np.float32)
        blink_mask = np.zeros(self.window, np.float32)
        if s.kind == "real":
            blink[:t] = np.asarray(s.blink[start:end])
            blink_mask[:t] = 1.0
        if pad:
            silence = np.zeros((pad, x.shape[1]), np.float32)
            silence[:, self.blank_column] = 1.0
            silence[:, -2] = -3.0  # the level column at its floor
            x = np.concatenate([x, silence])
            coeffs = np.concatenate([coeffs, np.zeros((pad, coeffs.shape[1]), np.float32)])
            weight[t:] = 0.0
        return {"x": torch.from_numpy(x), "coeffs": torch.from_numpy(np.ascontiguousarray(coeffs)),
                "blink": torch.from_numpy(blink), "blink_mask": torch.from_numpy(blink_mask),
                "weight": torch.from_numpy(weight), "real": torch.tensor(float(s.kind == "real"))}


class WeightedStream(torch.utils.data.Sampler):
    """Endless indices drawn with replacement by `weights` (torch's WeightedRandomSampler draws all of num_samples at
    once, which an endless stream cannot); a fixed seed per process, so DDP ranks draw different windows."""

    def __init__(self, weights: np.ndarray, seed: int, chunk: int = 4096):
        self.weights = torch.as_tensor(np.asarray(weights, np.float64))
        self.seed, self.chunk = seed, chunk

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.multinomial(self.weights, self.chunk, replacement=True, generator=g).tolist()

"""The avatar file: everything needed to render one person saying new speech, in one versioned safetensors file.

    parts = export_avatar("work/train", "alice.avatar")     # from a training directory (+ its dataset)
    parts = load_avatar("alice.avatar")                      # checks kind, version, shapes and checksum
    model = build_model(parts, device)                       # the head/torso/background modules, weights loaded

Layout (see docs/AVATAR_FORMAT.md): safetensors tensors + one JSON document in the safetensors header's str->str
metadata under the key "nerf_talk.avatar". No pickle anywhere: safetensors holds raw little-endian arrays and the
metadata is plain JSON. Tensors, by prefix:
  model.*         the trained AvatarModel's parameters and buffers (head field, occupancy grid, torso field, the
                  person's motion basis and pose statistics), except the background plate
  background      uint8 [H, W, 3] the plate the avatar was trained over (exact: training reads it from 8-bit PNG)
  adapter.*       the personal adapter (generic motion coefficients -> this person's lower-face motion)
  motion_model.*  the generic audio-to-motion model the adapter was fitted against, embedded so that a later
                  update of the shipped model cannot silently break this avatar's adapter
  pose_track      float32 [N, 4, 4] the person's own head-pose track (camera-to-head), for generated head motion
  pose_speech     uint8 [N] voice activity of the same frames (segments are matched by speaking state)
  blink_profile   float32 [L] the person's mean blink curve
  eyes_open       float32 [2] the person's typical open-eye openness (left, right)
The checksum is sha256 over (name, dtype, shape, bytes) of every tensor in sorted name order; a flipped bit, a
truncated file or a tensor swapped in from another avatar is refused at load with a message saying what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nerf_talk import __version__
from nerf_talk.errors import UserError

log = logging.getLogger("nerf_talk.avatar")

KIND = "nerf_talk.avatar"
# 2: the head field gained `mouth_mlp` (motion-dependent density in the mouth box); a version 1 file lacks it and
# its training directory does too, so an old avatar is fitted again, not re-exported.
# 3: the head field gained `eye_box` (the eye code acts only there); older files lack it and were trained with the eye
# code everywhere, so they too are fitted again. (Both were changes of the weights: train.model.FIELDS_VERSION.)
FORMAT_VERSION = 3
META_KEY = "nerf_talk.avatar"
SUFFIX = ".avatar"
DEFAULT_BLINK_RATE = 15.0  # per minute: the adult resting average, for datasets that report none


class AvatarError(UserError):
    """An avatar file that is damaged, foreign, from another format version, or inconsistent."""


@dataclass
class AvatarParts:
    """An avatar in memory: the tensors (CPU, by their file names) and the metadata document."""

    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix.` with the prefix removed."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def size(self) -> tuple[int, int]:  # (height, width) the avatar was trained at
        h, w = self.meta["size"]
        return int(h), int(w)


# -- checksum and validation -------------------------------------------------------------------------------------
def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over name, dtype, shape and raw bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        # uint8 view: the bytes as stored, whatever the dtype (float16, bool, ...).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}


REQUIRED = ("background", "pose_track", "pose_speech", "blink_profile", "eyes_open", "adapter.A", "adapter.components",
            "adapter.gain", "model.motion_components", "model.motion_mean", "model.motion_scale")


def validate(parts: AvatarParts, where: str = "avatar") -> None:
    """Checks the metadata against the tensors (kind, version, listed shapes, internal consistency)."""
    m, t = parts.meta, parts.tensors
    if m.get("kind") != KIND:
        raise AvatarError(f"{where} is not a nerf_talk avatar (kind {m.get('kind')!r})",
                          "give a file written by `nerf-talk fit` or `nerf-talk export`.")
    v = m.get("format_version")
    if v != FORMAT_VERSION:
        newer = isinstance(v, int) and v > FORMAT_VERSION
        raise AvatarError(f"{where} has avatar format version {v!r}; this nerf_talk ({__version__}) reads version "
                          f"{FORMAT_VERSION}",
                          "update nerf_talk to read it." if newer else
                          "fit it again (`nerf-talk fit`): older avatars lack the head field's motion-dependent "
                          "mouth or its eye region, which re-exporting cannot add.")
    missing = [k for k in REQUIRED if k not in t]
    if missing or not any(k.startswith("motion_model.") for k in t):
        raise AvatarError(f"{where} lacks tensors {missing or ['motion_model.*']}", "the file is incomplete; export it "
                          "again.")
    listed = m.get("tensors", {})
    actual = _shapes(t)
    if listed != actual:
        diff = sorted(k for k in set(listed) | set(actual) if listed.get(k) != actual.get(k))
        raise AvatarError(f"{where}: tensors do not match the header's list ({', '.join(diff[:5])})",
                          "the file was altered or damaged; export it again.")
    h, w = parts.size
    bg = t["background"]
    if bg.dtype != torch.uint8 or tuple(bg.shape) != (h, w, 3):
        raise AvatarError(f"{where}: background is {bg.dtype} {list(bg.shape)}, expected uint8 [{h}, {w}, 3]")
    n_motion = int(m["n_motion"])
    if t["model.motion_components"].shape[0] != n_motion or t["adapter.A"].shape[1] != t["adapter.components"].shape[0]:
        raise AvatarError(f"{where}: the motion basis and the adapter disagree on their sizes")
    if t["pose_track"].ndim != 3 or tuple(t["pose_track"].shape[1:]) != (4, 4):
        raise AvatarError(f"{where}: pose_track has shape {list(t['pose_track'].shape)}, expected [N, 4, 4]")
    if len(t["pose_speech"]) != len(t["pose_track"]):
        raise AvatarError(f"{where}: pose_speech and pose_track differ in length")
    if not (m.get("fps", 0) > 0):
        raise AvatarError(f"{where}: fps is {m.get('fps')!r}")


# -- file I/O ----------------------------------------------------------------------------------------------------
def save_avatar(parts: AvatarParts, path: str | os.PathLike) -> Path:
    """Writes `parts` to `path` atomically (temporary file + rename) with the shape list and checksum filled in."""
    from safetensors.torch import save_file

    from nerf_talk.media import atomic_output

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in parts.tensors.items()}
    meta = dict(parts.meta, kind=KIND, format_version=FORMAT_VERSION, tensors=_shapes(tensors),
                checksum=tensor_checksum(tensors))
    validate(AvatarParts(tensors, meta), str(path))
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    parts.meta = meta
    return path


def load_avatar(path: str | os.PathLike) -> AvatarParts:
    """Reads and verifies an avatar file; raises AvatarError (a UserError) for anything damaged or foreign."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise AvatarError(f"avatar file not found: {path}", "make one with `nerf-talk fit VIDEO -o NAME.avatar`.")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise AvatarError(f"{path} is {kind}, not an avatar file",
                          "give the NAME.avatar file written by `nerf-talk fit` or `nerf-talk export`.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AvatarError(f"{path} is not a readable avatar file ({type(e).__name__}: {e})",
                          "the file is damaged or truncated, or not an avatar; export it again.") from e
    if META_KEY not in header:
        raise AvatarError(f"{path} is a safetensors file but not a nerf_talk avatar (no {META_KEY!r} metadata)",
                          "give a file written by `nerf-talk fit` or `nerf-talk export`.")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise AvatarError(f"{path}: the avatar metadata is not valid JSON ({e})", "the file is damaged.") from e
    parts = AvatarParts(tensors, meta)
    validate(parts, str(path))
    got = tensor_checksum(tensors)
    if got != meta.get("checksum"):
        raise AvatarError(f"{path}: checksum mismatch (stored {str(meta.get('checksum'))[:12]}..., "
                          f"computed {got[:12]}...): the tensors were damaged or altered",
                          "copy the file again from where it was made, or export it again.")
    return parts


# -- the modules ---------------------------------------------------------------------------------------------------
def build_model(parts: AvatarParts, device: torch.device | str = "cpu"):
    """The AvatarModel of `parts` (eval mode, on `device`), without the dataset it was trained from: built by the
    constructor training uses, from the shapes the file stores, then every weight and buffer is loaded strictly (a
    missing or extra tensor is an error, not a silent default)."""
    from nerf_talk.config import TrainConfig, from_dict
    from nerf_talk.motion.basis import PersonalMotionBasis
    from nerf_talk.train.model import AvatarModel, ModelShapes

    cfg = from_dict(TrainConfig, parts.meta["config"])
    w = parts.prefixed("model")
    need = ("head.aabb", "head.mouth_box", "head.eye_box", "head.latents", "motion_mean", "motion_components",
            "motion_scale", "pose_mean", "pose_scale")
    missing = [k for k in need if k not in w]
    if missing:
        raise AvatarError(f"the avatar lacks model tensors {missing}", "the file is incomplete; export it again.")
    box = lambda k: [float(v) for v in w[k]]  # noqa: E731
    shapes = ModelShapes(box("head.aabb"), box("head.mouth_box"), box("head.eye_box"),
                         int(w["motion_components"].shape[0]), int(w["head.latents"].shape[0]),
                         parts.tensors["background"].float() / 255.0,
                         PersonalMotionBasis(w["motion_mean"], w["motion_components"], w["motion_scale"]), w["pose_mean"],
                         w["pose_scale"])
    try:
        m = AvatarModel(cfg, shapes)
        m.load_state_dict(dict(w, **{"background.plate": m.background.plate}), strict=True)
    except RuntimeError as e:
        raise AvatarError(f"the avatar's weights do not fit its config: {str(e).splitlines()[0]}",
                          "the file is inconsistent; export it again.") from e
    return m.to(device).eval()


def load_motion_model(parts: AvatarParts, device: str = "cpu"):
    """The embedded generic motion model, through the motion package's own loader (written to a temporary pair of
    files: its format is the motion package's to define, and this keeps the two in step)."""
    from safetensors.torch import save_file

    from nerf_talk.motion.model import MotionModel

    with tempfile.TemporaryDirectory(prefix="nerf_talk_motion_") as d:
        base = Path(d) / "audio2motion"
        save_file({k: v.contiguous() for k, v in parts.prefixed("motion_model").items()},
                  str(base.with_suffix(".safetensors")), metadata={"format": parts.meta["motion_model"]["format"]})
        base.with_suffix(".json").write_text(json.dumps(parts.meta["motion_model"]))
        return MotionModel.load(base, device)


def motion_model_parts(model) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of a MotionModel, exactly as its own save() writes them."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="nerf_talk_motion_") as d:
        base = Path(d) / "audio2motion"
        model.save(base)
        return load_file(str(base.with_suffix(".safetensors"))), json.loads(base.with_suffix(".json").read_text())


def adapter_from_parts(parts: AvatarParts):
    from nerf_talk.motion.adapter import PersonalAdapter

    return PersonalAdapter.from_tensors({k: v.numpy() for k, v in parts.prefixed("adapter").items()},
                                        parts.meta["adapter"])


# -- export from a training directory --------------------------------------------------------------------------------
def _blink_rate(ds, blink: np.ndarray) -> float:
    """Blinks per minute: the face_motion step's figure, else counted from the blink track (rising edges over 0.5)."""
    try:
        r = ds.step_result("face_motion").get("blink_rate_per_min")
        if r is not None and math.isfinite(r):
            return float(r)
    except UserError:
        pass
    closed = np.asarray(blink) > 0.5
    n = int(np.sum(closed[1:] & ~closed[:-1]) + (1 if closed[:1].any() else 0))
    minutes = len(blink) / ds.fps / 60.0
    return n / minutes if n and minutes > 0 else DEFAULT_BLINK_RATE


def _motion_points(ds, k: int) -> list[int]:
    """The mesh indices of the dataset's K lower-face points (recorded by face_motion; else LOWER_FACE's first K)."""
    from preprocess.mesh_topology import LOWER_FACE

    try:
        pts = ds.step_result("face_motion").get("lower_face_points")
    except UserError:
        pts = None
    pts = list(pts) if pts else list(LOWER_FACE)[:k]
    if len(pts) != k:
        raise AvatarError(f"{ds.root}: lower_face_motion has {k} points but face_motion lists {len(pts)}",
                          "preprocess the video again.")
    return pts


def fit_personal_adapter(ds, motion_model, frames: list[int]):
    """The adapter from the dataset's own speech: the generic model's prediction on audio.wav against the real
    lower_face_motion of `frames` (the training split). Returns (adapter, speech [N] bool for every frame)."""
    from nerf_talk import media
    from nerf_talk.motion import predict_motion
    from nerf_talk.motion.adapter import fit_adapter

    if not ds.path("audio.wav").exists():
        raise AvatarError(f"{ds.root} has no audio.wav", "the adapter is fitted on the clip's own speech; preprocess "
                          "the video with its audio (or --audio FILE).")
    audio = media.read_audio(ds.path("audio.wav"), 16000)
    # At the dataset's rate (25 fps unless preprocessed with --fps, the model's own rate too): a frame of generic
    # motion for each frame of real motion.
    pred = predict_motion(motion_model, audio, 16000, ds.fps)
    n = ds.n_frames
    coeffs, speech = pred["coeffs"], np.asarray(pred["speech"], bool)
    if len(coeffs) < n:  # audio.wav is n_frames / fps long; pad a rounding shortfall with silence (neutral)
        coeffs = np.concatenate([coeffs, np.zeros((n - len(coeffs), coeffs.shape[1]), coeffs.dtype)])
        speech = np.concatenate([speech, np.zeros(n - len(speech), bool)])
    coeffs, speech = coeffs[:n], speech[:n]
    motion = ds.load_array("lower_face_motion")
    points = _motion_points(ds, motion.shape[1])
    # The adapter reads a few past frames of generic motion, so it is fitted on a contiguous stretch: the training
    # frames when they are one (preprocessing holds out the clip's end), else the whole clip.
    fit = list(frames) if frames == list(range(frames[0], frames[-1] + 1)) else list(range(n))
    n_comp = min(12, motion.shape[1] * 3, len(fit) - 1)
    adapter = fit_adapter(coeffs[fit], motion[fit], points, n_components=n_comp)
    return adapter, speech


def export_avatar(train_dir: str | os.PathLike, out_path: str | os.PathLike, dataset_dir=None,
                  motion_model=None) -> AvatarParts:
    """Builds the avatar of a finished training directory (avatar.safetensors + avatar.json written by the trainer)
    and writes it to `out_path`. The dataset (default: the one avatar.json names) supplies the person's pose track,
    blinks and speech for the personal adapter; `motion_model` defaults to the shipped generic model."""
    from safetensors.torch import load_file

    from nerf_talk.motion import load_default_model
    from nerf_talk.motion.generate import blink_profile
    from nerf_talk.train.model import FIELDS_VERSION
    from preprocess.dataset import Dataset

    train_dir = Path(train_dir)
    weights, meta_p = train_dir / "avatar.safetensors", train_dir / "avatar.json"
    if not weights.exists() or not meta_p.exists():
        raise UserError(f"{train_dir} holds no finished training (avatar.safetensors + avatar.json)",
                        "train first (`nerf-talk train DATASET -o DIR`), or continue it with --resume.")
    tmeta = json.loads(meta_p.read_text())
    if tmeta.get("format_version") != FIELDS_VERSION:  # the trainer's stamp of the weights' layout
        raise UserError(f"{train_dir} was trained by another nerf_talk (fields version {tmeta.get('format_version')!r}, "
                        f"this one exports version {FIELDS_VERSION})",
                        "train it again with this nerf_talk (`nerf-talk train` or `nerf-talk fit`).")
    ds = Dataset(dataset_dir or tmeta["dataset"])
    ds.load_manifest()
    model_t = load_file(str(weights))
    plate = model_t.pop("background.plate")
    frames = [int(i) for i in tmeta["train_frames"]]
    motion_model = motion_model or load_default_model()
    adapter, speech = fit_personal_adapter(ds, motion_model, frames)
    a_t, a_meta = adapter.to_tensors()
    mm_t, mm_header = motion_model_parts(motion_model)
    eyes = ds.load_array("eye_openness").astype(np.float32)
    blink = ds.load_array("blink").astype(np.float32)
    awake = eyes[blink < 0.2] if (blink < 0.2).sum() >= 3 else eyes
    tensors = {f"model.{k}": v for k, v in model_t.items()}
    tensors.update({f"adapter.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in a_t.items()})
    tensors.update({f"motion_model.{k}": v for k, v in mm_t.items()})
    tensors.update({
        # The plate was read from 8-bit PNG and divided by 255, so rounding back is exact.
        "background": (plate * 255.0).round().clamp(0, 255).to(torch.uint8),
        "pose_track": torch.from_numpy(ds.load_array("poses").astype(np.float32)[frames]),
        "pose_speech": torch.from_numpy(speech[frames].astype(np.uint8)),
        "blink_profile": torch.from_numpy(blink_profile(blink, ds.fps)),
        "eyes_open": torch.from_numpy(np.median(awake, 0).astype(np.float32)),
    })
    cfg = tmeta["config"]
    intr = tmeta["intrinsics"]
    meta = {
        "created_by": f"nerf_talk {__version__}",
        "fps": float(ds.fps),
        "size": [int(intr["height"]), int(intr["width"])],
        "intrinsics": intr,
        "head_aabb": tmeta["head_aabb"],
        "n_motion": int(tmeta["n_motion"]),
        "motion_explained": tmeta.get("motion_explained"),
        "config": cfg,
        "recipe": {"stages": [(s["name"], s["kind"], s["steps"]) for s in cfg["stages"]],
                   "scale": cfg["data"]["scale"]},
        "torso_trained": tmeta.get("figures", {}).get("torso") == "field",
        "figures": tmeta.get("figures", {}),
        "steps": tmeta.get("steps"),
        "adapter": a_meta,
        "motion_model": mm_header,
        "blink_rate_per_min": _blink_rate(ds, blink),
        "source": {"dataset": str(ds.root), "fingerprint": ds.manifest.get("source", {}).get("fingerprint")},
    }
    parts = AvatarParts(tensors, meta)
    save_avatar(parts, out_path)
    log.info("avatar written: %s (%.1f MB)", out_path, Path(out_path).stat().st_size / 2**20)
    return parts

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
  motion_model.*  the audio-to-motion model the adapter was fitted against, embedded so that a later update of the
                  shipped model cannot silently break this avatar's adapter: the generic network, or its fine-tune
                  on this person's clip when that scored better on the clip's held-out tail (meta motion_finetune)
  pose_track      float32 [N, 4, 4] the person's own head-pose track (camera-to-head), for generated head motion
  pose_speech     uint8 [N] voice activity of the same frames (segments are matched by speaking state)
  blink_profile   float32 [L] the person's mean blink curve
  eyes_open       float32 [2] the person's typical open-eye openness (left, right)
The checksum is sha256 over the canonical JSON of the metadata (all but the checksum itself), then (name, dtype,
shape, bytes) of every tensor in sorted name order; a flipped bit, an edited field, a truncated file or a tensor
swapped in from another avatar is refused at load with a message saying what is wrong. Every metadata field is
checked for type and bounds from the header alone, before any tensor is read or anything is built from it.
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
# 4: the checksum covers the metadata too (a version 3 file's fps or intrinsics could be edited unnoticed); the
# tensors are unchanged, so a version 3 avatar's training directory exports a version 4 file.
# 5: the embedded motion model may be fine-tuned on the person (motion_finetune says whether and how it scored); a
# version 3 or 4 training directory exports a version 5 file (the fine-tune runs at export).
# 6: the head field gained its landmark warp (train.model.FIELDS_VERSION 4: the hash grid holds the neutral face and
# the tracked landmarks move samples to it); older weights hold one face per motion, so older files are fitted again.
# 7: the warp parts the lips (`head.warp.lower_side`, FIELDS_VERSION 5); version 6 weights were fitted to a warp that
# blended the two lips, their mouth residual paints openings the new warp already makes, so they are fitted again.
# 8: the warp also moves the skin around the lips (`head.warp.lower_*` hold the mouth's context points after the
# tracked lower face, FIELDS_VERSION 6); version 7 weights were fitted to a warp that spread the lips' displacement
# over that skin, so they are fitted again.
# 9: the gap between parted lips is looked up in a mouth interior of the field's own (fields.warp.mouth_gap,
# FIELDS_VERSION 7); version 8 weights painted the interior per motion in the mouth residual, so they are fitted again.
FORMAT_VERSION = 9
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
# Limits on what a file may ask the loader to parse or allocate. Real avatars stay far inside them (the demo's
# header is about 20 KB and its metadata nested 6 deep; the largest recipe, head.toml, has 16 x 2^19 x 2 = 2^24
# hash-table parameters per field); a crafted file asking for more is refused before anything is allocated.
MAX_HEADER_BYTES = 4 << 20  # the safetensors header: the tensor list + our metadata
MAX_DEPTH = 16  # JSON nesting of the metadata
MIN_SIDE, MAX_SIDE = 8, 4096  # image height / width in pixels (the renderer allocates per pixel)
MAX_HASH_PARAMS = 1 << 26  # n_levels x 2^log2_table_size x features of one field's hash grid: 256 MB of float32

# Every number the loader, the modules and the renderer read from the metadata: (path, integer?, lower, upper).
NUMBERS = (
    ("fps", False, 1.0, 240.0),
    ("n_motion", True, 1, 256),
    ("blink_rate_per_min", False, 0.0, 240.0),
    ("intrinsics.width", True, MIN_SIDE, MAX_SIDE),
    ("intrinsics.height", True, MIN_SIDE, MAX_SIDE),
    ("intrinsics.fx", False, 1e-3, 1e6),
    ("intrinsics.fy", False, 1e-3, 1e6),
    ("intrinsics.cx", False, -1e6, 1e6),
    ("intrinsics.cy", False, -1e6, 1e6),
    ("config.render.grid_resolution", True, 1, 512),  # 512^3 cells: 512 MB of density; recipes use <= 128
    ("config.render.chunk", True, 1, 1 << 20),
    ("config.render.max_samples", True, 1, 8192),
    ("config.render.step_size", False, 1e-5, 1.0),
    ("config.render.early_stop_eps", False, 0.0, 1.0),
    *((f"config.{part}.{name}", True, lo, hi) for part in ("head", "torso") for name, lo, hi in (
        ("n_levels", 1, 64), ("n_features_per_level", 1, 16), ("log2_table_size", 1, 26),
        ("base_resolution", 1, 1 << 16), ("finest_resolution", 1, 1 << 16), ("hidden", 1, 1024))),
    ("config.head.geo_features", True, 1, 1024),
    ("config.head.motion_code", True, 1, 1024),
    ("config.head.latent_dim", True, 0, 1024),
    ("config.torso.pose_code", True, 1, 1024),
    ("motion_model.in_dim", True, 1, 4096),
    ("motion_model.model.hidden", True, 1, 4096),
    ("motion_model.model.n_coeffs", True, 1, 1024),
    ("motion_model.model.front_kernel", True, 1, 256),
    ("motion_model.model.lookahead", True, 0, 256),
)
# Lists of integers: (path, length or None, max length, lower, upper).
INT_LISTS = (
    ("size", 2, 2, MIN_SIDE, MAX_SIDE),
    ("adapter.points", None, 10000, 0, 100000),
    ("adapter.context", None, 64, -1000, 1000),
    ("motion_model.points", None, 10000, 0, 100000),
    ("motion_model.model.dilations", None, 64, 1, 4096),
)
REQUIRED_META = ("kind", "format_version", "fps", "size", "intrinsics", "head_aabb", "n_motion", "config", "adapter",
                 "motion_model", "motion_finetune", "blink_rate_per_min", "tensors", "checksum")
DAMAGED = "the file was altered or damaged; copy it again from where it was made, or export it again."
# safetensors' dtype codes -> torch's names, as the `tensors` list writes them.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def canonical_meta(meta: dict) -> bytes:
    """The metadata as the checksum covers it: every field but `checksum`, JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def avatar_checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 over the canonical metadata (length-prefixed), then name, dtype, shape and raw bytes of every tensor in
    sorted name order."""
    doc = canonical_meta(meta)
    h = hashlib.sha256(len(doc).to_bytes(8, "little") + doc)
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


def _field(meta: dict, path: str, where: str):
    """meta's value at a dotted path; a missing key (or a non-object on the way) is an AvatarError."""
    v = meta
    for i, key in enumerate(path.split(".")):
        if not isinstance(v, dict):
            raise AvatarError(f"{where}: metadata field {'.'.join(path.split('.')[:i])} is not an object", DAMAGED)
        if key not in v:
            raise AvatarError(f"{where}: the metadata lacks the field {path}", DAMAGED)
        v = v[key]
    return v


def _is_number(v, integer: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) if integer else math.isfinite(v)


def _bad(where: str, path: str, v, expected: str) -> AvatarError:
    return AvatarError(f"{where}: metadata field {path} is {json.dumps(v)[:60]}, expected {expected}", DAMAGED)


def _check_depth(meta, where: str) -> None:
    stack = [(meta, 1)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            raise AvatarError(f"{where}: the avatar metadata is nested over {MAX_DEPTH} levels deep", DAMAGED)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)


def _parse_meta(text: str, where: str) -> dict:
    try:
        meta = json.loads(text)
    except RecursionError:  # Python's parser gives up on deep nesting (about 1000 levels)
        raise AvatarError(f"{where}: the avatar metadata is nested over {MAX_DEPTH} levels deep", DAMAGED) from None
    except ValueError as e:
        raise AvatarError(f"{where}: the avatar metadata is not valid JSON ({e})", DAMAGED) from None
    if not isinstance(meta, dict):
        raise AvatarError(f"{where}: the avatar metadata is {type(meta).__name__}, not a JSON object", DAMAGED)
    _check_depth(meta, where)
    return meta


def validate_meta(meta: dict, where: str = "avatar") -> None:
    """Checks the metadata alone: kind, version, required fields, and every number the loader, the modules and the
    renderer read (type, finite, within bounds), so that nothing is allocated from a value out of range."""
    from dataclasses import fields

    from nerf_talk.config import TrainConfig, from_dict
    from nerf_talk.motion.model import ModelConfig

    if meta.get("kind") != KIND:
        raise AvatarError(f"{where} is not a nerf_talk avatar (kind {str(meta.get('kind'))[:60]!r})",
                          "give a file written by `nerf-talk fit` or `nerf-talk export`.")
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        newer = _is_number(v, True) and v > FORMAT_VERSION
        if newer:
            hint = "update nerf_talk to read it."
        else:
            hint = ("fit it again (`nerf-talk fit`): older avatars were trained with an earlier landmark warp (the "
                    "lips, jaw and eyelids that follow the drive), and re-exporting cannot retrain them.")
        raise AvatarError(f"{where} has avatar format version {json.dumps(v)[:20]}; this nerf_talk ({__version__}) "
                          f"reads version {FORMAT_VERSION}", hint)
    for key in REQUIRED_META:
        _field(meta, key, where)
    for key in ("intrinsics", "config", "adapter", "motion_model", "motion_finetune", "tensors"):
        if not isinstance(meta[key], dict):
            raise _bad(where, key, meta[key], "an object")
    if not isinstance(meta["motion_finetune"].get("used"), bool):
        raise _bad(where, "motion_finetune.used", meta["motion_finetune"].get("used"), "true or false")
    if not isinstance(meta["checksum"], str):
        raise _bad(where, "checksum", meta["checksum"], "a hex string")
    for path, integer, lo, hi in NUMBERS:
        x = _field(meta, path, where)
        if not _is_number(x, integer) or not lo <= x <= hi:
            raise _bad(where, path, x, f"{'an integer' if integer else 'a finite number'} from {lo:g} to {hi:g}")
    for path, n, max_len, lo, hi in INT_LISTS:
        x = _field(meta, path, where)
        if (not isinstance(x, list) or (n is not None and len(x) != n) or len(x) > max_len
                or not all(_is_number(i, True) and lo <= i <= hi for i in x)):
            count = f"{n}" if n is not None else f"up to {max_len}"
            raise _bad(where, path, x, f"a list of {count} integers from {lo} to {hi}")
    box = meta["head_aabb"]
    if (not isinstance(box, list) or len(box) != 6 or not all(_is_number(x, False) and abs(x) <= 100 for x in box)
            or not all(box[i] < box[i + 3] for i in range(3))):
        raise _bad(where, "head_aabb", box, "6 finite numbers (metres): a box's minimum corner, then its maximum")
    h, w = meta["size"]
    if (meta["intrinsics"]["height"], meta["intrinsics"]["width"]) != (h, w):
        raise AvatarError(f"{where}: intrinsics are for {meta['intrinsics']['width']}x{meta['intrinsics']['height']}"
                          f" but the avatar's size is {w}x{h}", DAMAGED)
    if not isinstance(meta["motion_model"].get("vocab"), list) or not all(
            isinstance(x, str) for x in meta["motion_model"]["vocab"]):
        raise _bad(where, "motion_model.vocab", meta["motion_model"].get("vocab"), "a list of strings")
    unknown = set(meta["motion_model"]["model"]) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise AvatarError(f"{where}: unknown motion model setting(s) {', '.join(sorted(unknown))[:80]}", DAMAGED)
    try:
        from_dict(TrainConfig, meta["config"], "config.")
    except UserError as e:
        raise AvatarError(f"{where}: {e.problem}", DAMAGED) from None
    for part in ("head", "torso"):
        c = meta["config"][part]
        n = c["n_levels"] * (1 << c["log2_table_size"]) * c["n_features_per_level"]
        if n > MAX_HASH_PARAMS:
            raise AvatarError(f"{where}: config.{part} asks for a hash grid of {n:,} parameters (over "
                              f"{MAX_HASH_PARAMS:,})", DAMAGED)


def check_tensor_list(meta: dict, shapes: dict[str, list], where: str = "avatar") -> None:
    """Checks the tensors' names, dtypes and shapes ({name: [dtype, shape]}, from the file's header: nothing loaded)
    against the metadata and against each other."""
    missing = [k for k in REQUIRED if k not in shapes]
    if missing or not any(k.startswith("motion_model.") for k in shapes):
        raise AvatarError(f"{where} lacks tensors {missing or ['motion_model.*']}", "the file is incomplete; export it "
                          "again.")
    listed = meta["tensors"]
    if listed != shapes:
        diff = sorted(k for k in set(listed) | set(shapes) if listed.get(k) != shapes.get(k))
        raise AvatarError(f"{where}: tensors do not match the header's list ({', '.join(diff[:5])})", DAMAGED)
    h, w = meta["size"]
    if shapes["background"] != ["uint8", [h, w, 3]]:
        dtype, shape = shapes["background"]
        raise AvatarError(f"{where}: background is {dtype} {shape}, expected uint8 [{h}, {w}, 3]", DAMAGED)
    dims = {k: s for k, (_, s) in shapes.items()}
    if (len(dims["model.motion_components"]) != 2 or dims["model.motion_components"][0] != meta["n_motion"]
            or len(dims["adapter.A"]) != 2 or len(dims["adapter.components"]) < 1
            or dims["adapter.A"][1] != dims["adapter.components"][0]):
        raise AvatarError(f"{where}: the motion basis and the adapter disagree on their sizes", DAMAGED)
    if len(dims["pose_track"]) != 3 or dims["pose_track"][1:] != [4, 4] or dims["pose_track"][0] < 1:
        raise AvatarError(f"{where}: pose_track has shape {dims['pose_track']}, expected [N, 4, 4]", DAMAGED)
    if dims["pose_speech"] != dims["pose_track"][:1]:
        raise AvatarError(f"{where}: pose_speech and pose_track differ in length", DAMAGED)
    res = meta["config"]["render"]["grid_resolution"]
    if "model.grid.density" in dims and dims["model.grid.density"] != [res ** 3]:
        raise AvatarError(f"{where}: config.render.grid_resolution is {res} but the stored occupancy grid has "
                          f"{dims['model.grid.density']} cells", DAMAGED)


def validate(parts: AvatarParts, where: str = "avatar") -> None:
    """Checks the metadata and the tensors' list (see validate_meta, check_tensor_list)."""
    validate_meta(parts.meta, where)
    check_tensor_list(parts.meta, _shapes(parts.tensors), where)


# -- file I/O ----------------------------------------------------------------------------------------------------
def save_avatar(parts: AvatarParts, path: str | os.PathLike) -> Path:
    """Writes `parts` to `path` atomically (temporary file + rename) with the shape list and checksum filled in."""
    from safetensors.torch import save_file

    from nerf_talk.media import atomic_output

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in parts.tensors.items()}
    # Through JSON and back: the metadata exactly as a reader will see it (tuples become lists), so the checksum
    # computed here is the one load_avatar computes.
    meta = json.loads(json.dumps(dict(parts.meta, kind=KIND, format_version=FORMAT_VERSION, tensors=_shapes(tensors),
                                      checksum="")))
    meta["checksum"] = avatar_checksum(tensors, meta)
    validate(AvatarParts(tensors, meta), str(path))
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    parts.meta = meta
    return path


def load_avatar(path: str | os.PathLike) -> AvatarParts:
    """Reads and verifies an avatar file; raises AvatarError (a UserError) for anything damaged or foreign.

    The header is read and checked first (its size, the metadata's nesting, every field, the tensors' list), so a
    crafted file cannot make the loader allocate more than the tensors it holds; then the tensors are read and the
    checksum (metadata + tensors) is verified."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise AvatarError(f"avatar file not found: {path}", "make one with `nerf-talk fit VIDEO -o NAME.avatar`.")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise AvatarError(f"{path} is {kind}, not an avatar file",
                          "give the NAME.avatar file written by `nerf-talk fit` or `nerf-talk export`.")
    unreadable = "the file is damaged or truncated, or not an avatar; export it again."
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise AvatarError(f"{path} is not a readable avatar file: its header would be {n:,} bytes (an "
                              f"avatar's is under {MAX_HEADER_BYTES:,})",
                              unreadable)
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes = {k: [_DTYPES.get(s.get_dtype(), s.get_dtype()), list(s.get_shape())]
                      for k in f.keys() for s in [f.get_slice(k)]}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AvatarError(f"{path} is not a readable avatar file ({type(e).__name__}: {e})", unreadable) from e
    if META_KEY not in header:
        raise AvatarError(f"{path} is a safetensors file but not a nerf_talk avatar (no {META_KEY!r} metadata)",
                          "give a file written by `nerf-talk fit` or `nerf-talk export`.")
    meta = _parse_meta(header[META_KEY], str(path))
    validate_meta(meta, str(path))
    check_tensor_list(meta, shapes, str(path))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AvatarError(f"{path} is not a readable avatar file ({type(e).__name__}: {e})", unreadable) from e
    got = avatar_checksum(tensors, meta)
    if got != meta["checksum"]:
        raise AvatarError(f"{path}: checksum mismatch (stored {meta['checksum'][:12]}..., computed {got[:12]}...): "
                          "the metadata or the tensors were damaged or altered",
                          "copy the file again from where it was made, or export it again.")
    return AvatarParts(tensors, meta)


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
    from nerf_talk.motion.adapter import select_adapter

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
    adapter = select_adapter(motion_model.basis, coeffs[fit], motion[fit], points, ds.fps, n_components=n_comp)
    log.info("motion: %s adapter: %s", adapter.info["kind"], adapter.info["reason"])
    return adapter, speech


def personal_motion_model(ds, motion_model, frames: list[int], cfg=None):
    """(model, report): the generic motion model fine-tuned on the dataset's own speech and lips over the training
    frames (motion.finetune: early-stopped on their held-out tail), or the generic model itself when the fine-tune
    does not score better there; the report says which and why (logged too)."""
    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion.finetune import FinetuneConfig, finetune, too_short
    from nerf_talk.motion.model import MODEL_FPS

    cfg = cfg or FinetuneConfig()
    # The training frames' contiguous stretch (preprocessing holds out the clip's end), in model frames.
    contiguous = frames == list(range(frames[0], frames[-1] + 1))
    first, last = (frames[0], frames[-1] + 1) if contiguous else (0, ds.n_frames)
    start, end = (int(round(f / ds.fps * MODEL_FPS)) for f in (first, last))
    reason = too_short(end - start, cfg)
    if reason:  # decided before reading anything
        log.info("motion: keeping the generic model: %s", reason)
        return motion_model, {"used": False, "reason": reason}
    src = cp.load_real(ds.root, motion_model.vocab)  # features and motion at the model's frame rate
    end = min(end, src.n_frames)
    feats = {k: np.asarray(v)[start:end] for k, v in src.features.items()}
    model, report = finetune(motion_model, feats, np.asarray(src.motion)[start:end], _motion_points(
        ds, src.motion.shape[1]), cfg)
    if report["used"]:
        log.info("motion: fine-tuned on the person's clip (held-out tail opening correlation %.3f -> %.3f, %.0f s)",
                 report["tail_opening_corr"]["generic"], report["tail_opening_corr"]["finetuned"],
                 report["cpu_seconds"])
    else:
        log.info("motion: keeping the generic model: %s", report["reason"])
    return model, report


def export_avatar(train_dir: str | os.PathLike, out_path: str | os.PathLike, dataset_dir=None,
                  motion_model=None, finetune_motion: bool = True) -> AvatarParts:
    """Builds the avatar of a finished training directory (avatar.safetensors + avatar.json written by the trainer)
    and writes it to `out_path`. The dataset (default: the one avatar.json names) supplies the person's pose track,
    blinks and speech for the personal adapter; `motion_model` defaults to the shipped generic model, fine-tuned on
    the person's clip when that helps (personal_motion_model) unless `finetune_motion` is False."""
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
    if finetune_motion:
        motion_model, ft_report = personal_motion_model(ds, motion_model, frames)
    else:
        ft_report = {"used": False, "reason": "not asked for"}
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
        "motion_finetune": ft_report,
        "blink_rate_per_min": _blink_rate(ds, blink),
        "source": {"dataset": str(ds.root), "fingerprint": ds.manifest.get("source", {}).get("fingerprint")},
    }
    parts = AvatarParts(tensors, meta)
    save_avatar(parts, out_path)
    log.info("avatar written: %s (%.1f MB)", out_path, Path(out_path).stat().st_size / 2**20)
    return parts

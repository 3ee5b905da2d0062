"""The generic audio-to-motion network and its file format.

Audio2Motion maps model input frames x [B, T, D] (features.input_features) to
  coeffs [B, T, C]  coefficients of the generic motion basis (a PCA of identity-normalised lower-face motion pooled
                    over the corpus), so motion = mean + coeffs @ components, reshaped to [T, K, 3]
  blink  [B, T]     blink logits (blinks cluster at phrase boundaries; speech does not decide them alone)
at the model frame rate (MODEL_FPS); predict.py resamples to any video rate.

Streaming: the network is a stack of 1-D convolutions, all causal except the first, which looks `lookahead` frames
ahead. Frame t's output therefore depends on input frames [t - receptive_left, t + lookahead] only, so a live caller
delays its output by lookahead / MODEL_FPS seconds (160 ms at the default of 4 frames) and runs chunk by chunk with
the last receptive_left frames kept as state (see StreamingState in predict.py).

File: <name>.safetensors holds the tensors (no pickle); <name>.json holds the architecture, the basis's landmark
indices, the feature vocabulary and what the model was trained on. load() checks both against each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nerf_talk.errors import UserError
from nerf_talk.motion.basis import GenericMotionBasis

MODEL_FPS = 25.0
FORMAT = "nerf_talk.audio2motion"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Architecture of the generic model."""

    hidden: int = 160  # channels of every convolution
    lookahead: int = 4  # frames the first convolution sees ahead of the current one (4 = 160 ms at 25 fps)
    front_kernel: int = 9  # the first (non-causal) convolution's width
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4])  # causal blocks, kernel 3 each
    n_coeffs: int = 16  # generic basis size
    dropout: float = 0.1
    input_dropout: float = 0.1  # drops whole feature channels in training, so no single feature is relied on


class CausalBlock(nn.Module):
    """Residual block: a causal dilated convolution (kernel 3), GELU, a 1x1 convolution; x [B, H, T]."""

    def __init__(self, hidden: int, dilation: int, dropout: float):
        super().__init__()
        self.left = 2 * dilation
        self.conv = nn.Conv1d(hidden, hidden, 3, dilation=dilation)
        self.mix = nn.Conv1d(hidden, hidden, 1)
        # Per-frame layer norm over channels: the same statistics at any chunking (GroupNorm over time would not be).
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, T] -> [B, H, T]
        h = nn.functional.pad(x, (self.left, 0))
        h = self.mix(nn.functional.gelu(self.conv(h)))
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        return x + self.drop(h)


class Audio2Motion(nn.Module):
    def __init__(self, cfg: ModelConfig, in_dim: int):
        super().__init__()
        if not 0 <= cfg.lookahead < cfg.front_kernel:
            raise ValueError(f"lookahead must be in [0, front_kernel), is {cfg.lookahead} (kernel {cfg.front_kernel})")
        self.cfg = cfg
        self.in_dim = in_dim
        self.inp = nn.Linear(in_dim, cfg.hidden)
        self.front = nn.Conv1d(cfg.hidden, cfg.hidden, cfg.front_kernel)
        self.front_pad = (cfg.front_kernel - 1 - cfg.lookahead, cfg.lookahead)
        self.blocks = nn.ModuleList(CausalBlock(cfg.hidden, d, cfg.dropout) for d in cfg.dilations)
        self.head = nn.Linear(cfg.hidden, cfg.n_coeffs + 1)
        self.input_drop = nn.Dropout1d(cfg.input_dropout)
        # Each coefficient's spread over the corpus (GenericMotionBasis.scale): the head predicts coefficients in these
        # units, so that all start at the right size whatever the corpus's amplitude.
        self.register_buffer("out_scale", torch.ones(cfg.n_coeffs))

    @property
    def receptive_left(self) -> int:
        """Past frames that influence one output frame."""
        return self.front_pad[0] + sum(b.left for b in self.blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> (coeffs [B, T, C], blink logits [B, T])."""
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"expected input [B, T, {self.in_dim}], got {tuple(x.shape)}")
        h = self.inp(x)  # [B, T, H]
        h = self.input_drop(h.transpose(1, 2))  # [B, H, T]
        h = nn.functional.gelu(self.front(nn.functional.pad(h, self.front_pad)))
        for b in self.blocks:
            h = b(h)
        out = self.head(h.transpose(1, 2))  # [B, T, C + 1]
        return out[..., :-1] * self.out_scale, out[..., -1]


@dataclass
class MotionModel:
    """Everything needed to run the generic model: network, basis, feature vocabulary, metadata."""

    net: Audio2Motion
    basis: GenericMotionBasis
    vocab: list[str]
    viseme_motion: np.ndarray  # [N_VISEMES, C] per-viseme mean coefficients (synthetic targets; predict.close_bilabials)
    meta: dict

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tensors.update({
            "basis.mean": torch.from_numpy(self.basis.mean), "basis.components": torch.from_numpy(self.basis.components),
            "basis.scale": torch.from_numpy(self.basis.scale),
            "viseme_motion": torch.from_numpy(np.ascontiguousarray(self.viseme_motion, np.float32)),
        })
        # Stored as float16 where it is a network weight: halves the file, no measurable change in output.
        tensors = {k: (v.half() if k.startswith("net.") and v.is_floating_point() else v.float()) for k, v in tensors.items()}
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": asdict(self.net.cfg),
                  "in_dim": self.net.in_dim, "points": self.basis.points, "vocab": self.vocab, "meta": self.meta}
        save_file(tensors, str(path.with_suffix(".safetensors")), metadata={"format": FORMAT})
        path.with_suffix(".json").write_text(json.dumps(header, indent=1, ensure_ascii=False))

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> "MotionModel":
        from safetensors.torch import load_file

        path = Path(path)
        st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for p in (st, js):
            if not p.exists():
                raise UserError(f"motion model file {p} is missing", "both NAME.safetensors and NAME.json are needed.")
        header = json.loads(js.read_text())
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{js} is not a nerf_talk audio2motion model of format {FORMAT_VERSION}",
                            f"it says {header.get('format')!r} version {header.get('format_version')!r}")
        tensors = load_file(str(st))
        cfg = ModelConfig(**header["model"])
        net = Audio2Motion(cfg, int(header["in_dim"]))
        state = {k[4:]: v.float() for k, v in tensors.items() if k.startswith("net.")}
        net.load_state_dict(state)
        net.eval().to(device)
        basis = GenericMotionBasis(list(header["points"]), tensors["basis.mean"].numpy(), tensors["basis.components"].numpy(),
                            tensors["basis.scale"].numpy())
        if basis.components.shape != (cfg.n_coeffs, 3 * len(basis.points)):
            raise UserError(f"{st}: basis shape {tuple(basis.components.shape)} does not match the header")
        return MotionModel(net, basis, list(header["vocab"]), tensors["viseme_motion"].numpy(), header["meta"])

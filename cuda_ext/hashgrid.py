"""Multiresolution hash-grid encoding (instant-ngp) in 2D and 3D: config, functional op and module."""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from . import _backend, _torch_impl

MAX_LEVELS = 32
MAX_FEATURES = 8


def _f32(v: float) -> float:
    """`v` rounded to float32 (the kernels and the reference both use this exact value)."""
    return struct.unpack("f", struct.pack("f", v))[0]


@dataclass(frozen=True)
class HashGridConfig:
    """Shape of a hash grid. Level l has resolution base * b^l, b chosen so the last level reaches `finest`.

    dims: 2 (torso, tri-plane fields) or 3 (head).
    n_levels: number of resolution levels L (1..32).
    n_features_per_level: F (1..8); the encoding has L * F channels.
    log2_table_size: T = 2^log2_table_size entries per level (coarse levels index densely when they fit).
    base_resolution, finest_resolution: grid resolution of the first and last level.
    """

    dims: int = 3
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, is {self.dims}")
        if not 1 <= self.n_levels <= MAX_LEVELS:
            raise ValueError(f"n_levels must be in [1, {MAX_LEVELS}], is {self.n_levels}")
        if not 1 <= self.n_features_per_level <= MAX_FEATURES:
            raise ValueError(f"n_features_per_level must be in [1, {MAX_FEATURES}], is {self.n_features_per_level}")
        if not 1 <= self.log2_table_size <= 31:
            raise ValueError(f"log2_table_size must be in [1, 31], is {self.log2_table_size}")
        if self.base_resolution < 2:
            raise ValueError(f"base_resolution must be >= 2, is {self.base_resolution}")
        if self.finest_resolution < self.base_resolution:
            raise ValueError(
                f"finest_resolution ({self.finest_resolution}) must be >= base_resolution ({self.base_resolution})"
            )

    @property
    def table_size(self) -> int:
        return 1 << self.log2_table_size

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features_per_level

    @property
    def per_level_scale(self) -> float:
        if self.n_levels == 1:
            return 1.0
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))

    def level_params(self) -> tuple[list[float], list[int], list[bool]]:
        """(scales, resolutions, dense) per level, as passed to the kernels.

        scale_l = base * b^l - 1 (float32); a point x maps to x * scale_l + 0.5, whose corners reach at most
        ceil(scale_l) + 1, hence resolution_l = ceil(scale_l) + 2. A level is dense when resolution^dims fits the table.
        """
        return tuple(list(v) for v in _level_params(self))

    def init_table(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> torch.Tensor:  # [L, T, F]
        """instant-ngp's initialisation: uniform in [-1e-4, 1e-4]."""
        t = torch.empty(self.n_levels, self.table_size, self.n_features_per_level, dtype=torch.float32, device=device)
        t.uniform_(-1e-4, 1e-4, generator=generator)
        return t.to(dtype)


@functools.lru_cache(maxsize=64)
def _level_params(cfg: HashGridConfig) -> tuple[tuple[float, ...], tuple[int, ...], tuple[bool, ...]]:
    """HashGridConfig.level_params, once per config (computed per call, it was a third of a small call's Python
    overhead; a frame's samples are encoded chunk by chunk)."""
    scales, resolutions, dense = [], [], []
    b = cfg.per_level_scale
    for level in range(cfg.n_levels):
        s = _f32(cfg.base_resolution * b**level - 1.0)
        r = math.ceil(s) + 2
        scales.append(s)
        resolutions.append(r)
        dense.append(r**cfg.dims <= cfg.table_size)
    return tuple(scales), tuple(resolutions), tuple(dense)


def _encode(x, table, params, backend, lookup_dtype) -> tuple[torch.Tensor, torch.Tensor]:  # (out, table as read)
    lookup = table if lookup_dtype in (None, table.dtype) else table.to(lookup_dtype)
    return _backend.module_for(backend).hash_encode_forward(x, lookup, *params), lookup


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, params, backend, lookup_dtype):  # x [N, D], table [L, T, F]
        out, lookup = _encode(x, table, params, backend, lookup_dtype)
        ctx.save_for_backward(x, lookup)
        ctx.params, ctx.backend = params, backend
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, lookup = ctx.saved_tensors
        ext = _backend.module_for(ctx.backend)
        grad_table, grad_x = ext.hash_encode_backward(
            grad_out.contiguous(), x, lookup, *ctx.params, ctx.needs_input_grad[1], ctx.needs_input_grad[0]
        )
        return grad_x, grad_table, None, None, None


def hash_encode(
    x: torch.Tensor,  # [..., D] in [0, 1] (clamped)
    table: torch.Tensor,  # [L, T, F] or flat [L * T * F]
    cfg: HashGridConfig,
    backend: str | None = None,
    table_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # [..., L * F]
    """Encodes points with the hash grid `table`; differentiable w.r.t. `table` and `x`.

    On CUDA the output and `x` are float32, and the table is read as float16 when it is float16 or when
    `table_dtype=torch.float16` (half the table's read traffic). The kernels accumulate its gradient in float32 and
    return it in float32: keep a float32 table and pass table_dtype=torch.float16 to train with float32 gradients
    (autograd casts the gradient of a float16 table to float16). Elsewhere `table_dtype` is ignored; on the CPU `x` is
    cast to the table's dtype (float32 or float64).
    """
    if x.shape[-1] != cfg.dims:
        raise ValueError(f"x must have shape [..., {cfg.dims}], got {list(x.shape)}")
    shape3 = (cfg.n_levels, cfg.table_size, cfg.n_features_per_level)
    if table.numel() != math.prod(shape3):
        raise ValueError(f"table must have shape {list(shape3)} (or be flat), got {list(table.shape)}")
    if table.device != x.device:
        raise ValueError(f"table is on {table.device} but x on {x.device}")
    table3 = table.reshape(shape3) if table.shape != shape3 else table
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cfg.dims)
    scales, resolutions, dense = cfg.level_params()
    name = _backend.resolve(backend, x.device)
    if name == "torch":
        out = _torch_impl.hash_encode(x2.to(torch.promote_types(table.dtype, torch.float32)), table3, scales,
                                      resolutions, dense)
    else:
        if name == "cuda":
            x2 = x2.float()
        elif table3.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the cpu backend needs a float32 or float64 table, got {table3.dtype}")
        else:
            x2 = x2.to(table3.dtype)
        params = (scales, resolutions, dense)
        lookup_dtype = table_dtype if name == "cuda" else None
        args = (x2.contiguous(), table3.contiguous(), params, name, lookup_dtype)
        if torch.is_grad_enabled() and (x2.requires_grad or table3.requires_grad):
            out = _HashEncode.apply(*args)
        else:  # (no graph to record: the autograd Function's bookkeeping costs more than a small call's work)
            out = _encode(*args)[0]
    return out.reshape(*lead, cfg.out_dim)


class HashGrid(torch.nn.Module):
    """A hash-grid encoding that owns its table: `forward(x [..., D] in [0, 1]) -> [..., L * F]`.

    backend: "auto" | "cuda" | "cpu" | "torch" (None: the process default), or "tcnn" to use tiny-cuda-nn's
    encoding on CUDA when it is installed (its own parameter layout; same config).
    dtype: float16 keeps the table in float32 (the parameter the optimizer steps, with float32 gradients) and reads it
    as float16 on CUDA; float32 and float64 are the table's own dtype.
    """

    def __init__(self, cfg: HashGridConfig, dtype: torch.dtype = torch.float32, backend: str | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.backend = backend
        self._tcnn = None
        self.lookup_dtype = None
        if backend == "tcnn":
            try:
                import tinycudann as tcnn
            except ImportError as e:
                raise ImportError("backend='tcnn' needs tinycudann (pip install tiny-cuda-nn's torch bindings)") from e
            self._tcnn = tcnn.Encoding(
                cfg.dims,
                {
                    "otype": "HashGrid",
                    "n_levels": cfg.n_levels,
                    "n_features_per_level": cfg.n_features_per_level,
                    "log2_hashmap_size": cfg.log2_table_size,
                    "base_resolution": cfg.base_resolution,
                    "per_level_scale": cfg.per_level_scale,
                },
                dtype=dtype,
            )
        else:
            self.lookup_dtype = dtype if dtype == torch.float16 else None
            self.table = torch.nn.Parameter(cfg.init_table(dtype=torch.float32 if self.lookup_dtype else dtype,
                                                           device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tcnn is not None:
            lead = x.shape[:-1]
            x = x.reshape(-1, self.cfg.dims).clamp(0.0, 1.0)  # (our kernels clamp; tiny-cuda-nn's may not)
            return self._tcnn(x).float().reshape(*lead, self.cfg.out_dim)
        return hash_encode(x, self.table, self.cfg, backend=self.backend, table_dtype=self.lookup_dtype)

    def extra_repr(self) -> str:
        return f"{self.cfg}, backend={self.backend}"

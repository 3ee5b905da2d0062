"""Backend selection and lazy JIT loading of the compiled kernels.

Backends: ``"cuda"`` (the CUDA extension: bindings.cpp + *.cu), ``"cpu"`` (the C++/OpenMP extension: bindings.cpp +
*_cpu.cpp), ``"torch"`` (the pure-PyTorch reference in ``_torch_impl.py``) and ``"auto"`` (the compiled backend for the
tensors' device, falling back to the reference with one warning when it cannot be built).

Nothing is compiled at import: the first op that needs an extension builds it with ninja
(``torch.utils.cpp_extension.load``) into ``$NERF_TALK_CACHE/cuda_ext/<kind>-<hash>`` (default
``~/.cache/nerf_talk/cuda_ext/...``), the hash covering the sources, the flags and the torch version, so a build is
reused until one of them changes. Concurrent builders are serialised by torch's lock file in that directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

BACKENDS = ("auto", "cuda", "cpu", "torch")
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = {
    "cpu": ["bindings.cpp", "hashgrid_cpu.cpp", "march_cpu.cpp", "composite_cpu.cpp"],
    "cuda": ["bindings.cpp", "hashgrid.cu", "march.cu", "composite.cu"],
}
CPU_CFLAGS = ["-O3", "-fopenmp"]
CPU_LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3", "-DNT_WITH_CUDA"]
CUDA_NVCC_FLAGS = ["-O3", "-DNT_WITH_CUDA"]


class BuildError(RuntimeError):
    """A compiled backend cannot be built or loaded (no compiler, no ninja, no CUDA, or a compile error)."""


_default_backend = os.environ.get("NERF_TALK_BACKEND", "auto")
if _default_backend not in BACKENDS:
    raise ValueError(f"NERF_TALK_BACKEND must be one of {BACKENDS}, is {_default_backend!r}")
_modules: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_warned: set[str] = set()
_lock = threading.Lock()


def set_backend(name: str) -> None:
    """Sets the process-wide default backend (``auto | cuda | cpu | torch``); a ``backend=`` argument overrides it."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, is {name!r}")
    _default_backend = name


def get_backend() -> str:
    """The process-wide default backend."""
    return _default_backend


def cache_root() -> Path:
    """Root of the build cache: ``$NERF_TALK_CACHE/cuda_ext`` or ``~/.cache/nerf_talk/cuda_ext``."""
    base = os.environ.get("NERF_TALK_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "nerf_talk") / "cuda_ext"


def source_hash(kind: str) -> str:
    """Hash of everything a build of `kind` depends on: sources, headers, flags, torch and Python versions."""
    h = hashlib.sha256()
    files = sorted(set(SOURCES[kind]) | {p.name for p in CSRC.glob("*.h")} | {p.name for p in CSRC.glob("*.cuh")})
    for name in files:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    flags = CPU_CFLAGS + CPU_LDFLAGS if kind == "cpu" else CUDA_CFLAGS + CUDA_NVCC_FLAGS
    h.update(repr((kind, flags, torch.__version__, torch.version.cuda, sys.version_info[:2])).encode())
    return h.hexdigest()[:16]


def build_dir(kind: str) -> Path:
    return cache_root() / f"{kind}-{source_hash(kind)}"


def _check_toolchain(kind: str) -> None:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BuildError(
            f"no C++ compiler found: {cxx!r} is not on PATH. Install one (e.g. apt-get install g++) or set CXX; "
            "meanwhile backend='torch' runs the pure-PyTorch reference."
        )
    if not cpp_extension.is_ninja_available():
        raise BuildError("ninja is needed to build cuda_ext: pip install ninja (or apt-get install ninja-build)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise BuildError(f"the CUDA backend needs a CUDA device and a CUDA build of torch (torch {torch.__version__})")
        home = cpp_extension.CUDA_HOME
        nvcc = Path(home) / "bin" / "nvcc" if home else None
        if nvcc is None or not nvcc.exists():
            raise BuildError(f"nvcc not found (CUDA_HOME={home!r}); set CUDA_HOME to the CUDA toolkit")


def load(kind: str, verbose: bool = False) -> ModuleType:
    """Returns the compiled extension `kind` ("cpu" or "cuda"), building it on first use. Raises BuildError."""
    if kind not in SOURCES:
        raise ValueError(f"kind must be 'cpu' or 'cuda', is {kind!r}")
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if kind in _errors:
            raise BuildError(_errors[kind])
        try:
            _check_toolchain(kind)
            from torch.utils.cpp_extension import load as jit_load

            directory = build_dir(kind)
            directory.mkdir(parents=True, exist_ok=True)
            digest = source_hash(kind)
            common = dict(
                name=f"nerf_talk_ext_{kind}_{digest[:8]}",
                sources=[str(CSRC / s) for s in SOURCES[kind]],
                extra_include_paths=[str(CSRC)],
                build_directory=str(directory),
                verbose=verbose,
            )
            # (copies: torch appends its own flags to the lists it is given)
            if kind == "cpu":
                module = jit_load(extra_cflags=list(CPU_CFLAGS), extra_ldflags=list(CPU_LDFLAGS), **common)
            else:
                module = jit_load(extra_cflags=list(CUDA_CFLAGS), extra_cuda_cflags=list(CUDA_NVCC_FLAGS), **common)
        except BuildError as e:
            _errors[kind] = str(e)
            raise
        except Exception as e:  # compiler or loader errors come in many types; report them as one
            _errors[kind] = f"building the {kind} extension in {build_dir(kind)} failed: {type(e).__name__}: {e}"
            raise BuildError(_errors[kind]) from e
        _modules[kind] = module
        return module


def available(kind: str) -> bool:
    """Whether the compiled backend `kind` can be loaded (builds it if needed)."""
    try:
        load(kind)
        return True
    except BuildError:
        return False


def resolve(backend: str | None, device: torch.device) -> str:
    """The concrete backend ("cuda", "cpu" or "torch") that serves tensors on `device`."""
    name = backend or _default_backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, is {name!r}")
    if name == "torch":
        return "torch"
    kind = "cuda" if device.type == "cuda" else "cpu"
    if name == "auto":
        try:
            load(kind)
            return kind
        except BuildError as e:
            if kind not in _warned:
                _warned.add(kind)
                warnings.warn(f"cuda_ext: falling back to the torch reference ({e})", RuntimeWarning, stacklevel=3)
            return "torch"
    if name != kind:
        raise ValueError(f"backend {name!r} cannot run tensors on {device}; move them or use backend='auto'")
    load(kind)
    return kind


def module_for(backend: str) -> ModuleType:
    """The extension module of a concrete compiled backend ("cuda" or "cpu")."""
    return load(backend)

"""Backend selection and lazy JIT loading of the compiled kernels.

Backends: ``"cuda"`` (the CUDA extension: bindings.cpp + *.cu), ``"cpu"`` (the C++/OpenMP extension: bindings.cpp +
*_cpu.cpp), ``"torch"`` (the pure-PyTorch reference in ``_torch_impl.py``) and ``"auto"`` (the compiled backend for the
tensors' device, falling back to the reference with one warning when it cannot be built).

Nothing is compiled at import: the first op that needs an extension builds it with ninja
(``torch.utils.cpp_extension.load``) into ``$NERF_TALK_CACHE/cuda_ext/<kind>-<hash>`` (default
``~/.cache/nerf_talk/cuda_ext/...``), the hash covering the sources, the flags and the torch version, so a build is
reused until one of them changes. Concurrent builders are serialised by an flock in that directory (`_build_lock`).

The CUDA build uses the toolkit that ``find_cuda_home`` finds, not torch's guess (which takes the parent of whatever
``nvcc`` is on PATH, wrong when that is a wrapper script or a symlink farm such as /usr/local/bin).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

BACKENDS = ("auto", "cuda", "cpu", "torch")
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = {
    "cpu": ["bindings.cpp", "hashgrid_cpu.cpp", "march_cpu.cpp", "composite_cpu.cpp", "warp_cpu.cpp", "box_cpu.cpp",
            "mlp_cpu.cpp"],
    "cuda": ["bindings.cpp", "hashgrid.cu", "march.cu", "composite.cu", "warp.cu", "box.cu"],
}
# -fno-trapping-math lets the compiler vectorise float -> int conversions (the point warp's exp: 9 instead of 20 ms
# for 66k points x 71 control points on one core); it changes no result (no reassociation, no contraction).
# -ffp-contract=off: no fused multiply-adds, so the C++ kernels compute what the torch reference and the CUDA build
# compute, bit for bit where the math is the same (ray marching decides occupancy from sample positions).
CPU_CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
# The extension is compiled on the machine that runs it, so it may use all of that CPU's vector units: with
# -march=native the vectorised hash-grid encoding takes 11.5 instead of 16 ns per point and level (gathers; 8 levels,
# 2^14 entries, one core of the 2-core x86-64 Xeon; docs/cuda_ext.md). Used when the compiler accepts it; the build
# key then names the CPU.
NATIVE_CFLAGS = ["-march=native"]
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


@functools.cache
def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (a home directory shared by machines with
    different CPUs then keeps one build per CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return " | ".join(sorted({line.strip() for line in lines if line.split(":")[0].strip() in keep}))


@functools.cache
def cpu_cflags() -> list[str]:
    """The C++ flags of the CPU build: CPU_CFLAGS, plus NATIVE_CFLAGS when the compiler accepts them (a test compile
    of an empty file; some compilers, e.g. Apple clang before 15 on arm64, reject -march=native)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        ok = subprocess.run([cxx, *NATIVE_CFLAGS, "-x", "c++", "-fsyntax-only", os.devnull], capture_output=True,
                            timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return CPU_CFLAGS + (NATIVE_CFLAGS if ok else [])


def source_hash(kind: str) -> str:
    """Hash of everything a build of `kind` depends on: sources, headers, flags, torch and Python versions (and for
    the CPU build, the CPU it is compiled for)."""
    h = hashlib.sha256()
    files = sorted(set(SOURCES[kind]) | {p.name for p in CSRC.glob("*.h")} | {p.name for p in CSRC.glob("*.cuh")})
    for name in files:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    flags = cpu_cflags() + CPU_LDFLAGS + [_cpu_identity()] if kind == "cpu" else CUDA_CFLAGS + CUDA_NVCC_FLAGS
    h.update(repr((kind, flags, torch.__version__, torch.version.cuda, sys.version_info[:2])).encode())
    return h.hexdigest()[:16]


def build_dir(kind: str) -> Path:
    return cache_root() / f"{kind}-{source_hash(kind)}"


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime_api.h").is_file()


def _toolkit_of_nvcc(nvcc: str) -> Path | None:
    """The toolkit an `nvcc` command belongs to, through symlinks, and through wrapper scripts by asking nvcc itself
    (its dry run prints the directory it runs from as ``_HERE_``)."""
    root = Path(nvcc).resolve().parent.parent
    if _is_toolkit(root):
        return root
    try:
        run = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (run.stdout + run.stderr).splitlines():
        m = re.match(r"#\$ _HERE_=(.+)", line.strip())
        if m and _is_toolkit(Path(m.group(1)).resolve().parent):
            return Path(m.group(1)).resolve().parent
    return None


def find_cuda_home() -> Path:
    """The CUDA toolkit to build with (a directory with bin/nvcc and include/cuda_runtime_api.h): $CUDA_HOME or
    $CUDA_PATH when set, else the toolkit of the `nvcc` on PATH (see _toolkit_of_nvcc), else /usr/local/cuda, else the
    newest /usr/local/cuda-X.Y. Raises BuildError, one line naming what to set, when there is none."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if _is_toolkit(Path(value)):
                return Path(value)
            raise BuildError(f"{var}={value} is not a CUDA toolkit (no bin/nvcc or include/cuda_runtime_api.h there): "
                             f"set {var} to the toolkit's root, e.g. /usr/local/cuda")
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_of_nvcc(nvcc)
        if root is not None:
            return root
    version = lambda p: tuple(int(n) for n in re.findall(r"\d+", p.name))  # noqa: E731
    for root in [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), key=version, reverse=True)]:
        if _is_toolkit(root):
            return root.resolve()
    raise BuildError(f"no CUDA toolkit found (nvcc on PATH: {nvcc or 'none'}; none in /usr/local/cuda*): set CUDA_HOME "
                     "to the toolkit's root, the directory holding bin/nvcc and include/cuda_runtime_api.h")


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
        # torch's build reads its module-level guess; give it the toolkit found here
        cpp_extension.CUDA_HOME = str(find_cuda_home())


def _summary(error: Exception) -> str:
    """A failed build's message cut to its first line and its first compiler errors (the full log: verbose=True)."""
    lines = str(error).splitlines()
    errors = [line.strip() for line in lines[1:] if "error" in line.lower()][:3]
    return " | ".join([f"{type(error).__name__}: {lines[0] if lines else ''}", *errors])


@contextlib.contextmanager
def _build_lock(directory: Path):
    """Serialise builders of one directory with a lock the OS drops when its holder dies.

    torch's own lock is a plain file (`lock`) that a process killed while loading (Ctrl-C twice, SIGKILL, a test's
    timeout) leaves behind, and every later load then waits on it forever: CI hung so, after a test killed a run at
    start-up. Every builder of ours takes this flock first, so a torch lock found while holding it is stale."""
    with open(directory / "build.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
            flags = (dict(extra_cflags=list(cpu_cflags()), extra_ldflags=list(CPU_LDFLAGS)) if kind == "cpu" else
                     dict(extra_cflags=list(CUDA_CFLAGS), extra_cuda_cflags=list(CUDA_NVCC_FLAGS)))
            with _build_lock(directory):
                module = jit_load(**flags, **common)
        except BuildError as e:
            _errors[kind] = str(e)
            raise
        except Exception as e:  # compiler or loader errors come in many types; report them as one
            _errors[kind] = f"building the {kind} extension in {build_dir(kind)} failed: {_summary(e)}"
            raise BuildError(_errors[kind]) from e
        _modules[kind] = module
        return module


def build_error(kind: str) -> str | None:
    """None when the compiled backend `kind` loads (building it if needed), else why it cannot."""
    try:
        load(kind)
        return None
    except BuildError as e:
        return str(e)


def available(kind: str) -> bool:
    """Whether the compiled backend `kind` can be loaded (builds it if needed)."""
    return build_error(kind) is None


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
                if kind == "cuda":  # a GPU left to the reference runs many times slower: say so in full
                    message = (f"cuda_ext: falling back to the torch reference ON THE GPU, many times slower, because "
                               f"the CUDA kernels cannot be built: {e}. Fix the build, or pass backend='torch' to "
                               "choose the reference knowingly.")
                else:
                    message = f"cuda_ext: falling back to the torch reference ({e})"
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            return "torch"
    if name != kind:
        raise ValueError(f"backend {name!r} cannot run tensors on {device}; move them or use backend='auto'")
    load(kind)
    return kind


def module_for(backend: str) -> ModuleType:
    """The extension module of a concrete compiled backend ("cuda" or "cpu")."""
    return load(backend)

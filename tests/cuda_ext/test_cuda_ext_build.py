"""Build, loader and backend switch; torch-free kernel sources; nvcc compile check of the CUDA sources."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import cuda_ext
from cuda_ext import _backend

CSRC = _backend.CSRC


def _nvcc() -> str | None:
    """The toolkit's own nvcc, found as the CUDA build finds it (through wrapper scripts and symlinks)."""
    try:
        return str(_backend.find_cuda_home() / "bin" / "nvcc")
    except cuda_ext.BuildError:
        return None


def test_kernel_sources_are_torch_free():
    kernel_files = [p for p in CSRC.iterdir() if p.suffix in (".h", ".cuh", ".cu") or p.name.endswith("_cpu.cpp")]
    assert len(kernel_files) >= 10
    for path in kernel_files:
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", path.read_text())
        bad = [i for i in includes if i.startswith(("torch", "ATen", "c10", "pybind11"))]
        assert not bad, f"{path.name} includes {bad}: keep kernel sources torch-free (only bindings.cpp uses torch)"


def test_cpu_kernels_compile_without_torch(tmp_path):
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    for name in _backend.SOURCES["cpu"][1:]:
        r = subprocess.run([cxx, "-std=c++17", "-fopenmp", "-Wall", "-Werror", "-fsyntax-only", f"-I{CSRC}",
                            str(CSRC / name)], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}:\n{r.stderr}"


@pytest.mark.skipif(_nvcc() is None, reason="no CUDA toolkit (CUDA_HOME, nvcc, /usr/local/cuda*): CUDA sources not "
                    "compile-checked")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """nvcc -c on every .cu (torch-free), for sm_80 and sm_90, in parallel; plus the CUDA branch of bindings.cpp."""
    nvcc = _nvcc()
    procs = []
    for name in _backend.SOURCES["cuda"][1:]:
        for arch in ("sm_80", "sm_90"):
            # with the defines torch's JIT passes to nvcc (no implicit half conversions)
            cmd = [nvcc, "-std=c++17", "-O1", f"-arch={arch}", "-c", f"-I{CSRC}", "-D__CUDA_NO_HALF_OPERATORS__",
                   "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
                   str(CSRC / name), "-o", str(tmp_path / f"{name}.{arch}.o")]
            procs.append((f"{name} ({arch})", subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                                text=True)))
    # The binding's CUDA branch needs torch's c10/cuda headers and the CUDA runtime headers: syntax-check it.
    from torch.utils.cpp_extension import include_paths

    cuda_include = Path(nvcc).parent.parent / "include"  # find_cuda_home checked cuda_runtime_api.h is there
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx):
        shim = tmp_path / "shim"
        macros = Path(include_paths()[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        if not macros.exists():  # a CPU build of torch does not ship it; it only carries build options
            (shim / "c10" / "cuda" / "impl").mkdir(parents=True)
            (shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#pragma once\n")
        cmd = [cxx, "-std=c++20", "-fsyntax-only", "-DNT_WITH_CUDA", "-DTORCH_EXTENSION_NAME=check", f"-I{CSRC}",
               f"-isystem{cuda_include}", f"-isystem{shim}", f"-isystem{sysconfig.get_paths()['include']}"]
        cmd += [f"-isystem{p}" for p in include_paths()] + [str(CSRC / "bindings.cpp")]
        procs.append(("bindings.cpp (NT_WITH_CUDA)", subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                                      stderr=subprocess.STDOUT, text=True)))
    failures = []
    for label, p in procs:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            failures.append(f"{label}:\n{out}")
    assert not failures, "\n".join(failures)


def test_cpu_extension_builds_into_the_cache_and_is_reused():
    module = _backend.load("cpu")
    assert module.device == "cpu"
    assert _backend.load("cpu") is module
    directory = _backend.build_dir("cpu")
    assert directory.parent == _backend.cache_root()
    assert any(p.suffix == ".so" for p in directory.iterdir())


def test_a_lock_left_by_a_killed_builder_does_not_hang_the_next_one():
    """torch's `lock` file survives a process killed while loading; the next load must clear it, not wait forever."""
    cuda_ext.available("cpu")  # built (or reused) here first, so the child only loads
    stale = _backend.build_dir("cpu") / "lock"
    stale.touch()
    code = "from cuda_ext import _backend; _backend.load('cpu'); print('loaded')"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
    assert not stale.exists()


def test_cache_location_and_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("NERF_TALK_CACHE", str(tmp_path))
    assert _backend.cache_root() == tmp_path / "cuda_ext"
    assert _backend.build_dir("cpu").name.startswith("cpu-")
    monkeypatch.delenv("NERF_TALK_CACHE")
    assert _backend.cache_root() == Path.home() / ".cache" / "nerf_talk" / "cuda_ext"
    # the hash follows the sources
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy)
    monkeypatch.setattr(_backend, "CSRC", copy)
    before = _backend.source_hash("cpu")
    (copy / "common.h").write_text((copy / "common.h").read_text() + "\n// changed\n")
    assert _backend.source_hash("cpu") != before
    # and the CPU the build is compiled for (-march=native): another CPU sharing the cache builds its own
    before = _backend.source_hash("cpu")
    monkeypatch.setattr(_backend, "_cpu_identity", lambda: "another CPU | flags : sse2")
    assert _backend.source_hash("cpu") != before


def test_cpu_build_targets_this_cpu_when_the_compiler_can(monkeypatch, tmp_path):
    """-march=native when the compiler accepts it, never FMA contraction (the kernels must compute sample positions
    as the torch reference does); a compiler that rejects -march=native still builds, without it."""
    flags = _backend.cpu_cflags.__wrapped__()
    assert "-ffp-contract=off" in flags and "-O3" in flags
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    accepts = subprocess.run([cxx, "-march=native", "-x", "c++", "-fsyntax-only", os.devnull]).returncode == 0
    assert ("-march=native" in flags) == accepts
    picky = tmp_path / "picky-c++"
    picky.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\nexec {cxx} "$@"\n')
    picky.chmod(0o755)
    monkeypatch.setenv("CXX", str(picky))
    assert _backend.cpu_cflags.__wrapped__() == _backend.CPU_CFLAGS


def test_missing_compiler_gives_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(_backend, "_modules", {})
    monkeypatch.setattr(_backend, "_errors", {})
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(cuda_ext.BuildError, match=r"no C\+\+ compiler found: '/nonexistent/g\+\+'"):
        _backend.load("cpu")
    assert not cuda_ext.available("cpu")
    with pytest.warns(RuntimeWarning, match="falling back to the torch reference"):
        assert _backend.resolve("auto", torch.device("cpu")) == "torch"
    cfg = cuda_ext.HashGridConfig(2, 2, 2, 6, 2, 8)
    out = cuda_ext.hash_encode(torch.rand(5, 2), cfg.init_table(), cfg)  # auto: served by the reference
    assert out.shape == (5, 4)
    with pytest.raises(cuda_ext.BuildError, match="no C\\+\\+ compiler"):
        cuda_ext.hash_encode(torch.rand(5, 2), cfg.init_table(), cfg, backend="cpu")


def test_backend_switch(monkeypatch):
    assert cuda_ext.get_backend() in cuda_ext.BACKENDS
    previous = cuda_ext.get_backend()
    calls = []
    real = cuda_ext._torch_impl.hash_encode
    monkeypatch.setattr(cuda_ext._torch_impl, "hash_encode", lambda *a: calls.append(1) or real(*a))
    cfg = cuda_ext.HashGridConfig(3, 2, 2, 6, 2, 8)
    x, table = torch.rand(4, 3), cfg.init_table()
    try:
        cuda_ext.set_backend("torch")
        cuda_ext.hash_encode(x, table, cfg)
        assert calls == [1]
        cuda_ext.hash_encode(x, table, cfg, backend="cpu")  # the argument overrides the default
        assert calls == [1]
        with pytest.raises(ValueError, match="backend must be one of"):
            cuda_ext.set_backend("metal")
    finally:
        cuda_ext.set_backend(previous)
    assert _backend.resolve("auto", torch.device("cpu")) == "cpu"
    assert _backend.resolve("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="cannot run tensors on cpu"):
        _backend.resolve("cuda", torch.device("cpu"))


def _fake_toolkit(root: Path) -> Path:
    """A toolkit whose nvcc answers a dry run the way nvcc does (``#$ _HERE_=<its bin>``), and a wrapper script
    elsewhere that execs it: torch would take the wrapper's parent as CUDA home."""
    toolkit = root / "cuda-99.1"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda_runtime_api.h").write_text("")
    (toolkit / "bin" / "nvcc").write_text(f'#!/bin/sh\necho "#$ _HERE_={toolkit / "bin"}" >&2\n')
    wrapper = root / "wrap" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit / "bin" / "nvcc"} "$@"\n')
    for f in (toolkit / "bin" / "nvcc", wrapper):
        f.chmod(0o755)
    return toolkit


def test_cuda_home_is_found_through_a_wrapper_script(monkeypatch, tmp_path):
    toolkit = _fake_toolkit(tmp_path)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'wrap' / 'bin'}:/usr/bin:/bin")
    assert _backend.find_cuda_home() == toolkit.resolve()
    # through a symlink too
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    monkeypatch.setenv("PATH", f"{tmp_path / 'link'}:/usr/bin:/bin")
    assert _backend.find_cuda_home() == toolkit.resolve()
    # CUDA_HOME wins, and a wrong one is one clear line naming it
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert _backend.find_cuda_home() == toolkit
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "wrap"))
    with pytest.raises(cuda_ext.BuildError, match=r"^CUDA_HOME=.*wrap is not a CUDA toolkit .*set CUDA_HOME to the "
                       r"toolkit's root[^\n]*$"):
        _backend.find_cuda_home()


def test_no_toolkit_names_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_backend, "_is_toolkit", lambda root: False)
    with pytest.raises(cuda_ext.BuildError, match=r"^no CUDA toolkit found .*set CUDA_HOME to the toolkit's root"):
        _backend.find_cuda_home()


def test_falling_back_on_a_cuda_device_is_loud(monkeypatch):
    monkeypatch.setattr(_backend, "_modules", {})
    monkeypatch.setattr(_backend, "_errors", {"cuda": "nvcc failed: cuda_runtime_api.h: No such file"})
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"ON THE GPU, many times slower.*cuda_runtime_api.h: No such file.*"
                      r"backend='torch'"):
        assert _backend.resolve("auto", torch.device("cuda")) == "torch"
    assert cuda_ext.build_error("cuda").startswith("nvcc failed")


def test_fit_refuses_a_gpu_recipe_on_the_reference_unless_asked(monkeypatch, tmp_path):
    from nerf_talk import api
    from nerf_talk.errors import UserError

    monkeypatch.setattr(_backend, "_errors", {"cuda": "nvcc failed: cuda_runtime_api.h: No such file"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    phases = api.fit_phases(None)
    assert [name for name, _ in phases] == ["head", "torso"]
    # before preprocessing: the video is never opened
    with pytest.raises(UserError, match=r"training 'head' would run on the GPU through the slow torch reference.*"
                       r"cuda_runtime_api.h") as e:
        api.fit(tmp_path / "missing.mp4", tmp_path / "me.avatar")
    assert "--set backend=torch" in e.value.hint
    api.require_gpu_kernels(phases, ["backend=torch"])  # asked for: allowed
    api.require_gpu_kernels(phases, ["device=cpu"])  # not on the GPU: nothing to refuse

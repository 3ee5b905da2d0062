#!/usr/bin/env bash
# GPU check: builds the CUDA backend, runs the GPU tests and the GPU benchmarks, in one go, offline.
#
#   scripts/gpu_check.sh              # everything
#   scripts/gpu_check.sh bench_kernels tests_cuda_ext   # only the named steps (see STEPS below)
#
# Needs: python (PYTHON, default python3) with a CUDA build of torch, nvcc (PATH or CUDA_HOME), ninja, a C++
# compiler. pytest is used when installed; otherwise a minimal built-in runner runs the test files. No network.
# Logs, JSON results and figures go to $OUT (when set) or out/gpu_check/; the build cache to $NERF_TALK_CACHE
# (default .cache/nerf_talk in the repository). Exit status: the number of failed steps (0 when all passed).
#
# To add a GPU check of your own: write a function step_<name> that runs it (its output is logged to
# $LOG_DIR/<name>.log, figures go to $OUT_DIR), and add <name> to STEPS.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$REPO/out/gpu_check}
LOG_DIR=$OUT_DIR/logs
export NERF_TALK_CACHE=${NERF_TALK_CACHE:-$REPO/.cache/nerf_talk}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$OUT_DIR" "$LOG_DIR"

STEPS=(environment build_cuda_ext tests_cuda_ext bench_kernels)

log() { printf '[gpu_check] %s\n' "$*"; }

# Runs the test files given as arguments: pytest when importable, else the fallback runner below.
run_tests() {
  if [ -z "${GPU_CHECK_NO_PYTEST:-}" ] && "$PY" -c "import pytest" >/dev/null 2>&1; then
    # --noconftest: the repository's conftest may import what a bare GPU machine lacks; these tests need none
    "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider "$@"
  else
    log "pytest is not installed: using the built-in minimal runner"
    "$PY" - "$@" <<'PYEOF'
"""Minimal stand-in for pytest: fixtures (by name, module/function scope), parametrize, skipif, raises, approx."""
import importlib.util, inspect, itertools, math, sys, traceback, types

class Skip(Exception):
    pass

class _Mark:
    def __init__(self, name, args=(), kwargs=None):
        self.name, self.args, self.kwargs = name, args, kwargs or {}
    def __call__(self, f):
        f.__dict__.setdefault("_marks", []).append(self)
        return f

class _NamedMark(_Mark):
    def __call__(self, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k and not self.args:
            return _Mark.__call__(self, a[0])
        return _Mark(self.name, a, k)

class _MarkFactory:
    def __getattr__(self, name):
        return _NamedMark(name)

class MonkeyPatch:
    _missing = object()
    def __init__(self):
        self._undo = []
    def setattr(self, obj, name, value):
        self._undo.append(lambda old=getattr(obj, name, self._missing): delattr(obj, name)
                          if old is self._missing else setattr(obj, name, old))
        setattr(obj, name, value)
    def setenv(self, name, value):
        import os
        self._undo.append(lambda old=os.environ.get(name): os.environ.pop(name, None) if old is None
                          else os.environ.__setitem__(name, old))
        os.environ[name] = str(value)
    def delenv(self, name, raising=True):
        import os
        if name in os.environ or raising:
            self.setenv(name, os.environ[name])
            del os.environ[name]
    def undo(self):
        for f in reversed(self._undo):
            f()
        self._undo.clear()

class warns:
    def __init__(self, category, match=None):
        self.category, self.match = category, match
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")
        return self
    def __exit__(self, *exc):
        import re
        self._cm.__exit__(*exc)
        if exc[0] is None and not any(issubclass(w.category, self.category) and
                                      (not self.match or re.search(self.match, str(w.message))) for w in self._log):
            raise AssertionError(f"no {self.category.__name__} matching {self.match!r}")
        return False

def fixture(f=None, scope="function", autouse=False):
    def wrap(g):
        g._fixture = (scope, autouse)
        return g
    return wrap(f) if f is not None else wrap

class raises:
    def __init__(self, exc, match=None):
        self.exc, self.match = exc, match
    def __enter__(self):
        return self
    def __exit__(self, et, ev, tb):
        import re
        if et is None:
            raise AssertionError(f"did not raise {self.exc}")
        if not issubclass(et, self.exc):
            return False
        if self.match and not re.search(self.match, str(ev)):
            raise AssertionError(f"{ev!r} does not match {self.match!r}")
        return True

def approx(expected, rel=1e-6, abs=1e-12):
    class A:
        def __eq__(self, other):
            return math.isclose(other, expected, rel_tol=rel, abs_tol=abs)
        def __repr__(self):
            return f"approx({expected})"
    return A()

def skip(reason=""):
    raise Skip(reason)

pytest = types.ModuleType("pytest")
pytest.mark, pytest.fixture, pytest.raises, pytest.approx, pytest.skip = _MarkFactory(), fixture, raises, approx, skip
pytest.warns = warns
sys.modules["pytest"] = pytest

failed = passed = skipped = 0
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(path.replace("/", "_").removesuffix(".py"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module_marks = getattr(mod, "pytestmark", [])
    module_marks = module_marks if isinstance(module_marks, list) else [module_marks]
    fixtures = {n: f for n, f in vars(mod).items() if hasattr(f, "_fixture")}
    cache = {}
    def value(name):
        f = fixtures[name]
        if f._fixture[0] == "module":
            if name not in cache:
                cache[name] = f()
            return cache[name]
        return f()
    for name, fn in list(vars(mod).items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        marks = module_marks + getattr(fn, "_marks", [])
        skips = [m for m in marks if m.name == "skipif" and m.args and m.args[0]]
        params = [m for m in marks if m.name == "parametrize"]
        grids = []
        for m in params:
            names = [s.strip() for s in m.args[0].split(",")]
            grids.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in m.args[1]])
        for combo in itertools.product(*grids) if grids else [()]:
            kwargs = {k: v for d in combo for k, v in d.items()}
            label = f"{path}::{name}" + (f"[{kwargs}]" if kwargs else "")
            if skips:
                skipped += 1
                print(f"SKIP {label}: {skips[0].kwargs.get('reason', '')}")
                continue
            mp = MonkeyPatch()
            try:
                for fname, f in fixtures.items():
                    if f._fixture[1]:
                        value(fname)
                for arg in inspect.signature(fn).parameters:
                    if arg not in kwargs:
                        if arg == "tmp_path":
                            import tempfile, pathlib
                            kwargs[arg] = pathlib.Path(tempfile.mkdtemp())
                        elif arg == "monkeypatch":
                            kwargs[arg] = mp
                        else:
                            kwargs[arg] = value(arg)
                fn(**kwargs)
                passed += 1
                print(f"PASS {label}")
            except Skip as e:
                skipped += 1
                print(f"SKIP {label}: {e}")
            except Exception:
                failed += 1
                print(f"FAIL {label}")
                traceback.print_exc()
            finally:
                mp.undo()
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PYEOF
  fi
}

step_environment() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi
  command -v nvcc >/dev/null 2>&1 && nvcc --version
  "$PY" - <<'PYEOF'
import shutil, sys, torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda)
print("CUDA available:", torch.cuda.is_available(), "| CUDA_HOME:", CUDA_HOME, "| ninja:", is_ninja_available(),
      "| c++:", shutil.which("c++"))
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"device {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
assert torch.cuda.is_available(), "no CUDA device visible to torch"
PYEOF
}

step_build_cuda_ext() {
  "$PY" - <<'PYEOF'
import time
from cuda_ext import _backend
for kind in ("cuda", "cpu"):
    t = time.perf_counter()
    module = _backend.load(kind, verbose=True)
    print(f"{kind} extension: {module.__file__} ({time.perf_counter() - t:.1f} s)")
PYEOF
}

step_tests_cuda_ext() {
  run_tests tests/cuda_ext/test_cuda_ext_gpu.py tests/cuda_ext/test_cuda_ext_build.py \
    tests/cuda_ext/test_cuda_ext_hashgrid.py tests/cuda_ext/test_cuda_ext_march.py \
    tests/cuda_ext/test_cuda_ext_composite.py
}

step_bench_kernels() {
  "$PY" bench/bench_kernels.py --json "$OUT_DIR/bench_kernels.json" --plot "$OUT_DIR/bench_kernels.png"
}

# -------------------------------------------------------------------------------------------------------------
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${STEPS[@]}")
failures=0
summary=()
for name in "${selected[@]}"; do
  if ! declare -F "step_$name" >/dev/null; then
    log "unknown step '$name' (steps: ${STEPS[*]})"
    failures=$((failures + 1))
    summary+=("$name: unknown")
    continue
  fi
  log "step $name -> $LOG_DIR/$name.log"
  start=$(date +%s)
  "step_$name" > "$LOG_DIR/$name.log" 2>&1
  status=$?
  secs=$(( $(date +%s) - start ))
  tail -n 25 "$LOG_DIR/$name.log"
  if [ $status -eq 0 ]; then
    summary+=("$name: ok (${secs}s)")
  else
    failures=$((failures + 1))
    summary+=("$name: FAILED with status $status (${secs}s), see $LOG_DIR/$name.log")
  fi
done
log "summary:"
for line in "${summary[@]}"; do log "  $line"; done
printf '%s\n' "${summary[@]}" > "$OUT_DIR/summary.txt"
exit $failures

#!/usr/bin/env bash
# GPU check: in one call of at most 9 minutes, measures what a first GPU session needs to know and writes it to one
# results file (results.json + results.md, quoted by docs/BENCHMARKS.md):
#   environment      GPU, torch, the CUDA toolkit cuda_ext finds, the Python packages the fit needs
#   build            seconds to build the CUDA and the C++ CPU extensions (cold cache)
#   tests            tests/cuda_ext (GPU tests included): passed / failed / skipped
#   bench_kernels    bench/bench_kernels.py at full size, tiny-cuda-nn when importable, and the kernels of commit
#                    $GPU_CHECK_BASELINE (default: .gpu_baseline/ when present, else commit 0fd0cc9, the kernels
#                    before the coalesced hash grid) back to back with ours
#   fit              obama_450_20s: preprocess, the GPU recipes (head, then torso from it) with their step counts cut
#                    to $GPU_CHECK_STEPS (head,mouth,torso; default 1000,200,400) under a time cap, export; seconds per
#                    step per phase and the full recipes' time extrapolated from them
#   render           frames per second at 512x512, head + torso + background, rendering 4 s of speech
#   eval             `nerf-talk eval` figures of the fitted avatar
#
#   scripts/gpu_check.sh                 # everything (on a GPU machine)
#   scripts/gpu_check.sh --dry-run       # what a CPU can run in a minute or two: no GPU build, no fit; render and eval
#                                        # on $GPU_CHECK_AVATAR (default: the demo avatar) at 64 px. Run it before a
#                                        # GPU session, so that the session's one call can be trusted.
#   scripts/gpu_check.sh fit render      # only the named steps (in the order of STEPS)
#
# Environment: PYTHON (default: .venv/bin/python when present, else python3), OUT (results folder; default
# out/gpu_check), GPU_CHECK_VIDEO (default ../shared/data/video/obama_450_20s.mp4, else shared/data/video/... in the
# repository: copy it there for a device machine, where ../shared does not travel), GPU_CHECK_SPEECH (default
# ../shared/data/speech/en_female_18s.wav, else the dataset's own audio), GPU_CHECK_SECONDS (total budget, default
# 530). Each step has a time cap, and a step is skipped when less than its minimum is left of the budget.
# Logs of every step are appended to $OUT/gpu_check.log; scratch (datasets, training runs, build cache) goes to
# $GPU_CHECK_WORK (default /tmp/gpu_check_work). Exit status: the number of failed steps.
#
# To add a check: write a function step_<name> (its output is logged; it may write key=value lines to
# "$WORK/facts/<name>" for the results), give it a cap and a minimum in CAPS, and add <name> to STEPS.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
OUT_DIR=${OUT:-$REPO/out/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
BUDGET=${GPU_CHECK_SECONDS:-530}
BASELINE=${GPU_CHECK_BASELINE:-$([ -f .gpu_baseline/hashgrid.cu ] && echo .gpu_baseline || echo 0fd0cc9)}
IFS=, read -r HEAD_STEPS MOUTH_STEPS TORSO_STEPS <<< "${GPU_CHECK_STEPS:-1000,200,400}"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR" "$WORK/facts"
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
rm -f "$WORK"/facts/* "$OUT_DIR"/{bench_kernels.json,eval.json,results.json,results.md}  # no stale figures
# a cold build cache in the full run: the build step measures a build (the dry run reuses the user's cache)
[ $DRY -eq 1 ] || export NERF_TALK_CACHE=$WORK/cache

STEPS=(environment build tests bench_kernels fit render eval)
# step: cap and minimum, in seconds (the full run; the sum of what the steps take stays within the budget)
declare -A CAPS=([environment]="30 5" [build]="150 60" [tests]="100 40" [bench_kernels]="150 30" [fit]="240 90"
                 [render]="40 15" [eval]="60 20")
T0=$(date +%s)

log() { printf '[gpu_check] %s\n' "$*" | tee -a "$LOG"; }
fact() { printf '%s=%s\n' "$2" "$3" >> "$WORK/facts/$1"; }  # fact STEP KEY VALUE
cli() { "$PY" -c 'import sys; from nerf_talk.cli import main; sys.exit(main())' "$@"; }
first_file() { for f in "$@"; do [ -f "$f" ] && { echo "$f"; return 0; }; done; return 1; }
VIDEO=${GPU_CHECK_VIDEO:-$(first_file ../shared/data/video/obama_450_20s.mp4 shared/data/video/obama_450_20s.mp4)}
SPEECH=${GPU_CHECK_SPEECH:-$(first_file ../shared/data/speech/en_female_18s.wav shared/data/speech/en_female_18s.wav)}
if [ $DRY -eq 1 ]; then
  AVATAR=${GPU_CHECK_AVATAR:-/work/demo/nerf_talk_demo/sample.avatar}
  DATASET=${GPU_CHECK_DATASET:-$(dirname "$AVATAR")/dataset}
  SIZE=64
else
  AVATAR=$WORK/obama.avatar
  DATASET=$WORK/obama.avatar.work/dataset
  SIZE=512
fi

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
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - "$WORK/facts/environment" "$DRY" <<'PYEOF'
import importlib.util, platform, sys, torch
facts, dry = open(sys.argv[1], "a"), sys.argv[2] == "1"
def fact(k, v):
    print(f"{k}: {v}")
    facts.write(f"{k}={v}\n")
import cuda_ext
fact("python", platform.python_version())
fact("torch", f"{torch.__version__} (CUDA {torch.version.cuda})")
fact("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    fact("cuda_home", cuda_ext.find_cuda_home())
except cuda_ext.BuildError as e:
    fact("cuda_home", f"none: {e}")
fact("tinycudann", "importable" if importlib.util.find_spec("tinycudann") else "not installed")
needed = ["numpy", "scipy", "cv2", "skimage", "PIL", "av", "hama", "kornia", "safetensors", "tqdm", "tensorboard"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
fact("missing_packages", " ".join(missing) or "none")
if not torch.cuda.is_available() and not dry:
    sys.exit("no CUDA device visible to torch")
PYEOF
}

step_build() {
  local kinds="cuda cpu"
  [ $DRY -eq 1 ] && kinds=cpu
  "$PY" - "$WORK/facts/build" $kinds <<'PYEOF'
import sys, time
from cuda_ext import _backend
facts = open(sys.argv[1], "a")
for kind in sys.argv[2:]:
    t = time.perf_counter()
    module = _backend.load(kind, verbose=True)
    dt = time.perf_counter() - t
    print(f"{kind} extension: {module.__file__} ({dt:.1f} s)")
    facts.write(f"{kind}_build_s={dt:.1f}\n")
PYEOF
}

step_tests() {
  local files=(tests/cuda_ext/test_cuda_ext_gpu.py tests/cuda_ext/test_cuda_ext_build.py
               tests/cuda_ext/test_cuda_ext_hashgrid.py tests/cuda_ext/test_cuda_ext_march.py
               tests/cuda_ext/test_cuda_ext_composite.py tests/cuda_ext/test_cuda_ext_emulated.py)
  [ $DRY -eq 1 ] && files=(tests/cuda_ext/test_cuda_ext_gpu.py tests/cuda_ext/test_cuda_ext_emulated.py)
  run_tests "${files[@]}" | tee "$WORK/tests.out"
  local status=${PIPESTATUS[0]}
  fact tests summary "$(grep -E '[0-9]+ (passed|failed|skipped)' "$WORK/tests.out" | tail -n 1)"
  return "$status"
}

step_bench_kernels() {
  local args=(--json "$OUT_DIR/bench_kernels.json" --backends torch,cpu,cuda,tcnn)
  [ $DRY -eq 1 ] && args+=(--quick)
  # the baseline: a commit of this checkout's history, or a directory of its csrc files (a device copy of the tree
  # has no history: extract them beforehand, see docs/cuda_ext.md)
  if [ -d "$BASELINE" ] || git rev-parse --verify -q "$BASELINE^{commit}" >/dev/null 2>&1; then
    args+=(--baseline "$BASELINE")
  else
    echo "baseline $BASELINE: neither a commit here nor a directory: no before/after"
  fi
  "$PY" bench/bench_kernels.py "${args[@]}"
}

# Seconds per step of a finished training run (median of its log) and the full recipe's time at that rate.
train_facts() {  # PHASE RUN_DIR RECIPE
  "$PY" - "$@" "$WORK/facts/fit" <<'PYEOF'
import json, statistics, sys
from nerf_talk.config import load_config
phase, run, recipe, facts = sys.argv[1:]
rates = [json.loads(line)["sec_per_step"] for line in open(f"{run}/train_log.jsonl") if "sec_per_step" in line]
rate = statistics.median(rates[1:] or rates)  # the first interval holds the warm-up
full = load_config(f"recipes/{recipe}.toml").total_steps
with open(facts, "a") as f:
    f.write(f"{phase}_s_per_step={rate:.4f}\n{phase}_full_recipe_steps={full}\n{phase}_full_recipe_min={full * rate / 60:.1f}\n")
PYEOF
}

step_fit() {
  [ -n "$VIDEO" ] || { echo "no video: set GPU_CHECK_VIDEO or copy obama_450_20s.mp4 to shared/data/video/"; return 1; }
  local runs=$WORK/obama.avatar.work t
  rm -rf "$runs" "$AVATAR"
  mkdir -p "$runs"
  export NERF_TALK_BACKEND=cuda  # a fallback to the reference would be an error here, not a slow run
  t=$(date +%s)
  cli preprocess "$VIDEO" -o "$DATASET" || return 1
  fact fit preprocess_s "$(( $(date +%s) - t ))"
  t=$(date +%s)
  cli train "$DATASET" -o "$runs/head" --recipe head --set "stages.0.steps=$HEAD_STEPS" \
    --set "stages.1.steps=$MOUTH_STEPS" --set val_every=0 || return 1
  fact fit head_train_s "$(( $(date +%s) - t ))"
  train_facts head "$runs/head" head
  t=$(date +%s)
  cli train "$DATASET" -o "$runs/torso" --recipe torso --set "stages.0.steps=$TORSO_STEPS" --set val_every=0 \
    --set "init_from=\"$runs/head\"" || return 1
  fact fit torso_train_s "$(( $(date +%s) - t ))"
  train_facts torso "$runs/torso" torso
  t=$(date +%s)
  cli export "$runs/torso" -o "$AVATAR" --dataset "$DATASET" || return 1
  fact fit export_s "$(( $(date +%s) - t ))"
  fact fit steps "$HEAD_STEPS,$MOUTH_STEPS,$TORSO_STEPS"
}

step_render() {
  [ -f "$AVATAR" ] || { echo "no avatar at $AVATAR (the fit did not finish)"; return 1; }
  "$PY" - "$AVATAR" "${SPEECH:-$DATASET/audio.wav}" "$SIZE" "$WORK/render.mp4" "$WORK/facts/render" <<'PYEOF'
import sys
from nerf_talk.api import Avatar, load_speech, render_video
avatar_path, speech, size, out, facts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
avatar = Avatar.load(avatar_path)
audio, rate = load_speech(speech)
seconds = 4.0 if size >= 256 else 1.0  # enough frames for a steady rate, little time on a CPU
audio = audio[: int(seconds * rate)]
res = render_video(avatar, audio, out, sample_rate=rate, size=size)
print(f"{res.frames} frames at {size}x{size} on {avatar.device}: {res.fps_rendered:.2f} frames/s")
with open(facts, "a") as f:
    f.write(f"size={size}\nframes={res.frames}\nfps={res.fps_rendered:.2f}\ndevice={avatar.device}\n")
PYEOF
}

step_eval() {
  [ -f "$AVATAR" ] || { echo "no avatar at $AVATAR (the fit did not finish)"; return 1; }
  local args=("$AVATAR" "$DATASET" -o "$WORK/eval" --no-video)
  # the dry run checks the plumbing: held-out frames at 64 px, without the lip-sync figures of other speech
  if [ $DRY -eq 1 ]; then args+=(--size "$SIZE"); elif [ -n "$SPEECH" ]; then args+=(--audio "$SPEECH"); fi
  rm -rf "$WORK/eval"
  cli eval "${args[@]}" && cp "$WORK/eval/eval.json" "$OUT_DIR/eval.json"
}

write_results() {
  "$PY" - "$WORK/facts" "$OUT_DIR" "$DRY" <<'PYEOF'
"""results.json and results.md from the steps' facts, the kernel benchmark's JSON and eval.json."""
import json, sys, time
from pathlib import Path
facts_dir, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
facts = {p.name: dict(line.split("=", 1) for line in p.read_text().splitlines() if "=" in line)
         for p in sorted(facts_dir.iterdir())}
res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry, "steps": facts.pop("_steps", {}),
       "facts": facts}
bench = out / "bench_kernels.json"
if bench.exists():
    res["bench_kernels"] = json.loads(bench.read_text())
if (out / "eval.json").exists():
    res["eval"] = json.loads((out / "eval.json").read_text())
tmp = out / "results.json.tmp"
tmp.write_text(json.dumps(res, indent=2))
tmp.replace(out / "results.json")
env = facts.get("environment", {})
lines = [f"# gpu_check {res['date']}" + (" (dry run: no GPU build, no fit)" if dry else ""), "",
         f"GPU {env.get('gpu', '?')} | torch {env.get('torch', '?')} | python {env.get('python', '?')} | CUDA home "
         f"{env.get('cuda_home', '?')} | tiny-cuda-nn {env.get('tinycudann', '?')} | missing packages "
         f"{env.get('missing_packages', '?')}", "", "| step | status | seconds |", "|---|---|---:|"]
lines += [f"| {k} | {v.split(';')[0]} | {v.split(';')[1]} |" for k, v in res["steps"].items()]
lines += ["", "| figure | value |", "|---|---|"]
for step in ("build", "tests", "fit", "render"):
    lines += [f"| {step}: {k} | {v} |" for k, v in facts.get(step, {}).items()]
for r in res.get("bench_kernels", {}).get("results", []):
    if "rate" in r:
        who = f"{r['backend']} {r['device']} {r.get('table_dtype', '')}".strip()
        version = f" ({r['version']})" if "version" in r else ""
        lines.append(f"| kernels: {r['kernel']} {who}{version} | {r['rate']:.4g} {r['unit']}, {r['seconds'] * 1e3:.2f}"
                     " ms per batch |")
    elif "speedup" in r:
        lines.append(f"| kernels: {r['backend']} {r['kernel']} {r['part']}, {r['baseline']} -> ours | "
                     f"{r['before_s'] * 1e3:.2f} -> {r['after_s'] * 1e3:.2f} ms ({r['speedup']:.2f}x) |")
def flat(prefix, v):
    if isinstance(v, dict):
        for k, w in v.items():
            yield from flat(f"{prefix}.{k}" if prefix else k, w)
    elif isinstance(v, (int, float, str, bool)):
        yield prefix, v
for k, v in flat("", res.get("eval", {})):
    lines.append(f"| eval: {k} | {v:.4g} |" if isinstance(v, float) else f"| eval: {k} | {v} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
}

# -------------------------------------------------------------------------------------------------------------
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${STEPS[@]}")
failures=0
for name in "${selected[@]}"; do
  if ! declare -F "step_$name" >/dev/null; then
    log "unknown step '$name' (steps: ${STEPS[*]})"
    failures=$((failures + 1))
    continue
  fi
  if [ $DRY -eq 1 ] && [ "$name" = fit ]; then
    log "step fit: skipped (dry run)"
    fact _steps fit "skipped: dry run;0"
    continue
  fi
  read -r cap minimum <<< "${CAPS[$name]}"
  left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt "$minimum" ]; then
    log "step $name: skipped, ${left}s of the budget left (needs ${minimum}s)"
    fact _steps "$name" "skipped: budget;0"
    failures=$((failures + 1))
    continue
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  log "step $name (cap ${cap}s)"
  start=$(date +%s)
  timeout -k 10 "$cap" bash -c "$(declare -f); $(declare -p REPO PY OUT_DIR WORK DRY BASELINE HEAD_STEPS MOUTH_STEPS \
    TORSO_STEPS VIDEO SPEECH AVATAR DATASET SIZE LOG); step_$name" >> "$LOG" 2>&1
  status=$?
  secs=$(( $(date +%s) - start ))
  if [ $status -eq 0 ]; then
    fact _steps "$name" "ok;$secs"
  elif [ $status -eq 124 ] || [ $status -eq 137 ]; then
    fact _steps "$name" "TIMED OUT at ${cap}s;$secs"
    failures=$((failures + 1))
  else
    fact _steps "$name" "FAILED ($status);$secs"
    failures=$((failures + 1))
  fi
  log "step $name: $(tail -n 1 "$WORK/facts/_steps" | cut -d= -f2)"
done
write_results >> "$LOG" 2>&1
log "results: $OUT_DIR/results.md, $OUT_DIR/results.json (log: $LOG)"
cat "$OUT_DIR/results.md"
exit $failures

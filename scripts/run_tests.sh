#!/usr/bin/env bash
# Set up one test environment (scripts/setup_env.sh) and run every test tier in it.
#   run_tests.sh locked|latest [pytest arguments]
# The latest environment is skipped, saying so, where its ComfyUI tree is not on the machine.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_NAME=$1; shift
bash "$ROOT/scripts/setup_env.sh" --env "$ENV_NAME" --browser
status=$?
if [ "$status" = 3 ]; then
  echo "== $ENV_NAME environment NOT TESTED: its ComfyUI tree is missing (see the [setup] line above) =="
  exit 0
fi
[ "$status" = 0 ] || exit "$status"
case "$ENV_NAME" in
  locked) VENV=$ROOT/.venv ;;
  latest) VENV=$ROOT/.venv-latest; export COMFYUI_PATH=$ROOT/.comfyui/latest/ComfyUI ;;
esac
export M2CHAT_TEST_ENV=$ENV_NAME
echo "== $ENV_NAME environment: $("$VENV/bin/python" "$ROOT/scripts/comfyui_env.py" --describe) =="
start=$(date +%s)
"$VENV/bin/python" -m pytest "$ROOT/tests" "$@"
status=$?
echo "== $ENV_NAME environment: tests took $(( $(date +%s) - start )) s =="
exit "$status"

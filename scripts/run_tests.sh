#!/usr/bin/env bash
# Set up test environments (scripts/setup_env.sh) and run every test tier in each.
#   run_tests.sh ENV... [pytest arguments]      ENV: locked, latest
# Environments are set up one after the other (they share apt, pip's cache and the ComfyUI
# unpacking), then tested side by side, each with its share of the cores as torch threads,
# each output line prefixed with its environment. Exit status: the first failing one's.
# An environment whose ComfyUI tree is not on the machine is skipped, saying so.
# A test run still going after M2CHAT_TESTS_HUNG_AFTER_S seconds (default 4200: each
# environment's tests take 20-25 minutes on 2 shared cores) is interrupted, so that pytest
# prints where it hung and the run ends inside CI's 90 minutes; 0 turns the guard off.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENVS=()
while [ $# -gt 0 ] && { [ "$1" = locked ] || [ "$1" = latest ]; }; do ENVS+=("$1"); shift; done
[ ${#ENVS[@]} -gt 0 ] || { echo "usage: $0 locked|latest... [pytest arguments]" >&2; exit 2; }

READY=()
for env_name in "${ENVS[@]}"; do
  bash "$ROOT/scripts/setup_env.sh" --env "$env_name" --browser
  status=$?
  if [ "$status" = 3 ]; then
    echo "== $env_name environment NOT TESTED: its ComfyUI tree is missing (see the [setup] line above) =="
  elif [ "$status" != 0 ]; then
    exit "$status"
  else
    READY+=("$env_name")
  fi
done
[ ${#READY[@]} -gt 0 ] || exit 0

THREADS=$(( $(nproc) / ${#READY[@]} )); [ "$THREADS" -ge 1 ] || THREADS=1

test_env() {  # test_env ENV [pytest arguments]
  local env_name=$1; shift
  local venv=$ROOT/.venv
  if [ "$env_name" = latest ]; then venv=$ROOT/.venv-latest; export COMFYUI_PATH=$ROOT/.comfyui/latest/ComfyUI; fi
  export M2CHAT_TEST_ENV=$env_name OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
  echo "== $env_name environment: $("$venv/bin/python" "$ROOT/scripts/comfyui_env.py" --describe), $THREADS torch threads =="
  local start; start=$(date +%s)
  # A temporary folder and no pytest cache of its own: the environments run at the same time.
  timeout --signal=INT --kill-after=120 "${M2CHAT_TESTS_HUNG_AFTER_S:-4200}" \
    "$venv/bin/python" -m pytest "$ROOT/tests" -p no:cacheprovider \
    --basetemp "${TMPDIR:-/tmp}/m2chat-tests-$env_name" "$@"
  local status=$?
  case $status in  # timeout's own statuses: interrupted, or killed 2 minutes after that
    124) echo "== $env_name environment: INTERRUPTED, a test hung ==" ;;
    137) echo "== $env_name environment: INTERRUPTED and killed: a test hung past the interrupt, or memory ran out ==" ;;
  esac
  echo "== $env_name environment: tests took $(( $(date +%s) - start )) s, exit status $status =="
  return "$status"
}

trap 'trap - INT TERM; kill 0' INT TERM  # a stopped run stops both environments' tests
LOGS=${TMPDIR:-/tmp}/m2chat-test-logs; mkdir -p "$LOGS"
PIDS=()
for env_name in "${READY[@]}"; do
  ( test_env "$env_name" "$@" 2>&1 | sed -u "s/^/[$env_name] /" | tee "$LOGS/$env_name.log"; exit "${PIPESTATUS[0]}" ) &
  PIDS+=($!)
done
result=0
for pid in "${PIDS[@]}"; do
  wait "$pid"
  status=$?
  [ "$result" != 0 ] || result=$status
done
# The environments' outputs interleave: repeat each one's verdict, and what failed, last.
for env_name in "${READY[@]}"; do
  log=$LOGS/$env_name.log
  grep -a -E "^\[$env_name\] (FAILED|ERROR) |^\[$env_name\] == $env_name environment: tests took" "$log"
  if grep -q -a "^\[$env_name\] == $env_name environment: INTERRUPTED" "$log"; then
    # pytest's progress line of the test file it was in when interrupted
    echo "[$env_name] INTERRUPTED in: $(grep -a -E "^\[$env_name\] [^ ]+\.py " "$log" | tail -1)"
  fi
done
exit "$result"

#!/usr/bin/env bash
# The one test command (make test, .ci/run): the worker environment's suite, then the
# trainer environment's (export parity). Fails on pytest exit 5 and on leftovers.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
rc=0
run() {
  local py=$1; shift
  "$py" -m pytest -q "$@"
  local code=$?
  if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests ($*): failing on purpose" >&2
    code=1
  fi
  [ "$code" -ne 0 ] && rc=1
  return 0
}
export PERSONA_TEST_MODEL_REGISTRY="${PERSONA_TEST_MODEL_REGISTRY:-$PWD/var/test-models/encoder}"
run .venv/bin/python tests --ignore=tests/train "$@"
if [ -x .venv-train/bin/python ]; then
  run .venv-train/bin/python tests/train "$@"
else
  echo "trainer environment missing (.venv-train): export parity tests NOT run" >&2
  rc=1
fi
leftover=$(pgrep -af 'kafka\.Kafka|stream_app\.cli worker|persona worker|bench\.trivial_agent' | grep -v pgrep || true)
if [ -n "$leftover" ]; then
  echo "processes left behind by the tests:" >&2
  echo "$leftover" >&2
  rc=1
fi
echo "test run took $(( $(date +%s) - started )) s"
exit "$rc"

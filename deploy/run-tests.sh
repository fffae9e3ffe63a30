#!/usr/bin/env bash
# The one test command (make test, .ci/run). Fails on pytest exit 5 and on leftovers.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
started=$(date +%s)
"$BIN/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  rc=1
fi
leftover=$(pgrep -af 'kafka\.Kafka|stream_app\.cli worker|persona worker' | grep -v pgrep || true)
if [ -n "$leftover" ]; then
  echo "processes left behind by the tests:" >&2
  echo "$leftover" >&2
  rc=1
fi
echo "test run took $(( $(date +%s) - started )) s"
exit "$rc"

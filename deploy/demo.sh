#!/usr/bin/env bash
# The main job on a local default: a local broker, one worker, a dataset replay, and
# what the worker emitted. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PERSONA_BOOTSTRAP_SERVERS="${PERSONA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export PERSONA_TOPIC_PREFIX="${PERSONA_TOPIC_PREFIX:-demo$(date +%s).}"
# One state dir per run: RocksDB remembers changelog offsets of the run that wrote it.
export PERSONA_STATE_DIR="${PERSONA_STATE_DIR:-${PERSONA_DEMO_DIR:-var/demo}/state/${PERSONA_TOPIC_PREFIX%.}}"
export PERSONA_APP_ID="${PERSONA_APP_ID:-persona-${PERSONA_TOPIC_PREFIX%.}}"
DATA=$("$BIN/python" -c "from stream_app.settings import Settings; print(Settings().data_dir)")
# Broker data and the worker log; another dir lets a second demo run beside this one.
DEMO="${PERSONA_DEMO_DIR:-var/demo}"
port="${PERSONA_BOOTSTRAP_SERVERS##*:}"
mkdir -p "$DEMO"

worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  "$BIN/persona" kafka down --data-dir "$DEMO/kafka" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== 1. local Kafka broker"
"$BIN/persona" kafka up --port "$port" --data-dir "$DEMO/kafka"

echo "== 2. worker (log: $DEMO/worker.log)"
"$BIN/persona" worker > "$DEMO/worker.log" 2>&1 &
worker_pid=$!

echo "== 3. replay"
if [ -d "$DATA/movielens-100k" ]; then
  echo "real data: MovieLens-100k from $DATA (catalog, users, then 100,000 ratings as purchases)"
  "$BIN/persona" produce --format movielens "$DATA/movielens-100k"
  expected=102625
else
  echo "no dataset at $DATA: replaying SYNTHETIC events from the built-in generator"
  "$BIN/persona" produce --format synthetic
  expected=5550
fi

echo "== 4. waiting for the worker to apply them"
for _ in $(seq 1 240); do
  n=$(curl -sf "http://127.0.0.1:${PERSONA_WEB_PORT:-6066}/metrics" | awk '/^persona_events_total/ {s+=$2} END {print int(s)}') || n=0
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    echo; echo "the worker stopped; last lines of $DEMO/worker.log:" >&2
    tail -n 20 "$DEMO/worker.log" >&2
    exit 1
  fi
  printf '\r  %s / %s events' "${n:-0}" "$expected"
  [ "${n:-0}" -ge "$expected" ] && break
  sleep 1
done
echo
sleep 2

echo "== 5. what the worker emitted: the final message of a few users (topic ${PERSONA_TOPIC_PREFIX}recommendations)"
# Users picked from the lightest to the heaviest history, the same ones on every run.
users=$("$BIN/persona" inspect recommendations --pick 4 --json | sed -E 's/^\{"user_id":"([^"]+)".*/\1/')
# shellcheck disable=SC2086  # one word per user id
"$BIN/persona" inspect recommendations $users
user=$(echo "$users" | head -n 1)
echo "== 6. one profile: persona inspect profile $user"
"$BIN/persona" inspect profile "$user"
echo "== 7. metrics (persona_*)"
curl -sf "http://127.0.0.1:${PERSONA_WEB_PORT:-6066}/metrics" | grep -E '^persona_(events|dead_letter|profile_updates|recommendations_emitted)_total' || true
echo "== 8. the operator's view: persona status"
"$BIN/persona" status
echo "== 9. the periodic job that bounds a worker's start: persona shared snapshot"
# The shared scoring state (popularity, co-occurrence, ...) every worker rebuilds at start:
# from this snapshot and the deltas after it, not from the whole deltas topic.
"$BIN/persona" shared snapshot
"$BIN/persona" shared show

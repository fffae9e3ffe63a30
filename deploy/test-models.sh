#!/usr/bin/env bash
# Export fp32 and int8 encoders into a test registry unless it already has both.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv-train/bin/python
# The default (and PERSONA_TEST_MODEL_REGISTRY) come from deploy/workers.py, as the tests read them.
registry="${1:-$("$py" -c 'from deploy.workers import TEST_MODEL_REGISTRY; print(TEST_MODEL_REGISTRY)')}"
# The same scan the tests and benchmarks use: encoders.registry.Registry.latest.
have() {
  "$py" -c 'import sys; from encoders.registry import Registry; sys.exit(Registry(sys.argv[1]).latest(sys.argv[2]) is None)' \
    "$registry" "$1"
}
missing=()
for variant in fp32 int8; do
  if have "$variant"; then
    echo "test models: $variant already in $registry"
  else
    missing+=(--variant "$variant")
  fi
done
# One process for all missing variants: the sentiment head's ~8k training texts are
# embedded (fp32 graph) once and the torch parity reference once, not once per variant.
# export/pipeline.py also keeps the head's training vectors in ~/.cache/persona/embeddings,
# keyed by everything they depend on, for the trainer suite's own exports.
if [ "${#missing[@]}" -gt 0 ]; then
  started=$(date +%s)
  HF_HUB_OFFLINE=1 .venv-train/bin/persona model export "${missing[@]}" --registry "$registry"
  echo "test models: exported ${missing[*]} in $(( $(date +%s) - started )) s"
fi

# A trained ranker for the worker suite's hot-swap tests: fitted on a MovieLens-100k prefix
# (no text encoder, a handful of epochs) and published whatever the gate says (--margin -1):
# it is a fixture, not a candidate for production.
# Keyed by the trainer's code, so that a checkout whose network changed trains a fresh one.
ranker_registry="$(dirname "$registry")/ranker-$(cat export/ranker.py stream_app/training_data.py | sha256sum | cut -c1-12)"
if [ -f "$ranker_registry/CURRENT" ]; then
  echo "test models: a ranker already in $ranker_registry"
else
  started=$(date +%s)
  data="${PERSONA_DATA_DIR:-$(cd .. && pwd)/shared/data}"
  PERSONA_RANKER_REGISTRY="$ranker_registry" .venv-train/bin/persona train --format movielens "$data/movielens-100k" \
    --models ranker --limit 12000 --epochs 20 --encoder none --margin -1 --no-announce --no-progress
  echo "test models: ranker trained in $(( $(date +%s) - started )) s"
fi

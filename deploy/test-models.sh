#!/usr/bin/env bash
# Export fp32 and int8 encoders into a test registry unless it already has both.
set -euo pipefail
cd "$(dirname "$0")/.."
registry="${1:-var/test-models/encoder}"
have() { grep -ls "\"variant\": *\"$1\"" "$registry"/*/manifest.json >/dev/null 2>&1; }
for variant in fp32 int8; do
  if have "$variant"; then
    echo "test models: $variant already in $registry"
  else
    HF_HUB_OFFLINE=1 .venv-train/bin/persona model export --variant "$variant" --registry "$registry"
  fi
done

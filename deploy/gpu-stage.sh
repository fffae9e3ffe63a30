#!/usr/bin/env bash
# On the GPU machine: keep one carried part of deploy/gpu-pack.sh's bundle for deploy/gpu-check.sh.
#   bash deploy/gpu-stage.sh .gpu/part-NN       (carry .gpu/part-NN and .gpu/bundle.sha256)
# The parts wait in $GPU_STAGE (default /tmp/persona-gpu), outside the working tree: a warm
# machine keeps it between calls (a fresh one starts bare: stage every part again). Staging a
# part twice is harmless.
set -euo pipefail
stage="${GPU_STAGE:-/tmp/persona-gpu}"
mkdir -p "$stage/parts"
for f in "$@"; do
  cp "$f" "$stage/parts/"
done
if [ -f "$(dirname "$0")/../.gpu/bundle.sha256" ]; then
  cp "$(dirname "$0")/../.gpu/bundle.sha256" "$stage/parts/"
fi
ls -l "$stage/parts"
df -h "$stage" | tail -n 1

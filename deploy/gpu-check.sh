#!/usr/bin/env bash
# Issue 13's GPU checks as one command, for a machine with an NVIDIA GPU (run from the repo root):
#   bash deploy/gpu-check.sh [REGISTRY]        (default: the test encoder registry)
# 1. bench/gpu_encoder.py: sentences/s at batch 1..1024 and 64 tokens, fp32 and fp16 graphs on
#    CUDA, bare onnxruntime (numpy out, device out via IOBinding) against the Persona encode path;
# 2. persona bench reviews --device cuda: Musical Instruments reviews through a real worker with
#    the encoder on CUDA (1024-review micro-batches, a 65,536-token budget per call) against the
#    encoder alone in the same run.
# Needs: .venv with onnxruntime-gpu and CUDA libraries (both benches refuse to report a CPU
# fallback), the fp32 artifact in the registry (its fp16 graph is built in), Java for the local
# broker of step 2, and $PERSONA_DATA_DIR. Writes everything to ${OUT:-var/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
registry="${1:-$(.venv/bin/python -c 'from deploy.workers import TEST_MODEL_REGISTRY; print(TEST_MODEL_REGISTRY)')}"
out="${OUT:-var/gpu}"
mkdir -p "$out"
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || rc=1
.venv/bin/python -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' > "$out/ort.txt" 2>&1 || rc=1
timeout 300 .venv/bin/python bench/gpu_encoder.py --artifact "$registry" > "$out/encoder.txt" 2>&1 || rc=1
timeout 420 .venv/bin/persona bench reviews --device cuda --batch 1024 --max-batch-tokens 65536 --reviews 4000 \
  --registry "$registry" --no-export-missing --json "$out/reviews.json" > "$out/reviews.txt" 2>&1 || rc=1
tail -n 40 "$out"/*.txt "$out/gpu.csv"
exit "$rc"

#!/usr/bin/env bash
# Issue 13's GPU checks as one command, for a machine with an NVIDIA GPU (run from the repo root):
#   bash deploy/gpu-check.sh [REGISTRY]        (default: the test encoder registry)
# On a lent GPU machine, which has no .venv, the parts of deploy/gpu-pack.sh staged first by
# deploy/gpu-stage.sh stand in for it (step 1 only; see those scripts and docs/PERFORMANCE.md).
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
out="${OUT:-var/gpu}"
mkdir -p "$out"
rc=0
stage="${GPU_STAGE:-/tmp/persona-gpu}"
if [ -d "$stage/parts" ]; then
  # A lent GPU machine (../.library/device): no .venv, parts of deploy/gpu-pack.sh's bundle staged
  # by deploy/gpu-stage.sh. Join and check them, install the wheels into a folder of their own
  # (first on PYTHONPATH, so its onnxruntime-gpu wins over the image's CPU onnxruntime) and run
  # with the machine's python3, which holds numpy, tokenizers and CUDA's libraries.
  py="${PYTHON:-python3}"
  want="$(cat "$stage/parts/bundle.sha256" 2>/dev/null)"
  cat "$stage"/parts/part-* > "$stage/bundle.tar"
  got="$(sha256sum "$stage/bundle.tar" | cut -d' ' -f1)"
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    echo "bundle incomplete or corrupt (want ${want:-no bundle.sha256}, got $got); staged: $(ls "$stage/parts" | tr '\n' ' ')" | tee "$out/bundle.txt"
    exit 3
  fi
  rm -rf "$stage/x" "$stage/site" && mkdir -p "$stage/x"
  tar -xf "$stage/bundle.tar" -C "$stage/x" && rm -f "$stage/bundle.tar"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$stage/site" "$stage"/x/wheels/*.whl > "$out/install.txt" 2>&1 || rc=1
  export PYTHONPATH="$stage/site${PYTHONPATH:+:$PYTHONPATH}"
  registry="${1:-$stage/x/registry}"
  # CUDA 13's libraries come with the image's PyTorch as nvidia-* wheels; onnxruntime's
  # preload_dlls looks for them too, this path is the fallback if it does not.
  nv="$("$py" -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for r in nvidia.__path__ for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})))' 2>/dev/null || true)"
  export LD_LIBRARY_PATH="$nv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || rc=1
  "$py" -c 'import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())' > "$out/ort.txt" 2>&1 || rc=1
  timeout 420 "$py" bench/gpu_encoder.py --artifact "$registry" > "$out/encoder.txt" 2>&1 || rc=1
  # Step 2 (reviews through a worker on CUDA) needs Java, a Kafka broker and the worker's
  # packages (faust-streaming, rocksdict, confluent-kafka, ...), none of them on that image.
  echo "not run here: persona bench reviews --device cuda (no broker, Java or worker packages on this machine)" > "$out/reviews.txt"
  tail -n 60 "$out"/*.txt "$out/gpu.csv"
  exit "$rc"
fi
registry="${1:-$(.venv/bin/python -c 'from deploy.workers import TEST_MODEL_REGISTRY; print(TEST_MODEL_REGISTRY)')}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || rc=1
.venv/bin/python -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' > "$out/ort.txt" 2>&1 || rc=1
timeout 300 .venv/bin/python bench/gpu_encoder.py --artifact "$registry" > "$out/encoder.txt" 2>&1 || rc=1
timeout 420 .venv/bin/persona bench reviews --device cuda --batch 1024 --max-batch-tokens 65536 --reviews 4000 \
  --registry "$registry" --no-export-missing --json "$out/reviews.json" > "$out/reviews.txt" 2>&1 || rc=1
tail -n 40 "$out"/*.txt "$out/gpu.csv"
exit "$rc"

#!/usr/bin/env bash
# Packs what the GPU check needs and the lent GPU machines lack, in parts that fit one device call.
#   bash deploy/gpu-pack.sh [REGISTRY]      (here, with PyPI reachable; default: the test encoder registry)
#
# Why: the lent machines (see ../.library/device) have Python 3.12 with numpy, tokenizers and
# CUDA 13's libraries (PyTorch's), but plain onnxruntime (CPU only), no msgspec, no Persona
# model, and no registry to fetch from; a device call carries at most 64 MiB, the working tree
# included. onnxruntime-gpu's wheel alone is about 256 MB and the fp32 artifact (with its fp16
# graph) about 135 MB. So this writes one tar of the wheels and the registry's CURRENT encoder,
# split into parts of PART_MB (56) MiB: .gpu/part-00, part-01, ... and .gpu/bundle.sha256.
# Each device call carries one part and stages it (deploy/gpu-stage.sh); the last one runs
# deploy/gpu-check.sh, which joins the parts, checks the sum, installs the wheels into a folder
# of its own and runs the benchmark with the machine's python3.
#
# PYTHON_VERSION (3.12, the machines' Python) picks the wheels; 3.11 builds a bundle this
# machine's own .venv can run, to check the staging and the install here (on CPU the benchmark
# then refuses, exit 2: it never reports a CPU fallback as GPU figures).
set -euo pipefail
cd "$(dirname "$0")/.."
registry="${1:-$(.venv/bin/python -c 'from deploy.workers import TEST_MODEL_REGISTRY; print(TEST_MODEL_REGISTRY)')}"
pyver="${PYTHON_VERSION:-3.12}"
part_mb="${PART_MB:-56}"
# The onnxruntime-gpu built against CUDA 13 (the machines' PyTorch is cu130): 1.31 is the first
# checked here whose CUDA provider links libcublas.so.13 and libcudart.so.13.
ort="${ORT_GPU:-onnxruntime-gpu==1.31.1}"
msgspec="msgspec==$(.venv/bin/python -c 'import msgspec; print(msgspec.__version__)')"

version="$(cat "$registry/CURRENT")"
artifact="$registry/$version"
[ -f "$artifact/manifest.json" ] || { echo "no artifact at $artifact" >&2; exit 1; }
variant="$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["variant"])' "$artifact/manifest.json")"
if [ "$variant" != fp32 ]; then
  # The int8 artifact is the CPU one; the GPU runs the fp32 export's fp16 graph.
  artifact="$(ls -d "$registry"/*-fp32-* 2>/dev/null | sort | tail -n 1)"
  [ -n "$artifact" ] || { echo "no fp32 artifact in $registry (CURRENT is $variant)" >&2; exit 1; }
  version="$(basename "$artifact")"
fi

rm -rf .gpu && mkdir -p .gpu/stage/wheels .gpu/stage/registry
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/stage/wheels "$ort" "$msgspec"
cp -r "$artifact" .gpu/stage/registry/
printf '%s\n' "$version" > .gpu/stage/registry/CURRENT
tar -cf .gpu/bundle.tar -C .gpu/stage .
(cd .gpu && sha256sum bundle.tar | cut -d' ' -f1 > bundle.sha256)
split -b "${part_mb}m" -d -a 2 .gpu/bundle.tar .gpu/part-
rm -rf .gpu/stage .gpu/bundle.tar
ls -l .gpu
echo "carry one part per device call, in order, each staged with: bash deploy/gpu-stage.sh .gpu/part-NN"
echo "then in the next call: bash deploy/gpu-check.sh  (it joins $(ls .gpu/part-* | wc -l) parts)"

#!/usr/bin/env bash
# Pure-Python wheels of personavec's dependencies that the GPU machine lacks, into .gpu-wheels/ (git-ignored).
#
# The H200 image has torch, transformers, tokenizers, peft, accelerate, safetensors, numpy, jinja2, tqdm,
# matplotlib and requests, and reaches no package registry. personavec's other dependencies are gguf,
# json-repair, vaderSentiment (pure Python: fetched here) and openai (it needs pydantic-core and jiter,
# compiled: not fetched; nothing in the GPU suite imports it). The GPU suite itself needs none of them;
# they let the rest of personavec (the CLI, GGUF loading, the judges) import there. See benchmarks/GPU.md.
#
#     benchmarks/gpu_wheels.sh            # PIP="python3 -m pip" by default
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
rm -rf .gpu-wheels
mkdir -p .gpu-wheels
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --abi none --platform any -d .gpu-wheels \
  gguf==0.19.0 json-repair==0.64.6 vaderSentiment==3.3.2
ls .gpu-wheels
du -sh .gpu-wheels

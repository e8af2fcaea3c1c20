#!/usr/bin/env bash
# Log-prob memory on one GPU, in one call of a machine without network: benchmarks/memory.py
# --device cuda on a random Qwen2.5-0.5B-shaped Llama (vocabulary 151,936, bf16 autocast), B = 8,
# T = 4,096: the update (policy forward + backward) and base scoring, chunked vs full logits vs
# TRL 1.16.0's per-token log-probs, each in a fresh process, 3 seeds. Installs the carried wheels
# (benchmarks/gpu/vs_trl_carry.sh makes them and the tokenizer). Writes the log and JSON to $OUT
# when set (else benchmarks/out). Usage (repo root), extra arguments go to memory.py:
#   bash benchmarks/gpu/run_memory_gpu.sh [--repeats 3] [--seq-lens 4096]
set -uo pipefail
source benchmarks/gpu/use_carry.sh
paths="chunked current trl"
python3 -c "import trl" 2>/dev/null || { echo "trl does not import: measuring gfnlm's paths only"; paths="chunked current"; }
# TRL runs with this interpreter (the GPU machine has no network to build a venv).
part memory_gpu 540 python3 benchmarks/memory.py --device cuda --tokenizer "$carry/tokenizer" --paths $paths \
  --trl-python python3 --results "$out/memory_cuda.json" "$@"

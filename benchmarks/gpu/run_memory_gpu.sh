#!/usr/bin/env bash
# Log-prob memory and speed on one GPU, in one call of a machine without network:
# benchmarks/memory.py --device cuda on a random Qwen2.5-0.5B-shaped Llama (vocabulary 151,936, bf16
# autocast), B = 8, T = 4,096: the update (policy forward + backward; real tokens/s, MFU, peak
# memory) and base scoring, in gfnlm's bucket passes (chunked), its packed pass (packed, and
# packed-gc with gradient checkpointing), full logits (current) and TRL 1.16.0's per-token
# log-probs, each in a fresh process, 3 seeds; VARIABLE=1 adds responses of random lengths in
# [T/4, T] (TRL pads them). Installs the carried wheels (benchmarks/gpu/vs_trl_carry.sh makes them
# and the tokenizer). Writes the log and JSON to $OUT when set (else benchmarks/out). Usage (repo
# root), extra arguments go to memory.py:
#   bash benchmarks/gpu/run_memory_gpu.sh [--repeats 3] [--seq-lens 4096] [--paths chunked packed]
set -uo pipefail
source benchmarks/gpu/use_carry.sh
paths="chunked packed packed-gc current trl"
python3 -c "import trl" 2>/dev/null || { echo "trl does not import: measuring gfnlm's paths only"; paths="chunked packed packed-gc current"; }
# TRL runs with this interpreter (the GPU machine has no network to build a venv).
part memory_gpu 540 python3 benchmarks/memory.py --device cuda --tokenizer "$carry/tokenizer" --paths $paths \
  --trl-python python3 --results "$out/memory_cuda.json" "$@"
if [ "${VARIABLE:-0}" = 1 ]; then
  part memory_gpu_variable 300 python3 benchmarks/memory.py --device cuda --tokenizer "$carry/tokenizer" \
    --paths $paths --trl-python python3 --variable --results "$out/memory_cuda_variable.json" "$@"
fi

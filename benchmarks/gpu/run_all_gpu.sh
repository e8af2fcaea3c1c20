#!/usr/bin/env bash
# Every GPU benchmark in one call of a GPU machine without network (at most 8 min in all): installs
# the carried wheels once (make bench-trl-gpu-carry puts them and the SmolLM2 tokenizer in the
# gitignored benchmarks/gpu/vs_trl_carry/), then, each under its own time limit so that one failure
# does not stop the rest:
#   1. decoding tokens/s at 8x8 and 64x8 rows, <= 128 new tokens: today's dynamic KV cache vs the
#      static cache, eager and captured as a CUDA graph (decoding_gpu.py);
#   2. the trainer (trainer_gpu.py): PowerFlow steps on a random ~0.5B Llama, LoRA and full, with
#      rollout and update tokens/s and update MFU (the packed update pass, `auto` on CUDA);
#   3. gfnlm vs TRL per step (vs_trl.py --device cuda, BUDGET_S seconds of runs);
#   4. log-prob memory at T = 4,096 (memory.py --device cuda): the packed pass and today's bucket
#      pass against TRL;
#   5. the sampler servers (run_samplers_gpu.sh, run_vllm_gpu.sh), which skip with a message where
#      CUDA SGLang / vLLM are not installed.
# Logs, tables and JSON go to $OUT when set (else benchmarks/out). Usage (repo root):
#   bash benchmarks/gpu/run_all_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/use_carry.sh
launch="python3 -m torch.distributed.run --standalone --nproc_per_node 1"
part decoding 60 python3 benchmarks/gpu/decoding_gpu.py --tokenizer "$carry/tokenizer" \
  --batches 8x8 64x8 --max-new-tokens 128 --rounds 2 --out "$out"
part trainer_lora 75 $launch benchmarks/gpu/trainer_gpu.py --tokenizer "$carry/tokenizer" --steps ${TRAINER_STEPS:-5}
part trainer_full 55 $launch benchmarks/gpu/trainer_gpu.py --tokenizer "$carry/tokenizer" --steps ${TRAINER_STEPS:-5} --full
part vs_trl $((${BUDGET_S:-110} + 45)) python3 benchmarks/vs_trl.py --device cuda --tokenizer "$carry/tokenizer" \
  --work-dir /tmp/gfnlm-vs-trl --budget-s "${BUDGET_S:-110}"
cp benchmarks/out/vs_trl_cuda_*.md benchmarks/out/vs_trl_cuda_*.json "$out"/ 2>/dev/null || true
part memory 100 python3 benchmarks/memory.py --device cuda --tokenizer "$carry/tokenizer" \
  --paths chunked packed trl --trl-python python3 --repeats "${MEMORY_REPEATS:-1}" \
  --results "$out/memory_cuda.json"
PYTHON=python3 timeout 10 bash benchmarks/gpu/run_samplers_gpu.sh 2>&1 | tail -2
PYTHON=python3 timeout 10 bash benchmarks/gpu/run_vllm_gpu.sh 2>&1 | tail -2

#!/usr/bin/env bash
# Every GPU benchmark in one call of a GPU machine without network (< 9 min in all): installs the
# carried wheels once (make bench-trl-gpu-carry puts them and the SmolLM2 tokenizer in the
# gitignored benchmarks/gpu/vs_trl_carry/), then, each under its own time limit so that one failure
# does not stop the rest:
#   1. the trainer (trainer_gpu.py): PowerFlow steps on a random ~0.5B Llama, LoRA and full;
#   2. gfnlm vs TRL per step (vs_trl.py --device cuda, BUDGET_S seconds of runs);
#   3. log-prob memory at T = 4,096 (memory.py --device cuda), chunked vs full logits vs TRL;
#   4. the sampler servers (run_samplers_gpu.sh, run_vllm_gpu.sh), which skip with a message where
#      CUDA SGLang / vLLM are not installed.
# Logs, tables and JSON go to $OUT when set (else benchmarks/out). Usage (repo root):
#   bash benchmarks/gpu/run_all_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/use_carry.sh
launch="python3 -m torch.distributed.run --standalone --nproc_per_node 1"
part trainer_lora 90 $launch benchmarks/gpu/trainer_gpu.py --tokenizer "$carry/tokenizer" --steps ${TRAINER_STEPS:-5}
part trainer_full 70 $launch benchmarks/gpu/trainer_gpu.py --tokenizer "$carry/tokenizer" --steps ${TRAINER_STEPS:-5} --full
part vs_trl $((${BUDGET_S:-150} + 50)) python3 benchmarks/vs_trl.py --device cuda --tokenizer "$carry/tokenizer" \
  --work-dir /tmp/gfnlm-vs-trl --budget-s "${BUDGET_S:-150}"
cp benchmarks/out/vs_trl_cuda_*.md benchmarks/out/vs_trl_cuda_*.json "$out"/ 2>/dev/null || true
part memory 130 python3 benchmarks/memory.py --device cuda --tokenizer "$carry/tokenizer" \
  --trl-python python3 --repeats "${MEMORY_REPEATS:-2}" --results "$out/memory_cuda.json"
PYTHON=python3 timeout 20 bash benchmarks/gpu/run_samplers_gpu.sh 2>&1 | tail -2
PYTHON=python3 timeout 20 bash benchmarks/gpu/run_vllm_gpu.sh 2>&1 | tail -2

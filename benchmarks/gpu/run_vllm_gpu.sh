#!/usr/bin/env bash
# The samplers benchmark on a GPU machine: HF sampler vs a CUDA vLLM server (the official `vllm`
# package) on SmolLM2, with LoRA-adapter and full-weight sync. Installs nothing: it needs gfnlm's
# dependencies and `vllm` in the current Python (pip install vllm), and skips with a message when
# vLLM is missing. Results go to $OUT if set.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "SKIP: 'import vllm' fails in $PY; install vllm (CUDA) to run this benchmark"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
timeout 540 "$PY" benchmarks/samplers.py --device cuda --servers vllm --vllm-python "$(command -v "$PY")" \
  --vllm-dtype bfloat16 --vllm-sync both --batches 32x8 --max-new-tokens 256 --rounds 3 --step-rounds 3 \
  --no-docs 2>&1 | tee "$OUT_DIR/samplers_vllm_cuda.log"

#!/usr/bin/env bash
# The samplers benchmark on a GPU machine: HF sampler vs a CUDA SGLang server on SmolLM2.
# Installs nothing: it needs gfnlm's dependencies and `sglang` (pip install sglang==0.5.23) in the
# current Python, and skips with a message when SGLang is missing. Results go to $OUT if set.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if ! "$PY" -c "import sglang" 2>/dev/null; then
  echo "SKIP: 'import sglang' fails in $PY; install sglang==0.5.23 (CUDA) to run this benchmark"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
timeout 540 "$PY" benchmarks/samplers.py --device cuda --server-python "$(command -v "$PY")" \
  --server-dtype bfloat16 --batches 32x8 --max-new-tokens 256 --rounds 3 --step-rounds 3 --no-docs \
  2>&1 | tee "$OUT_DIR/samplers_cuda.log"

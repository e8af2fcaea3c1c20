#!/usr/bin/env bash
# gfnlm vs TRL on one GPU, in one call of a machine without network (< 8 min in all): installs the
# carried wheels (benchmarks/gpu/vs_trl_carry.sh made them), then benchmarks/vs_trl.py --device cuda
# on a random ~0.5B Llama (bf16 autocast). Copies its table, JSON and log to $OUT when set.
# Usage (repo root), extra arguments go to vs_trl.py:
#   bash benchmarks/gpu/run_vs_trl_gpu.sh [--rounds 1] [--steps 5]
# BUDGET_S (default 330) bounds the benchmark runs; the model build, the installs and the imports
# take about a minute more; the whole script is stopped at BUDGET_S + 120 s.
set -uo pipefail
source benchmarks/gpu/use_carry.sh
budget=${BUDGET_S:-330}
python3 -c "import pyarrow, datasets, trl; print('trl', trl.__version__, 'datasets', datasets.__version__,
'pyarrow', pyarrow.__version__)" 2>&1 | tail -1
part vs_trl_gpu $((budget + 120)) python3 benchmarks/vs_trl.py --device cuda --tokenizer "$carry/tokenizer" \
  --work-dir /tmp/gfnlm-vs-trl --budget-s "$budget" "$@"
status=$?
[ "$out" != benchmarks/out ] && cp benchmarks/out/vs_trl_cuda_*.md benchmarks/out/vs_trl_cuda_*.json "$out"/ 2>/dev/null
exit "$status"

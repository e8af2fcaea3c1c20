#!/usr/bin/env bash
# PowerFlow on Qwen2.5-Math-1.5B on one GPU node: a SGLang rollout server on the node's first GPU
# slice and FSDP2 training on all GPUs (configs/powerflow_qwen_math.yaml, the paper's settings).
#
# On a GPU machine with gfnlm and sglang==0.5.23 installed, from the repository root:
#   bash recipes/powerflow_qwen_math.sh MODEL_DIR TRAIN_DATA [EVAL_DATA] [key=value ...]
# MODEL_DIR: a local Qwen2.5-Math-1.5B folder; TRAIN_DATA / EVAL_DATA: local JSONL, parquet, JSON,
# CSV or save_to_disk data (columns problem / answer by default; data.question_field=... to change).
# NPROC (default: every visible GPU) sets the training processes; SGLANG_MEM (default 0.3) the
# share of GPU memory the server takes; PORT (default 30000) its port. Nothing is downloaded.
set -euo pipefail
usage="usage: bash recipes/powerflow_qwen_math.sh MODEL_DIR TRAIN_DATA [EVAL_DATA] [key=value ...]"
fail() { echo "powerflow_qwen_math: error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || fail "MODEL_DIR and TRAIN_DATA are required; $usage"
model=$1; train=$2; shift 2
evaluation=""
if [[ $# -gt 0 && $1 != *=* ]]; then evaluation=$1; shift; fi
[[ -f $model/config.json ]] || fail "MODEL_DIR='$model': not a model folder with config.json (a local Qwen2.5-Math-1.5B)"
[[ -e $train ]] || fail "TRAIN_DATA='$train': no such file or folder"
[[ -z $evaluation || -e $evaluation ]] || fail "EVAL_DATA='$evaluation': no such file or folder"
command -v nvidia-smi >/dev/null || fail "no NVIDIA GPU here (nvidia-smi not found): this recipe needs a GPU node"
python3 -c "import sglang" 2>/dev/null || fail "sglang is not installed in $(command -v python3): pip install sglang==0.5.23"

port=${PORT:-30000}
nproc=${NPROC:-$(nvidia-smi --list-gpus | wc -l)}
# The server shares the GPUs with training: it keeps SGLANG_MEM of the memory for weights and KV cache.
python3 -m gfnlm.cli serve "$model" --port "$port" -- --mem-fraction-static "${SGLANG_MEM:-0.3}" --dtype bfloat16 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || fail "the SGLang server exited before it answered (see its output above)"
  sleep 1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || fail "the SGLang server did not answer /health within 600 s"

python3 -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m gfnlm.cli train \
  configs/powerflow_qwen_math.yaml model.path="$model" data.train="$train" data.eval="$evaluation" \
  sampling.sampler_options.url="http://127.0.0.1:$port" "$@"

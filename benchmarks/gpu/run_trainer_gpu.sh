#!/usr/bin/env bash
# GPU check of the trainer (no network needed): install carried wheels for what the CUDA image lacks,
# then PowerFlow steps on a random ~0.5B Llama, LoRA and full fine-tuning. Usage (repo root):
#   bash benchmarks/gpu/run_trainer_gpu.sh TOKENIZER_DIR [WHEEL_DIR] [extra args for trainer_gpu.py]
set -euo pipefail
tokenizer=$1; wheels=${2:-.whl}; shift 2 || shift $#
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
# NPROC GPUs (default 1) through torchrun, the way multi-GPU runs are launched (docs: How-to).
launch="python3 -m torch.distributed.run --standalone --nproc_per_node ${NPROC:-1}"
$launch benchmarks/gpu/trainer_gpu.py --tokenizer "$tokenizer" "$@"
$launch benchmarks/gpu/trainer_gpu.py --tokenizer "$tokenizer" --full "$@"

# Sourced by the GPU scripts (repo root as the working directory): install the wheels that
# benchmarks/gpu/vs_trl_carry.sh put in benchmarks/gpu/vs_trl_carry/ (make bench-trl-gpu-carry) into
# /tmp/gpu-site, put them and the repository on PYTHONPATH, print what the machine runs, and define
# part(), which runs one benchmark under a time limit with its log in $out ($OUT or benchmarks/out).
carry=benchmarks/gpu/vs_trl_carry
if ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-site "$carry"/wheels/*.whl || echo "installing the carried wheels failed"
  export PYTHONPATH=/tmp/gpu-site:${PYTHONPATH:-}
else
  echo "no wheels in $carry/wheels (run make bench-trl-gpu-carry and carry $carry): TRL may be missing"
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
out=${OUT:-benchmarks/out}
mkdir -p "$out"
part() {  # part NAME LIMIT_S COMMAND...: run one benchmark, timed, its output teed to $out/NAME.log
  local name=$1 limit=$2; shift 2
  echo "=== $name (at most $limit s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 124 ] && echo "=== $name ran past $limit s and was stopped; its outputs hold what finished"
  echo "=== $name: exit $status after $((SECONDS - start)) s"
  return "$status"
}

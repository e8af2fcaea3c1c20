#!/usr/bin/env bash
# Prepare what benchmarks/gpu/run_vs_trl_gpu.sh needs on a GPU machine without network, in the
# gitignored folder benchmarks/gpu/vs_trl_carry/ (carry it to the machine; about 20 MB):
#   wheels/     TRL 1.16.0 and the packages it needs that the CUDA image lacks (datasets, dill,
#               multiprocess, fsspec <= 2026.9.0), gfnlm's own missing ones (omegaconf, beartype),
#               and transformers/peft/regex at gfnlm's lock (constraints.txt) so that both systems
#               run the versions measured on CPU. No torch: the image has it.
#   tokenizer/  the SmolLM2 tokenizer (the random model's vocabulary; gfnlm caches it locally).
# Wheels are for CPython 3.12 on x86-64 Linux (the GPU image's python3). Usage (repo root):
#   bash benchmarks/gpu/vs_trl_carry.sh            (make bench-trl-gpu-carry)
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
dest=benchmarks/gpu/vs_trl_carry
pin() { grep -i "^$1==" constraints.txt | head -1 || { echo "constraints.txt pins no $1" >&2; exit 1; }; }
packages=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
          "$(pin transformers)" "$(pin peft)" "$(pin regex)" "$(pin omegaconf)" "$(pin beartype)")
rm -rf "$dest/wheels" && mkdir -p "$dest/wheels"
echo "downloading ${#packages[@]} wheels for CPython 3.12 x86-64: ${packages[*]}"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest/wheels" "${packages[@]}"
rm -rf "$dest/tokenizer" && mkdir -p "$dest/tokenizer"
smollm2=$("$python" -c "from gfnlm.models.loading import ensure_smollm2; print(ensure_smollm2())")
for f in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja; do
  if [ -f "$smollm2/$f" ]; then cp "$smollm2/$f" "$dest/tokenizer/"; fi
done
du -sh "$dest" && ls "$dest/wheels"

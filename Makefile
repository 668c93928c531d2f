# nnunetv2_petct: `make demo` and `make test` set up .venv on first use, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints/torch-cpu.txt
# Test/CI-friendly nnU-Net settings (2 cores, no GPU).
export nnUNet_def_n_proc ?= 2

export nnUNet_compile ?= false
export OMP_NUM_THREADS ?= 2
export MPLBACKEND ?= Agg

.PHONY: setup test test-fast demo demo-interactive lint bench clean-venv

setup: $(STAMP)

# torch is pinned through a constraints file: without it, nnunetv2 -> timm -> torchvision pulls a
# multi-GB CUDA torch (SPEC §5). Real users install into their own CUDA environment instead.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	$(PY) -c "import torch, nnunetv2_petct; print('torch', torch.__version__, '| nnunetv2_petct', nnunetv2_petct.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Without the `slow` tests (end-to-end runs through the nnU-Net CLIs, tests that need the preprocessed
# tiny dataset); under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(PY) -m nnunetv2_petct.demo

# The interactive (click-guided) phantom study: about 1-1.5 h on 2 CPU cores (see README, docs/benchmarks.md).
demo-interactive: $(STAMP)
	$(PY) -m nnunetv2_petct.benchmarks interactive --budget cpu-1h --out demo_interactive

lint: $(STAMP)
	$(VENV)/bin/ruff check nnunetv2_petct trainers dataset_conversion tests

bench: $(STAMP)
	$(PY) -m nnunetv2_petct.benchmarks all --json

clean-venv:
	rm -rf $(VENV)

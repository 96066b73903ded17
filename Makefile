# The study's entry points. Each target creates .venv on first use (Python 3.11 + make are enough).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
KERNEL := claimsutil
# DVC must not phone home; the machines this runs on may have no internet.
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)
# pip installs without compiling every module (minutes for torch alone); Python then writes the bytecode of
# what is imported on first use, which an inherited PYTHONDONTWRITEBYTECODE would forbid: every notebook kernel
# and worker process would recompile torch from source.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: study test lab bench lint venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name 'Python (claimsutil)'
	touch $@

## make study [PROFILE=demo|tiny|paper]: run every stage of the study through `dvc repro`
study: venv
ifdef PROFILE
	$(BIN)/python -m claimsutil.config use $(PROFILE)
endif
	$(BIN)/dvc repro
	@echo "The study: reports/index.html (findings, tables, figures, every notebook); metrics: .venv/bin/dvc metrics show"

## make test: the unit tests and the tiny-profile pipeline test
test: venv
	$(BIN)/python -m pytest

## make lab: JupyterLab on notebooks/ with the project's kernel
lab: venv
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

## make bench: the benchmarks (figures printed, not asserted); installs the `bench` extra (transformers)
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m claimsutil.bench synth
	$(BIN)/python -m claimsutil.bench features
	$(BIN)/python -m claimsutil.bench pretrain

lint: venv
	$(BIN)/ruff check claimsutil tests notebooks
	$(BIN)/ruff format --check claimsutil tests

clean-venv:
	rm -rf $(VENV)

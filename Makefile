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

.PHONY: study test lab bench lint venv clean-venv report-check aces

# ACES (es-aces, tasks defined by `tasks.<name>.aces` configs) needs polars<2 while the study pins polars 2.x:
# it gets its own environment, called as a command (claimsutil.aces). Every version pinned (pip install --dry-run).
ACES_VENV := .venv-aces
ACES_PINS := es-aces==0.7.3 polars==1.44.2 polars-runtime-32==1.44.2 meds==0.4.1 numpy==2.4.6 pyarrow==26.0.1 \
	hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 bigtree==0.31.2 networkx==3.6.1 \
	pytimeparse==1.1.10 ruamel.yaml==0.19.1 PyYAML==6.0.4 packaging==26.4 flexible_schema==0.1.1 \
	jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 \
	typing_extensions==4.16.0

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name 'Python (claimsutil)'
	touch $@

## make aces: the ACES environment (.venv-aces), rebuilt when the pins above change
aces: $(ACES_VENV)/.installed
	@[ "$$(cat $(ACES_VENV)/.installed)" = "$(ACES_PINS)" ] || { rm -f $(ACES_VENV)/.installed; $(MAKE) --no-print-directory $(ACES_VENV)/.installed; }

$(ACES_VENV)/.installed:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	rm -rf $(ACES_VENV)
	$(PYTHON) -m venv $(ACES_VENV)
	$(ACES_VENV)/bin/python -m pip install --quiet --no-compile $(ACES_PINS)
	echo '$(ACES_PINS)' > $@

## make study [PROFILE=demo|tiny|paper]: run every stage of the study through `dvc repro`
study: venv
ifdef PROFILE
	$(BIN)/python -m claimsutil.config use $(PROFILE)
endif
	@# ACES's environment only when params.yaml (after the profile) defines a task by an ACES config
	@if $(BIN)/python -c 'import sys; from claimsutil.config import load_params; \
		sys.exit(not any(t.aces for t in load_params("params.yaml").tasks))'; then $(MAKE) --no-print-directory aces; fi
	$(BIN)/dvc repro
	@echo "The study: reports/index.html (findings, tables, figures, every notebook); metrics: .venv/bin/dvc metrics show"

## make test: the unit tests and the tiny-profile pipeline test
test: venv aces
	$(BIN)/python -m pytest

## make report-check: open reports/index.html in headless Chromium (every image loaded, no broken link, it prints),
## screenshot in reports/frontpage.png. Needs Debian's chromium and chromium-driver (apt-get install ...).
report-check: venv
	$(BIN)/python -m claimsutil.browser reports/index.html --screenshot reports/frontpage.png

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

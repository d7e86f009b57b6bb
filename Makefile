# wav2small — the two commands a newcomer types are `make demo` and `make test`;
# both create the virtual environment themselves.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
QUICK   ?=

.PHONY: setup demo test test-slow bench lint teacher clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23"
	# -c pins every package (torch/torchvision to the builds on local disk): never a multi-GB download.
	$(BIN)/pip install --quiet -c constraints.txt -e ".[train,synth,scale,dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/wav2small demo $(if $(QUICK),--quick,)

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

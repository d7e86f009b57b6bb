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

# Rebuild the shipped synthetic-world teacher (src/wav2small/assets/teacher-synth) from its recipe:
# 12,000 labelled clips, CNN + GRU on 128 log-mels + a pitch track, CCC loss, 20 epochs (≈ 16 min
# on 2 busy cores). The shipped one scored test CCC A/D/V 0.71 / 0.69 / 0.43 vs gold.
teacher: setup
	$(BIN)/wav2small synth --split train --n 12000 --out data/teacher --seed 0 --jobs 2
	$(BIN)/wav2small synth --split test --n 1000 --out data/teacher --seed 0 --jobs 2
	$(BIN)/wav2small train-teacher --data data/teacher/train.csv --test data/teacher/test.csv \
	    --out src/wav2small/assets/teacher-synth --epochs 20 --batch-size 32 --lr 0.003 \
	    --crop-seconds 4 --gain-db 0 --seed 0 --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache

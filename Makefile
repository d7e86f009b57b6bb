# wav2small — the two commands a newcomer types are `make demo` and `make test`;
# both create the virtual environment themselves.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
QUICK   ?=

.PHONY: setup demo test test-slow bench reliability lint teacher backbone backbone-supervised clean web

setup: $(STAMP) web

# The browser page's runtime: onnxruntime-web (MIT, pinned in web/package-lock.json) from npm; only
# the three files the page loads are copied into the package (src/wav2small/web/vendor, not in git).
WEB_VENDOR := src/wav2small/web/vendor
ORT_DIST   := web/node_modules/onnxruntime-web/dist
web: $(WEB_VENDOR)/.installed

$(WEB_VENDOR)/.installed: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	mkdir -p $(WEB_VENDOR)
	cp $(ORT_DIST)/ort.wasm.min.js $(ORT_DIST)/ort-wasm-simd-threaded.mjs \
	    $(ORT_DIST)/ort-wasm-simd-threaded.wasm $(WEB_VENDOR)/
	cp web/node_modules/onnxruntime-web/package.json $(WEB_VENDOR)/onnxruntime-web.package.json  # version, MIT
	touch $@

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23"
	# -c pins every package (torch/torchvision to the builds on local disk): never a multi-GB download.
	$(BIN)/pip install --quiet -c constraints.txt -e ".[train,synth,scale,dev,audeering,browser]"
	touch $(STAMP)

demo: setup
	$(BIN)/wav2small demo $(if $(QUICK),--quick,)

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Every benchmark (budgets in benchmarks/run_all.py), then docs/RESULTS.md and the README's results
# block; prints each script's wall time (estimated ≈ 55–75 min on 2 idle cores).
bench: setup
	$(BIN)/python benchmarks/run_all.py

# Slow reliability probes (kill -9 + resume, two writers, a full tmpfs, 1-hour files): prints the
# table of probes tried and held and writes docs/RELIABILITY.md (≈ 10 min on 2 cores; QUICK=1: 10-min files).
reliability: setup
	$(BIN)/python benchmarks/bench_reliability.py $(if $(QUICK),--quick,)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Rebuild the shipped synthetic-world teacher (src/wav2small/assets/teacher-synth) from its recipe:
# 12,000 labelled clips, CNN + GRU on 128 log-mels + a pitch track, whole clips, CCC loss, 15 epochs
# (≈ 25 min on 2 busy cores; reproduced the shipped weights bit for bit). Test CCC vs gold
# A/D/V 0.752 / 0.717 / 0.582.
teacher: setup
	$(BIN)/wav2small synth --split train --n 12000 --out data/teacher --seed 0 --jobs 2
	$(BIN)/wav2small synth --split test --n 1000 --out data/teacher --seed 0 --jobs 2
	$(BIN)/wav2small train-teacher --data data/teacher/train.csv --test data/teacher/test.csv \
	    --out runs/teacher-synth --epochs 15 --batch-size 32 --lr 0.003 --crop-seconds 0 \
	    --gain-db 0 --val-fraction 0.05 --seed 0 --threads 1
	cp runs/teacher-synth/config.json runs/teacher-synth/model.safetensors \
	    runs/teacher-synth/test_ccc.json src/wav2small/assets/teacher-synth/
	cp runs/teacher-synth/metrics.csv src/wav2small/assets/teacher-synth/training_metrics.csv

# Rebuild the shipped pretrained backbone (src/wav2small/assets/backbone-synth) from its recipe:
# `wav2small pretrain` (HuBERT-style masked prediction of k-means codes of log-mel and pitch frames)
# on the corpus's unlabelled `pool` split, seed 0. BACKBONE_CLIPS / BACKBONE_STEPS size the run.
# The defaults are the shipped recipe: 4,000 clips, 800 steps (the shipped run was resumed twice
# with a smaller max_steps, so its learning-rate schedule differs slightly; its pretrain.json says
# how). BACKBONE_STEPS=3000 is the longer recipe (estimated 55-75 min on 2 idle cores; not yet
# run). Check it: python benchmarks/bench_backbone.py --backbone runs/backbone-synth/backbone
BACKBONE_CLIPS ?= 4000
BACKBONE_STEPS ?= 800
backbone: setup
	$(BIN)/wav2small synth --split pool --n $(BACKBONE_CLIPS) --out data/backbone --seed 0 --jobs 2
	$(BIN)/wav2small pretrain --audio data/backbone/pool.csv --out runs/backbone-synth \
	    --max-steps $(BACKBONE_STEPS) --seed 0 --threads 2
	mkdir -p src/wav2small/assets/backbone-synth
	cp runs/backbone-synth/backbone/* src/wav2small/assets/backbone-synth/
	cp runs/backbone-synth/metrics.csv src/wav2small/assets/backbone-synth/training_metrics.csv

# The supervised counterpart, for issue 18's comparison (docs/SELFDISTILL.md, "Supervised or
# self-supervised pretraining?"; not shipped): the same architecture and random init (seed 0) as
# backbone-synth, fine-tuned without exits on the gold A/D/V of the same pool clips, its backbone
# written in the Hugging Face layout to runs/backbone-supervised/backbone (--backbone FOLDER).
backbone-supervised: setup
	$(BIN)/wav2small synth --split pool --n $(BACKBONE_CLIPS) --out data/backbone --seed 0 --jobs 2
	$(BIN)/python -c "from wav2small.pretrain import build_backbone, save_backbone; \
	    save_backbone(build_backbone(seed=0), 'runs/backbone-random')"
	$(BIN)/wav2small selfdistill --backbone runs/backbone-random --data data/backbone/pool.csv \
	    --task adv --exits none --out runs/backbone-supervised --max-steps $(BACKBONE_STEPS) \
	    --batch-size 8 --crop-seconds 3 --lr 3e-4 --warmup-steps 0.05 --scheduler cosine \
	    --grad-clip 5 --val-fraction 0.05 --val-every 200 --seed 0 --threads 2
	$(BIN)/wav2small export runs/backbone-supervised/best.safetensors --backbone \
	    --out runs/backbone-supervised/backbone

clean:
	rm -rf $(VENV) runs .pytest_cache web/node_modules $(WEB_VENDOR)

# diffdiff: `make demo` runs the main job offline on the built-in model; `make test` runs the tests.
# Both set everything up first (a .venv with torch installed before the rest, see DESIGN §4).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; installed first, so no other requirement can pull a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist); CI has 2 cores.
TEST_WORKERS ?= 2

.PHONY: install demo demo-model demo-check test test-slow bench bench-real bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The built-in `demo` model (trained here, shipped in diffdiff_cli/models/demo/): a yellow circle on a blue
# background, map white | ramp | black from left to right, prompt naming a green background.
demo: install
	mkdir -p out
	$(BIN)/python training/demo.py inputs out
	$(BIN)/diffdiff edit out/demo-photo.png --map out/demo-map.png --model demo \
		--prompt "a green background" --negative-prompt "a blue background" --guidance 3 --steps 20 --seed 1 \
		--offline -o out/demo.png
	$(BIN)/python training/demo.py strip out

# Retrain the `demo` model from scratch on CPU (60-80 min on one thread; resumes from training/work/).
demo-model: install
	$(BIN)/python training/train.py

# Measure the `demo` model: colour words, left-half edit, gradient map (training/check.py).
demo-check: install
	$(BIN)/python training/check.py --out out/demo-check

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-slow: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m slow

# Speed and memory against plain diffusers (not part of the tests): prints a table, writes bench/results.json.
bench: install
	$(BIN)/python bench/run.py

# Opt-in: a real-size random-weight SD 1.5 (shipped configs) at 512 px, batch 1 and 4, 3 steps (minutes on a CPU).
bench-real: install
	$(BIN)/python bench/run.py --only throughput-real --repeats 1

# On a machine with CUDA: the throughput table for real-size SD 1.5 and SDXL (bench/results-gpu.json, <= 8 min).
# `bench/gpu.sh --quick` is its smoke test on the CPU.
bench-gpu: install
	PYTHON=$(BIN)/python bench/gpu.sh

clean:
	rm -rf $(VENV) out .pytest_cache

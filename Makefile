# diffdiff: `make demo` runs the main job offline on the built-in model; `make test` runs the tests.
# Both set everything up first (a .venv with torch installed before the rest, see DESIGN §4).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; installed first, so no other requirement can pull a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	mkdir -p out
	$(BIN)/diffdiff edit demo/photo.png --map sample_masks/sky-top-down.png \
		--prompt "a stormy sky with dark clouds" --steps 20 --seed 1 --offline -o out/demo.png
	@echo "demo: wrote out/demo.png (input demo/photo.png, map sample_masks/sky-top-down.png)"

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) out .pytest_cache

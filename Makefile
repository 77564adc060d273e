# `make demo`: set up .venv and train the quickstart config on the built-in synthetic domains.
# `make test`: set up .venv, run ruff and the test suite (slow end-to-end tests included) except the tests that
# start their own `ray start` clusters; `make test-cluster` runs those; CI (.ci/run) runs both.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raymh-installed
# -X faulthandler: a crash anywhere in the test process prints its native stack
PYTEST := $(BIN)/python -X faulthandler -m pytest

.PHONY: setup demo test test-cluster test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(BIN)/raymh train --config quickstart
	@echo
	@echo "Browse the run:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1"
	@echo "then open http://127.0.0.1:5000"

lint: setup
	$(BIN)/ruff check raymh tests benchmarks

test: lint
	$(PYTEST) -q --durations=12 -m "not cluster"

test-cluster: setup
	$(PYTEST) -q --durations=12 -m cluster

test-fast: lint
	$(PYTEST) -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_dcloss.py
	$(BIN)/python benchmarks/bench_model.py --size 256

clean:
	rm -rf $(VENV) build *.egg-info

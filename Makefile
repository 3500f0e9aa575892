# The README's commands. `make demo` and `make test` set everything up from nothing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-heavy test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=24" >/dev/null
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

demo: setup
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/argen generate eval.features=toy

test: setup
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -m "not heavy"

# the toy samplers' quality guards and training entry points (minutes of CPU each); CI runs them after `make test`
test-heavy: setup
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -m heavy

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not heavy"

bench: setup
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/argen bench

clean:
	rm -rf $(VENV) build *.egg-info

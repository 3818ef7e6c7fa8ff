# topology-runner: the two set-up commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run lint validate bench torture clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint,bench]'
	touch $(STAMP)

install: $(STAMP)

# the suite runs on TEST_WORKERS processes (pytest-xdist); the few tests marked
# `serial` (they restart the shared RabbitMQ) run after, alone
TEST_WORKERS ?= 2

test: $(STAMP)
	@./tools/ensure-promtool
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not torture and not serial"
	$(BIN)/python -m pytest -q -m "serial and not torture"

torture: $(STAMP)
	$(BIN)/python -m pytest -q -m torture

run: $(STAMP)
	$(BIN)/runner run topologies/ --data-dir ./data --listen 127.0.0.1:8080

lint: $(STAMP)
	$(BIN)/ruff check runner tests
	$(BIN)/mypy --strict runner
	$(BIN)/lint-imports

validate: $(STAMP)
	$(BIN)/runner validate topologies/

bench: $(STAMP)
	$(BIN)/runner bench

clean:
	rm -rf $(VENV) data .pytest_cache

# The two commands of the quick start: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint typecheck unit clean

setup:
	@deploy/bootstrap.sh

demo: setup
	$(BIN)/kakehashi demo

test: setup lint typecheck unit

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-quick test venv browser-deps lint

venv:
	@scripts/setup-venv

demo: venv
	$(BIN)/iqvae demo

demo-quick: venv
	$(BIN)/iqvae demo --quick

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/python -m ruff check src tests

# Parley: `make run` starts a demo server, `make test` installs what the tests need and runs them.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: run test install lint clean system-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/parley demo data

system-deps:
	bash .ci/system-deps.sh

lint: install
	$(BIN)/ruff check src tests bench

test: install system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) data build src/*.egg-info

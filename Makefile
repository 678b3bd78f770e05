VENV ?= .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: demo test test-fast clean

$(VENV)/.ready: pyproject.toml scripts/setup-venv.sh
	sh scripts/setup-venv.sh $(VENV)

demo: $(VENV)/.ready
	$(BIN)/ftprep score data/sample.jsonl -o $(DEMO)/scored
	$(BIN)/ftprep mask $(DEMO)/scored -o $(DEMO)/train
	$(BIN)/ftprep stats $(DEMO)/train
	$(BIN)/ftprep inspect $(DEMO)/train --row 0

test: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The unit tests that load no model (about 30 s): the tests marked slow run the model end to end,
# and in this tier a test that loads a model fails (tests/conftest.py). One process: two workers
# would each pay the imports, which are most of the time here.
test-fast: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache

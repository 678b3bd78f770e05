VENV ?= .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: demo test test-fast docs docs-serve docs-cli clean

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

# The docs site (docs/, mkdocs.yml) into site/, strict: a broken link or a page outside the nav fails.
# `python -m mkdocs`, not the mkdocs script: see tests/test_docs.py (build_site).
docs: $(VENV)/.ready
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

docs-serve: $(VENV)/.ready
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

# docs/reference/cli.md from the commands' Settings; `make test` fails while it is stale.
docs-cli: $(VENV)/.ready
	$(BIN)/python scripts/cli-reference.py

clean:
	rm -rf out site .pytest_cache

VENV ?= .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: demo test clean

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

clean:
	rm -rf out .pytest_cache

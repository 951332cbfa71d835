# kzoo: `make demo` and `make test` are the two commands a new user needs (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kzoo-installed
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 3
DEMO_CONFIG ?= recipes/configs/gpt/nano_pydocs_pretrain.yaml

.PHONY: install demo test lint bench clean docs figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Set up, pre-train the default tiny recipe on the corpus that ships with Python, print text.
demo: install
	$(BIN)/python recipes/pretrain.py --config $(DEMO_CONFIG)

# Set up, lint, run the whole test suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	cd benchmarks && for script in [a-z]*.py; do \
		echo "== $$script"; ../$(BIN)/python $$script || exit 1; done

# Build the documentation site into site/; any warning (broken link, missing page) fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Retrain the docs' small models and redraw docs/assets/figures (minutes on 2 CPU cores).
figures: install
	$(BIN)/python scripts/make_figures.py $(FIGURES_ARGS)

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache

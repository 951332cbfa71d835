# kzoo: `make demo` and `make test` are the two commands a new user needs (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kzoo-installed
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 3
DEMO_CONFIG ?= recipes/configs/gpt/nano_pydocs_pretrain.yaml
# The lm-eval model's parity with lm-eval's hf model runs on each backend too (issue 25).
EVAL_TESTS := tests/eval/test_model.py tests/eval/test_parity.py
TORCH_TESTS ?= tests/layers tests/losses tests/samplers tests/models tests/generation tests/viz \
	$(EVAL_TESTS)
JAX_TESTS ?= tests/layers tests/losses tests/samplers tests/generation $(EVAL_TESTS)
# pytest-xdist workers (0: one process). A test file runs whole in one worker (its module
# fixtures once); tests/conftest.py gives each worker one PyTorch thread, sends the slowest files
# first (SLOW_FILES), and for the session sets XLA's optimisation level 0 and one JAX compile cache
# for the JAX child processes (KZOO_TEST_FAST_COMPILE=0 turns both off).
WORKERS ?= 2
XDIST   := -n $(WORKERS) --dist loadfile

.PHONY: install demo test test-fast lint bench clean docs figures wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Set up, pre-train the default tiny recipe on the corpus that ships with Python, print text.
demo: install
	$(BIN)/python recipes/pretrain.py --config $(DEMO_CONFIG)

# Set up, lint, run the whole test suite (TensorFlow, with JAX and PyTorch child processes in
# tests/backends, tests/alignment, tests/training), then the backend-neutral unit tests again on
# PyTorch and JAX themselves.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(XDIST) --durations=25 $(PYTEST_ARGS)
	KERAS_BACKEND=torch $(BIN)/python -m pytest $(XDIST) -q -p no:cacheprovider $(TORCH_TESTS)
	KERAS_BACKEND=jax $(BIN)/python -m pytest $(XDIST) -q -p no:cacheprovider $(JAX_TESTS)

# The edit-test loop (under 3 minutes on 2 cores): the library's unit tests on TensorFlow --
# layers, losses, samplers, tokenizers, models, generation, pictures and data -- without the
# recipes, the command line, the docs and the other backends' child processes that `test` adds.
FAST_TESTS ?= tests/layers tests/losses tests/samplers tests/tokenizers tests/models \
	tests/generation tests/viz tests/data
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(XDIST) -q -p no:cacheprovider $(FAST_TESTS) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	cd benchmarks && for script in [a-z]*.py; do \
		[ "$$script" = accelerator.py ] && continue; \
		echo "== $$script"; ../$(BIN)/python $$script || exit 1; done

# Build the documentation site into site/; any warning (broken link, missing page) fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Retrain the docs' small models and redraw docs/assets/figures (minutes on 2 CPU cores).
figures: install
	$(BIN)/python scripts/make_figures.py $(FIGURES_ARGS)

# The pure-Python wheels benchmarks/accelerator.sh installs on a machine without network.
wheels: install
	rm -rf dist/wheels && mkdir -p dist/wheels
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist/wheels . \
		keras==$$($(BIN)/python -c "import keras; print(keras.__version__)") \
		keras-hub==$$($(BIN)/python -c "import keras_hub; print(keras_hub.__version__)")

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache

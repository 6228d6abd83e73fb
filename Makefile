# `make demo`: train, evaluate and export a small HRViT segmenter on the embedded shapes dataset.
# `make test`: the test suite (all of it on TensorFlow, the backend-sensitive tests on JAX and torch).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Eager TensorFlow and XLA compilation each keep one core busy: two workers halve the time on a
# 2-core machine. `loadscope` keeps each module's shared fixtures in one worker.
PYTEST_ARGS ?= -q -n 2 --dist loadscope

.PHONY: demo test test-slow lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=torch $(BIN)/python examples/train_shapes.py --output-dir demo_output

test: $(STAMP)
	$(BIN)/ruff check .
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"
	KERAS_BACKEND=jax $(BIN)/python -m pytest $(PYTEST_ARGS) -m "backend and not slow"
	KERAS_BACKEND=torch $(BIN)/python -m pytest $(PYTEST_ARGS) -m "backend and not slow"

test-slow: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest $(PYTEST_ARGS) -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache

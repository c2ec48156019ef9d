PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test matrix lint format bench clean

# Other stacks the suite runs on (constraints/<name>.txt): the minimum pins and Kaggle's image.
MATRIX := minimum kaggle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.examples: $(BIN)/python pyproject.toml
	$(PIP) install -e ".[examples]"
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(PIP) install -e ".[test,examples,jax]"
	touch $@

demo: $(VENV)/.examples
	$(BIN)/python examples/vae_mnist.py

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q tests

.venv-%/.test: constraints/%.txt pyproject.toml
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip --disable-pip-version-check -q install -c $< -e ".[test]"
	touch $@

# The full suite on every stack of MATRIX, each in its own venv (installed one after another).
# The suites run side by side (their tests are mostly single-threaded), each into
# .matrix-<stack>.log, printed at the end.
matrix: $(foreach stack,$(MATRIX),.venv-$(stack)/.test)
	@pids=""; for stack in $(MATRIX); do \
		( .venv-$$stack/bin/python -c 'import keras, tensorflow as tf, tensorflow_probability as tfp; print("TensorFlow", tf.__version__, "Keras", keras.__version__, "TFP", tfp.__version__)' \
		  && .venv-$$stack/bin/python -m pytest -q tests ) > .matrix-$$stack.log 2>&1 & \
		pids="$$pids $$!"; \
	done; \
	status=0; for pid in $$pids; do wait $$pid || status=1; done; \
	for stack in $(MATRIX); do echo "== $$stack"; cat .matrix-$$stack.log; done; \
	exit $$status

bench: $(VENV)/.examples
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .venv-* runs build *.egg-info

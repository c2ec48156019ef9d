SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test matrix lint format bench clean

comma := ,

# The Keras backends `make test` runs the suite on, side by side (tests are mostly
# single-threaded), each into .test-<backend>.log, printed at the end.
BACKENDS := tensorflow jax
# Other stacks (constraints/<name>.txt), each with the backend its suite runs on: the minimum
# pins and Kaggle's image on TensorFlow (the suite but its slowest tests), the oldest JAX
# keras_vi claims on JAX (the tests of MINIMUM_JAX_TESTS: the whole JAX suite would not fit
# CI's time).
MATRIX := minimum:tensorflow kaggle:tensorflow minimum-jax:jax
MINIMUM_JAX_TESTS := tests/test_jax_backend.py tests/test_architecture.py \
	tests/test_closed_forms.py tests/test_estimator_contract.py

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

# Runs the suites "<log name> <venv> <backend> [test paths]" given on standard input side by
# side, two at a time (the CI machine has two cores), and prints each log at the end.
define SUITES
	status=0; queue=""; names=""; \
	while read name venv backend paths; do \
		( $$venv/bin/python -m pip list --format=freeze 2>/dev/null \
		    | grep -iE "^(tensorflow|keras|tensorflow-probability|jax)==" | tr '\n' ' '; echo; \
		  KERAS_BACKEND=$$backend $$venv/bin/python -m pytest -q $${paths:-tests} ) \
		  > .suite-$$name.log 2>&1 & \
		queue="$$queue $$!"; names="$$names $$name"; \
		set -- $$queue; \
		if [ $$# -ge 2 ]; then wait $$1 || status=1; shift; queue="$$*"; fi; \
	done; \
	for pid in $$queue; do wait $$pid || status=1; done; \
	for name in $$names; do echo "== $$name"; cat .suite-$$name.log; done; \
	exit $$status
endef

test: lint
	@printf '%s\n' $(foreach backend,$(BACKENDS),"$(backend) $(VENV) $(backend)") | { $(SUITES); }

.venv-%/.test: constraints/%.txt pyproject.toml
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip --disable-pip-version-check -q install -c $< \
		-e ".[test$(if $(findstring jax,$*),$(comma)jax)]"
	touch $@

# The suite on every stack of MATRIX, each in its own venv (installed one after another),
# without the tests marked slow (tests/conftest.py: SLOW_TESTS), which `make test` runs.
matrix: $(foreach entry,$(MATRIX),.venv-$(firstword $(subst :, ,$(entry)))/.test)
	@export KERAS_VI_SKIP_SLOW=1; printf '%s\n' $(foreach entry,$(MATRIX),"$(subst :,-,$(entry)) .venv-$(firstword $(subst :, ,$(entry))) $(lastword $(subst :, ,$(entry))) $(if $(findstring jax,$(firstword $(subst :, ,$(entry)))),$(MINIMUM_JAX_TESTS))") | { $(SUITES); }

bench: $(VENV)/.examples
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .venv-* runs build *.egg-info .suite-*.log

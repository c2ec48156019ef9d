SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# --no-compile: Python compiles what it imports on first use; byte-compiling every file of
# TensorFlow and JAX at install time took a large part of each install.
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow
# Python caches what it compiles in __pycache__ (the venvs' included: each is made fresh by
# a clean clone). With PYTHONDONTWRITEBYTECODE set, each of the suites' processes (the five
# suites, the TensorBoard server, the multi-worker and cross-backend subprocesses) compiled
# TensorFlow's, JAX's and Keras's sources again: `import keras_vi, jax` took 16 s instead of 6.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test matrix lint format bench clean

comma := ,

# The Keras backends `make test` runs the suite on, side by side (tests are mostly
# single-threaded), each into .suite-<backend>.log, printed at the end with the ten slowest
# tests. (Two pytest-xdist workers per suite were tried: four processes on two cores gave no
# clear gain in the whole CI run.)
BACKENDS := tensorflow jax
# Other stacks (constraints/<name>.txt), each with the backend its suite runs on: the minimum
# pins and Kaggle's image on TensorFlow (the suite but its slowest tests), the oldest JAX
# keras_vi claims on JAX (the tests of MINIMUM_JAX_TESTS: the whole JAX suite would not fit
# CI's time).
MATRIX := minimum:tensorflow kaggle:tensorflow minimum-jax:jax
MINIMUM_JAX_TESTS := tests/test_jax_backend.py tests/test_architecture.py \
	tests/test_closed_forms.py tests/test_estimator_contract.py
# Left out on the older TensorFlow stacks as well (with the slow tests): the statistical checks
# of the estimators' maths (each draws up to 100,000 estimates through keras.ops and TFP's
# distributions, which the rest of the suite calls on every stack; `make test` runs them on both
# backends). The estimators' model-level tests (fit, XLA, saving) stay.
MATRIX_LEAVES_OUT := test_estimators_gradients test_vimco_memory test_relax test_disarm \
	test_renyi test_enumeration test_tiling

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.examples: $(BIN)/python pyproject.toml
	$(PIP) install --no-compile -e ".[examples]"
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(PIP) install --no-compile -e ".[test,examples,jax]"
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
# side, two at a time (the next starts when either ends; the CI machine has two cores), and
# prints each log at the end. A suite runs while it holds one of two slots (lock files,
# `flock`) shared by every `make` in this tree, so that `make test` and `make matrix` run side
# by side (as CI runs them) keep two suites on the two cores: four at once, the JAX suite
# took 27 minutes instead of 20.
define SUITES
	status=0; running=0; names=""; \
	while read name venv backend paths; do \
		( $$venv/bin/python -m pip list --format=freeze 2>/dev/null \
		    | grep -iE "^(tensorflow|keras|tensorflow-probability|jax)==" | tr '\n' ' '; echo; \
		  set -- env KERAS_BACKEND=$$backend $$venv/bin/python -m pytest -q --durations=10 \
		    $${paths:-tests}; \
		  if ! command -v flock > /dev/null; then "$$@"; exit; fi; \
		  while :; do \
		    for slot in 1 2; do \
		      flock -n -o -E 75 .suite-slot-$$slot "$$@"; rc=$$?; \
		      if [ $$rc -ne 75 ]; then exit $$rc; fi; \
		    done; \
		    sleep 5; \
		  done ) \
		  > .suite-$$name.log 2>&1 & \
		running=$$((running + 1)); names="$$names $$name"; \
		if [ $$running -ge 2 ]; then wait -n || status=1; running=$$((running - 1)); fi; \
	done; \
	while [ $$running -gt 0 ]; do wait -n || status=1; running=$$((running - 1)); done; \
	for name in $$names; do echo "== $$name"; cat .suite-$$name.log; done; \
	exit $$status
endef

test: lint
	@printf '%s\n' $(foreach backend,$(BACKENDS),"$(backend) $(VENV) $(backend)") | { $(SUITES); }

.venv-%/.test: constraints/%.txt pyproject.toml
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip --disable-pip-version-check -q install --no-compile -c $< \
		-e ".[test$(if $(findstring jax,$*),$(comma)jax)]"
	touch $@

MATRIX_VENVS := $(foreach entry,$(MATRIX),.venv-$(firstword $(subst :, ,$(entry)))/.test)
MATRIX_TF_TESTS := tests $(foreach name,$(MATRIX_LEAVES_OUT),--ignore=tests/$(name).py)

# The suite on every stack of MATRIX, each in its own venv (the venvs installed side by side),
# without the tests marked slow (tests/conftest.py: SLOW_TESTS) and MATRIX_LEAVES_OUT, which
# `make test` runs. XLA compiles at its default optimization level here (KERAS_VI_XLA_DEFAULTS;
# `make test`'s JAX suite uses a lower one, see tests/conftest.py).
matrix:
	@$(MAKE) --no-print-directory -j3 $(MATRIX_VENVS)
	@export KERAS_VI_SKIP_SLOW=1 KERAS_VI_XLA_DEFAULTS=1; printf '%s\n' $(foreach entry,$(MATRIX),"$(subst :,-,$(entry)) .venv-$(firstword $(subst :, ,$(entry))) $(lastword $(subst :, ,$(entry))) $(if $(findstring jax,$(firstword $(subst :, ,$(entry)))),$(MINIMUM_JAX_TESTS),$(MATRIX_TF_TESTS))") | { $(SUITES); }

bench: $(VENV)/.examples
	for f in benchmarks/[!_]*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .venv-* runs build *.egg-info .suite-*.log .suite-slot-* .ci-matrix.log

"""Every `>>>` example in keras_vi's docstrings runs, and shows the output it really gives.

The examples share a small namespace: `keras`, `tfd` (`kvi.distributions`: TFP's distributions
for the active backend), `np`, `kvi`, on TensorFlow also `tf` and `tfp`, and the fixtures below,
built fresh for each docstring that names them:

* `x`, `h`, `logits`: a Keras input of 784 pixels, its hidden features (64 units) and the
  logits of a tiny VAE graph `x -> h -> z -> logits` (latent "z" of 8 units).
* `x_train`, `x_test`: 64 and 32 binary vectors of 784 pixels.
* `vae`: a compiled tiny Bernoulli VAE over 784 pixels with a latent "z" of 8 units.
* `model`, `x_grid`: a compiled Bayesian regression network (1 input, loc and raw scale out)
  and 50 inputs in [-3, 3].

Each docstring runs in a fresh temporary working directory, so examples may write `"logs"`.

A docstring whose examples call TensorFlow itself (`tf.GradientTape`, `tf.io.gfile`, ...) is a
TensorFlow example by nature and runs on TensorFlow only; every other one runs on TensorFlow and
on JAX (`_backends`; `test_tensorflow_only_examples_are_those_that_call_tensorflow`).
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re

import keras
import numpy as np
import pytest

import keras_vi as kvi
import keras_vi.callbacks

pytestmark = pytest.mark.backends("tensorflow", "jax")  # some examples: TensorFlow only, below

BACKEND = keras.backend.backend()
tfd = kvi.distributions

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_PACKAGES = (kvi, keras_vi.callbacks)


def _is_other_backend(module_name: str) -> bool:
    """Whether a module belongs to another backend's package, whose framework may be absent."""
    parts = module_name.split(".")
    return parts[:2] == ["keras_vi", "backend"] and len(parts) > 2 and parts[2] != BACKEND


def _modules():
    modules = []
    for package in _PACKAGES:
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not _is_other_backend(info.name):
                modules.append(importlib.import_module(info.name))
    return modules


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for module in _modules():
        for test in finder.find(module):
            if test.examples:
                tests.setdefault(test.name, test)
    return [tests[name] for name in sorted(tests)]


DOCTESTS = _doctests()

# TensorFlow's own API in an example: `tf.` anywhere, or an import of TensorFlow.
_CALLS_TENSORFLOW = re.compile(r"\btf\.|\bimport tensorflow\b|\bfrom tensorflow\b")


def _source(test: doctest.DocTest) -> str:
    return "\n".join(example.source for example in test.examples)


def _backends(test: doctest.DocTest) -> tuple[str, ...]:
    """TensorFlow only for a docstring whose examples call TensorFlow; else both backends."""
    if _CALLS_TENSORFLOW.search(_source(test)):
        return ("tensorflow",)
    return ("tensorflow", "jax")


# ---------------------------------------------------------------------------- fixtures
# XLA would only add compile time on TensorFlow (graph steps); on JAX steps without
# `jax.jit` run op by op, which is far slower.
_JIT = BACKEND == "jax"


def _graph():
    x = keras.Input((784,))
    h = keras.layers.Dense(64, activation="relu")(x)
    z = kvi.layers.NormalLatent(8, name="z")(keras.layers.Dense(16)(h))
    logits = keras.layers.Dense(784)(keras.layers.Dense(64, activation="relu")(z))
    return {"x": x, "h": h, "logits": logits}


def _data():
    rng = np.random.default_rng(0)
    return {
        "x_train": (rng.random((64, 784)) < 0.2).astype("float32"),
        "x_test": (rng.random((32, 784)) < 0.2).astype("float32"),
    }


def _vae():
    graph = _graph()
    vae = kvi.VariationalModel(graph["x"], graph["logits"], likelihood="bernoulli")
    vae.compile(optimizer="adam", jit_compile=_JIT)
    return {"vae": vae}


def _regression():
    inputs = keras.Input((1,))
    h = kvi.layers.DenseFlipout(16, activation="relu")(inputs)
    model = kvi.VariationalModel(
        inputs, kvi.layers.DenseFlipout(2)(h), likelihood="normal", num_examples=50
    )
    model.compile(optimizer="adam", jit_compile=_JIT)
    return {"model": model, "x_grid": np.linspace(-3.0, 3.0, 50, dtype="float32")[:, None]}


_FIXTURES = {
    "x": _graph,
    "h": _graph,
    "logits": _graph,
    "x_train": _data,
    "x_test": _data,
    "vae": _vae,
    "model": _regression,
    "x_grid": _regression,
}


def _namespace(test: doctest.DocTest) -> dict:
    namespace = dict(test.globs)
    namespace.update(keras=keras, tfd=tfd, np=np, kvi=kvi)
    if BACKEND == "tensorflow":  # on JAX an example that needs `tf` fails with a NameError
        import tensorflow as tf
        import tensorflow_probability as tfp

        namespace.update(tf=tf, tfp=tfp)
    source = _source(test)
    factories = []
    for name, factory in _FIXTURES.items():
        if re.search(rf"\b{name}\b", source) and factory not in factories:
            factories.append(factory)
    for factory in factories:
        namespace.update(factory())
    return namespace


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "test",
    [pytest.param(test, marks=pytest.mark.backends(*_backends(test))) for test in DOCTESTS],
    ids=lambda test: test.name,
)
def test_docstring_example(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runnable = doctest.DocTest(
        test.examples, _namespace(test), test.name, test.filename, test.lineno, test.docstring
    )
    report = []
    runner = doctest.DocTestRunner(optionflags=_FLAGS, verbose=False)
    result = runner.run(runnable, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
    assert result.attempted == len(test.examples)


def test_every_example_is_collected_and_none_is_skipped():
    collected: dict[str, int] = {}
    for test in DOCTESTS:
        for example in test.examples:
            assert not example.options.get(doctest.SKIP), f"{test.name} skips an example"
        collected[test.filename] = collected.get(test.filename, 0) + len(test.examples)
    roots = [pathlib.Path(package.__path__[0]) for package in _PACKAGES]
    in_source = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            prompts = [line.strip() for line in path.read_text().splitlines()]
            # doctest ignores prompts that hold only a comment
            count = sum(p.startswith(">>>") and not p[3:].strip().startswith("#") for p in prompts)
            if count:
                in_source[str(path)] = count
    assert collected == in_source
    assert sum(collected.values()) >= 90


def test_tensorflow_only_examples_are_those_that_call_tensorflow():
    assert _backends(_parse(">>> with tf.GradientTape() as tape:\n...     pass\n")) == (
        "tensorflow",
    )
    assert _backends(_parse(">>> import tensorflow as tf\n")) == ("tensorflow",)
    for source in (">>> q = tfd.Normal(0.0, 1.0)\n", ">>> leaf.tf = 1\n", ">>> kvi.tfx = 2\n"):
        assert _backends(_parse(source)) == ("tensorflow", "jax"), source
    # Most docstrings are backend-agnostic; the TensorFlow ones are the exception.
    tensorflow_only = [test.name for test in DOCTESTS if _backends(test) == ("tensorflow",)]
    assert len(tensorflow_only) < 0.2 * len(DOCTESTS), tensorflow_only
    # Off TensorFlow, an example that reaches for `tf` without the rule seeing it fails.
    namespace = _namespace(_parse(">>> tf\n"))
    assert ("tf" in namespace) == (BACKEND == "tensorflow")


def _parse(source: str) -> doctest.DocTest:
    return doctest.DocTestParser().get_doctest(source, {}, "example", "example.py", 0)

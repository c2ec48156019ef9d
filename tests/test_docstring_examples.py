"""Every `>>>` example in keras_vi's docstrings runs, and shows the output it really gives.

The examples share a small namespace: `keras`, `tf`, `tfp`, `tfd`, `np`, `kvi`, and the
fixtures below, built fresh for each docstring that names them:

* `x`, `h`, `logits`: a Keras input of 784 pixels, its hidden features (64 units) and the
  logits of a tiny VAE graph `x -> h -> z -> logits` (latent "z" of 8 units).
* `x_train`, `x_test`: 64 and 32 binary vectors of 784 pixels.
* `vae`: a compiled tiny Bernoulli VAE over 784 pixels with a latent "z" of 8 units.
* `model`, `x_grid`: a compiled Bayesian regression network (1 input, loc and raw scale out)
  and 50 inputs in [-3, 3].

Each docstring runs in a fresh temporary working directory, so examples may write `"logs"`.
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
import tensorflow as tf
import tensorflow_probability as tfp

import keras_vi as kvi
import keras_vi.callbacks

tfd = tfp.distributions

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_PACKAGES = (kvi, keras_vi.callbacks)


def _modules():
    modules = []
    for package in _PACKAGES:
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
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


# ---------------------------------------------------------------------------- fixtures
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
    vae.compile(optimizer="adam", jit_compile=False)  # XLA would only add compile time here
    return {"vae": vae}


def _regression():
    inputs = keras.Input((1,))
    h = kvi.layers.DenseFlipout(16, activation="relu")(inputs)
    model = kvi.VariationalModel(
        inputs, kvi.layers.DenseFlipout(2)(h), likelihood="normal", num_examples=50
    )
    model.compile(optimizer="adam", jit_compile=False)
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
    namespace.update(keras=keras, tf=tf, tfp=tfp, tfd=tfd, np=np, kvi=kvi)
    source = "\n".join(example.source for example in test.examples)
    factories = []
    for name, factory in _FIXTURES.items():
        if re.search(rf"\b{name}\b", source) and factory not in factories:
            factories.append(factory)
    for factory in factories:
        namespace.update(factory())
    return namespace


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("test", DOCTESTS, ids=lambda test: test.name)
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

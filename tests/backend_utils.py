"""What tests need that differs per backend: gradients with respect to Keras variables."""

from __future__ import annotations

import keras

from keras_vi.backend import gradients as _gradients


def value_and_gradients(fn, variables):
    """`fn()` and d fn() / d variables, as NumPy (`fn` takes no arguments and reads them).

    On TensorFlow a gradient tape records `fn`; on JAX, `fn` runs with the variables mapped
    to traced values (writes to other variables inside `fn` are dropped there).
    """
    value, grads = _gradients.value_and_gradients(fn, list(variables))
    return keras.ops.convert_to_numpy(value), [keras.ops.convert_to_numpy(g) for g in grads]


def gradients(fn, variables):
    """d fn() / d variables as NumPy arrays (see `value_and_gradients`)."""
    return value_and_gradients(fn, variables)[1]

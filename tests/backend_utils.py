"""What tests need that differs per backend: gradients with respect to Keras variables."""

from __future__ import annotations

import keras

from keras_vi.backend import gradients as _gradients


def value_and_gradients(fn, variables, jit: bool = True):
    """`fn()` and d fn() / d variables, as NumPy (`fn` takes no arguments and reads them).

    On TensorFlow a gradient tape records `fn`; on JAX, `fn` runs compiled with `jax.jit`,
    the variables mapped to traced values (other variables it reads are constants there, and
    its writes to them are dropped). Eager JAX compiles every operation for every new shape,
    which made these checks many times slower than the compiled function. `jit=False` runs
    `fn` eagerly (for code that does not trace, such as TFP's `monte_carlo_variational_loss`).
    """
    variables = list(variables)
    if keras.backend.backend() == "jax" and jit:
        import jax

        def value_and_grad(values):
            def value(values):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn()

            return jax.value_and_grad(value)(values)

        value, grads = jax.jit(value_and_grad)([v.value for v in variables])
    else:
        value, grads = _gradients.value_and_gradients(fn, variables)
    return keras.ops.convert_to_numpy(value), [keras.ops.convert_to_numpy(g) for g in grads]


def gradients(fn, variables, jit: bool = True):
    """d fn() / d variables as NumPy arrays (see `value_and_gradients`)."""
    return value_and_gradients(fn, variables, jit)[1]

"""Gradients keras_vi takes outside Keras's training step, on TensorFlow.

Three users: the DReG estimator, which needs d log w / dz for samples z drawn during the
forward pass (`SampleTape`); the gradient-variance diagnostics, which take many gradients of
the loss per logged step (`value_and_gradients`, `function`); and RELAX, whose control
variate is trained on an estimate holding its own input gradient
(`value_and_input_gradient`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf


def value_and_gradients(fn: Callable[[], Any], variables: list) -> tuple[Any, list]:
    """`fn()` and the gradients of its scalar value with respect to `variables`.

    Variables the value does not depend on get zeros.
    """
    with tf.GradientTape() as tape:
        value = fn()
    gradients = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, gradients


def value_and_input_gradient(
    fn: Callable[[Any], Any], x: Any, has_aux: bool = False
) -> tuple[Any, ...]:
    """`fn(x)` and d sum(fn(x)) / dx, the latter itself differentiable.

    An enclosing gradient tape records the inner gradient, so the result can be
    differentiated again with respect to the variables `fn` reads (RELAX trains its control
    variate on the square of an estimate that holds d c(z) / d logits; it passes a
    gradient-stopped copy of the logits as `x`). With `has_aux`, `fn` returns
    `(value, aux)` and the result is `(value, gradient, aux)`; aux is not differentiated.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        value = fn(x)
        if has_aux:
            value, aux = value
    gradient = tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return (value, gradient, aux) if has_aux else (value, gradient)


def function(
    fn: Callable,
    jit_compile: bool = False,
    reduce_retracing: bool = False,
    batch_specs: list | None = None,
    model: Any = None,
) -> Callable:
    """`fn` compiled to a graph (with XLA when `jit_compile`).

    `model` (the model whose variables `fn` reads and writes) matters only on JAX.

    With `batch_specs`, one `(per-example shape, dtype)` per positional argument, `fn` is
    traced once for inputs of those shapes with any number of rows (the leading axis left
    open), so a last, partial batch reuses the trace.
    """
    del model
    signature = None
    if batch_specs is not None:
        signature = [tf.TensorSpec([None, *shape], dtype) for shape, dtype in batch_specs]
    # TensorFlow before 2.21 counts retracing per Python code object, so the many functions
    # made from one closure (one per model and setting) would add up to its "frequent
    # retracing" warning although each traces once; a partial has no code object of its own,
    # so each function is counted alone.
    return tf.function(
        functools.partial(fn),
        jit_compile=jit_compile,
        reduce_retracing=reduce_retracing,
        input_signature=signature,
    )


class SampleTape:
    """Watches samples z during a forward pass, for gradients of later values with respect to z.

    Open it around the forward pass and the objective (a context manager); `watch` each z as
    it is drawn; `gradient(target, samples)` then gives d target / dz, shaped like each z
    (zeros where unconnected), without being recorded by an outer tape.
    """

    def __init__(self):
        self._tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)

    def __enter__(self) -> SampleTape:
        self._tape.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._tape.__exit__(*exc_info)

    def watch(self, z: Any) -> Any:
        """Watches `z` and returns it (on JAX the returned z is the one to use)."""
        self._tape.watch(z)
        return z

    def gradient(self, target, samples: list) -> list:
        with self._tape.stop_recording():
            return self._tape.gradient(
                target, samples, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )

    def depends(self, later: Any, earlier: Any) -> bool:
        """Whether `later` (a sample or structure of them) was computed from `earlier`."""
        with self._tape.stop_recording():
            connected = tf.nest.flatten(self._tape.gradient(later, earlier))
        return any(g is not None for g in connected)


def with_sample_tape_over(state: list, run: Callable[[SampleTape], Any]) -> Any:
    """`with_sample_tape(run)`: on TensorFlow `run` runs once, writing `state` as it goes."""
    del state
    return with_sample_tape(run)


def with_sample_tape(run: Callable[[SampleTape], Any]) -> Any:
    """`run(tape)` with a `SampleTape` open around it."""
    with SampleTape() as tape:
        return run(tape)

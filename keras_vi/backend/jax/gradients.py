"""Gradients keras_vi takes outside Keras's training step, on JAX.

JAX differentiates functions, not recorded computations: a gradient with respect to Keras
variables maps them to traced values in a `keras.StatelessScope`, and d log w / dz for
samples z drawn inside a forward pass (DReG) is the gradient with respect to a zero
"probe" added to each z, taken in a second pass (`with_sample_tape`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
from keras import tree


def value_and_gradients(fn: Callable[[], Any], variables: list) -> tuple[Any, list]:
    """`fn()` and the gradients of its scalar value with respect to `variables`.

    `fn` runs in a stateless scope: what it writes to variables is dropped (the one
    caller, `kvi.gradient_variance`, restores the model's state around every estimate).
    """

    def value(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    return jax.value_and_grad(value)([v.value for v in variables])


def function(
    fn: Callable,
    jit_compile: bool = False,
    reduce_retracing: bool = False,
    batch_specs: list | None = None,
) -> Callable:
    """`fn`, run eagerly.

    The functions keras_vi compiles on TensorFlow (prediction passes, gradient-variance
    estimates, log-likelihood bounds) read and write Keras variables; `jax.jit` would freeze
    the values they read at tracing time, so on JAX they run op by op.
    """
    del jit_compile, reduce_retracing, batch_specs
    return fn


class PathGradientRequested(Exception):
    """Raised by a recording `SampleTape` when an estimator asks for d log w / dz."""


class SampleTape:
    """The samples z of one pass, and d log w / dz for them once a probe pass gave it.

    Three roles, one per pass of `with_sample_tape`: recording (no gradient known; a request
    raises `PathGradientRequested`), probing (adds a zero probe to each z and keeps the
    target) and replaying (hands out the probe pass's gradients).
    """

    def __init__(
        self,
        probes: list | None = None,
        gradients: list | None = None,
        unavailable: str | None = None,
    ):
        self._probes = probes
        self._gradients = gradients
        self._unavailable = unavailable
        self.parts: list = []
        self.target = None

    def __enter__(self) -> SampleTape:
        return self

    def __exit__(self, *exc_info):
        return None

    def watch(self, z: Any) -> Any:
        parts = tree.flatten(z)
        if self._probes is not None:
            start = len(self.parts)
            parts = [p + self._probes[start + i] for i, p in enumerate(parts)]
            z = tree.pack_sequence_as(z, parts)
        self.parts.extend(parts)
        return z

    def gradient(self, target, samples: list) -> list:
        indices = [self._index(s) for s in samples]
        if self._probes is not None:
            self.target = target
            return [jnp.zeros_like(s) for s in samples]
        if self._unavailable is not None:
            raise ValueError(self._unavailable)
        if self._gradients is None:
            raise PathGradientRequested()
        return [jax.lax.stop_gradient(self._gradients[i]) for i in indices]

    def depends(self, later: Any, earlier: Any) -> bool:
        """Whether `later` was computed from `earlier`: JAX cannot tell from one pass."""
        raise ValueError(
            "On the JAX backend, d log w / dz (DReG) is supported for one latent of a model "
            "at a time; use estimator='reparameterization' for the others."
        )

    def _index(self, sample) -> int:
        for i, part in enumerate(self.parts):
            if part is sample:
                return i
        raise ValueError("SampleTape.gradient(): a sample that was not watched.")


def new_sample_tape() -> SampleTape:
    """A `SampleTape` for a pass that cannot be repeated: asking it for d log w / dz is an
    error (a training step and `kvi.expectation` use `with_sample_tape` instead)."""
    return SampleTape(
        unavailable=(
            "On the JAX backend, d log w / dz (the DReG estimator) is taken in "
            "VariationalModel's training step and in kvi.expectation only, not in this "
            "computation (a diagnostic or a direct call of compute_objective). Use the "
            "TensorFlow backend for it, or estimator='reparameterization'."
        )
    )


def with_sample_tape(run: Callable[[SampleTape], Any]) -> Any:
    """`run(tape)`, where `tape` can give d log w / dz for the samples it watched.

    Most passes never ask, and `run` runs once. When an estimator asks (DReG), `run` is
    repeated: once with a zero probe added to every sample, differentiated with respect to
    the probes, then once more handing out those gradients. `run` must therefore be a pure
    function of its inputs (the trainer's steps run it in a fresh stateless scope).
    """
    recording = SampleTape()
    try:
        return run(recording)
    except PathGradientRequested:
        pass
    zeros = [jnp.zeros(p.shape, p.dtype) for p in recording.parts]

    def probed_target(probes):
        tape = SampleTape(probes=probes)
        run(tape)
        return jnp.sum(tape.target)

    return run(SampleTape(gradients=jax.grad(probed_target)(zeros)))

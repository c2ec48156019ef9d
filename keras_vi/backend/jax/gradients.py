"""Gradients keras_vi takes outside Keras's training step, on JAX.

JAX differentiates functions, not recorded computations: a gradient with respect to Keras
variables maps them to traced values in a `keras.StatelessScope`, and d log w / dz for
samples z drawn inside a forward pass (DReG) is the gradient with respect to a zero
"probe" added to each z, taken in a second pass (`with_sample_tape`).
"""

from __future__ import annotations

import weakref
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


def value_and_input_gradient(
    fn: Callable[[Any], Any], x: Any, has_aux: bool = False
) -> tuple[Any, ...]:
    """`fn(x)` and d sum(fn(x)) / dx, the latter itself differentiable.

    A vector-Jacobian product with a cotangent of ones, traced inside whatever
    differentiation encloses the call, so the result can be differentiated again with respect
    to the variables `fn` reads (mapped to traced values by the enclosing stateless scope).
    `fn` must not write variables. With `has_aux`, `fn` returns `(value, aux)` and the
    result is `(value, gradient, aux)`; aux is not differentiated.
    """
    if has_aux:
        value, pullback, aux = jax.vjp(fn, x, has_aux=True)
    else:
        value, pullback = jax.vjp(fn, x)
    (gradient,) = pullback(jnp.ones_like(value))
    return (value, gradient, aux) if has_aux else (value, gradient)


def function(
    fn: Callable,
    jit_compile: bool | None = None,
    reduce_retracing: bool = False,
    batch_specs: list | None = None,
    model: Any = None,
) -> Callable:
    """`fn` compiled with `jax.jit` over the state of `model` (a model or a weak reference).

    The functions keras_vi compiles (prediction passes, gradient-variance estimates,
    log-likelihood bounds) read and write Keras variables, whose values `jax.jit` would freeze
    at tracing time. Each call therefore passes the values of the model's and its optimizer's
    variables in, runs `fn` in a stateless scope mapping them, and assigns the values it
    wrote. An unbuilt model (whose first call creates variables), `model=None` and
    `jit_compile=False` run `fn` eagerly, op by op. Each input shape is traced once.
    """
    del reduce_retracing, batch_specs
    if model is None or jit_compile is False:
        return fn

    def state() -> list | None:
        owner = model() if isinstance(model, weakref.ref) else model
        if owner is None or not owner.built:
            return None
        variables = list(owner.variables)
        optimizer = getattr(owner, "optimizer", None)
        if optimizer is not None and optimizer.built:
            variables += list(optimizer.variables)
        return variables

    def pure(values, args):
        variables = state()
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            result = fn(*args)
        written = [scope.get_current_value(variable) for variable in variables]
        return result, [old if new is None else new for old, new in zip(values, written)]

    compiled = jax.jit(pure)

    def run(*args):
        variables = state()
        if variables is None:
            return fn(*args)
        values = [variable.value for variable in variables]
        result, written = compiled(values, args)
        for variable, value in zip(variables, written):
            variable.assign(value)
        return result

    return run


class PathGradientRequested(Exception):
    """Raised by a recording `SampleTape` when an estimator asks for d log w / dz."""


class SampleTape:
    """The samples z of one pass, and d log w / dz for them once a probe pass gave it.

    One role per pass of `with_sample_tape`: recording (nothing known; the first request
    raises `PathGradientRequested`), tracing dependencies (zero probes added to each z; the
    first request stops the pass), probing (probes added, dependencies known, the target
    kept) and replaying (gradients and dependencies known).
    """

    def __init__(
        self,
        probes: list | None = None,
        gradients: list | None = None,
        dependencies: list | None = None,
    ):
        self._probes = probes
        self._gradients = gradients
        self._dependencies = dependencies
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
        if self._gradients is not None:
            return [jax.lax.stop_gradient(self._gradients[i]) for i in indices]
        if self._probes is not None and self._dependencies is not None:
            self.target = target
            return [jnp.zeros_like(s) for s in samples]
        raise PathGradientRequested()

    def depends(self, later: Any, earlier: Any) -> bool:
        """Whether `later` was computed from `earlier` (a structural dependence, as a
        TensorFlow tape tells it: some chain of operations leads from one to the other)."""
        if self._dependencies is None:
            raise PathGradientRequested()
        earlier_indices = {self._index(part) for part in tree.flatten(earlier)}
        return any(
            (self._dependencies[i] - {i}) & earlier_indices
            for i in (self._index(part) for part in tree.flatten(later))
        )

    def _index(self, sample) -> int:
        for i, part in enumerate(self.parts):
            if part is sample:
                return i
        raise ValueError("SampleTape: a sample that was not watched.")


def with_sample_tape_over(state: list, run: Callable[[SampleTape], Any]) -> Any:
    """`with_sample_tape(run)` for a computation that reads and writes the variables of
    `state` (all the model's and optimizer's: an inner stateless scope hides what an
    enclosing one maps): each run starts from their values on entry, and the last run's
    writes are assigned at the end."""

    def pure(tape):
        entry = [(variable, variable.value) for variable in state]
        with keras.StatelessScope(state_mapping=entry) as scope:
            result = run(tape)
        return result, [scope.get_current_value(variable) for variable in state]

    entry_values = [variable.value for variable in state]
    result, values = with_sample_tape(pure)
    for variable, old, new in zip(state, entry_values, values):
        if new is not None and new is not old:
            variable.assign(new)
    return result


def with_sample_tape(run: Callable[[SampleTape], Any]) -> Any:
    """`run(tape)`, where `tape` can give d log w / dz for the samples it watched.

    Most passes never ask, and `run` runs once. When an estimator asks (DReG), which samples
    depend on which is read from the traced program of a pass with a zero probe added to
    every sample; then `run` runs with the probes, differentiated with respect to them, and
    once more handing out those gradients. `run` must therefore be a pure function of its
    inputs (the trainer's steps run it in a fresh stateless scope).
    """
    recording = SampleTape()
    try:
        return run(recording)
    except PathGradientRequested:
        pass
    zeros = [jnp.zeros(p.shape, p.dtype) for p in recording.parts]

    def probed_samples(probes):
        tape = SampleTape(probes=probes)
        try:
            run(tape)
        except PathGradientRequested:
            pass  # every sample is drawn before the first request
        return tape.parts

    dependencies = _dependencies(jax.make_jaxpr(probed_samples)(zeros))

    def probed_target(probes):
        tape = SampleTape(probes=probes, dependencies=dependencies)
        run(tape)
        return jnp.sum(tape.target)

    gradients = jax.grad(probed_target)(zeros)
    return run(SampleTape(gradients=gradients, dependencies=dependencies))


def _dependencies(closed_jaxpr) -> list:
    """For each output of a traced program, the indices of the inputs it was computed from.

    A walk over the program's equations; an equation with a sub-program (a loop, a branch, a
    nested jit) counts every output as computed from every input, which can only claim too
    much dependence (an error where TensorFlow would train), never too little.
    """
    jaxpr = closed_jaxpr.jaxpr
    reached = {variable: {i} for i, variable in enumerate(jaxpr.invars)}

    def sources(variable) -> set:
        if type(variable).__name__ == "Literal":
            return set()
        return reached.get(variable, set())

    for equation in jaxpr.eqns:
        inputs = set().union(*(sources(v) for v in equation.invars))
        for variable in equation.outvars:
            reached[variable] = inputs
    return [sources(variable) for variable in jaxpr.outvars]

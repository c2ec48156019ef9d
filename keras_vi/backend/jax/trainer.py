"""`train_step`, `test_step` and `predict_step` of `kvi.VariationalModel` on JAX.

Keras's JAX trainer runs pure functions over the model's state: `(trainable,
non-trainable, optimizer, metrics)` values in, new values out, compiled once with
`jax.jit`. These steps do the same over the shared objective: the forward pass and the
objective run in a `keras.StatelessScope` that maps every variable to its value in the
state, `jax.value_and_grad` differentiates it with respect to the trainable values, and
the updated values are read back from the scope. A non-finite step keeps the old weights,
optimizer and baseline state (`jnp.where` on the flag, as Optax's `apply_if_finite`).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import keras

from keras_vi import _nonfinite, _reporting
from keras_vi.backend.jax import gradients
from keras_vi.backend.jax.logs import StepLogs


class VariationalTrainer:
    """Mixed into `kvi.VariationalModel` before `keras.Model` on the JAX backend."""

    @property
    def metrics_variables(self):
        """Every metric variable a step writes, in an order fixed for the whole of `fit`.

        Keras carries these through its jitted steps as state. keras_vi's step also counts
        skipped steps and out-of-support targets, which `model.metrics` does not show, and
        the `regularization` tracker is carried even while it is not shown (whether it is
        shown is only known once the step is traced).
        """
        metrics = [*self._trackers.values(), *self._latent_trackers.values()]
        compiled = _reporting.compiled_metrics(self)
        if compiled is not None:
            metrics.append(compiled)
        metrics += [self._skipped_steps, self._support_violations]
        return [v for metric in metrics for v in metric.variables] + self._hook_variables()

    def __setattr__(self, name, value):
        # Keras's JAX `fit` stores the whole state (every weight, slot and metric value) in
        # `_jax_state` after each step; `Layer.__setattr__` then walks it looking for
        # variables and layers to track (there are none: these are arrays). That walk cost
        # a third of a small model's step on the host, and on a GPU the host is what bounds
        # a step of this size. A private attribute, checked by tests/test_architecture.py.
        if name == "_jax_state":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def _hook_variables(self) -> list:
        """What the step hooks write (each hook's `variables`), carried with the metrics'
        variables: mapped in the objective's scope, read back from it after the hooks ran."""
        return [v for hook in self._step_hooks for v in getattr(hook, "variables", ())]

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metric_values = state
        x, y, sample_weight = self._unpack_weighted(data)
        hook_variables = self._hook_variables()
        num_metrics = len(metric_values) - len(hook_variables)
        fixed = [
            *zip(self.non_trainable_variables, non_trainable),
            *zip(self.optimizer.variables, optimizer_values),
            *zip(self.metrics_variables, metric_values),
        ]

        def objective(trainable_values, tape):
            mapping = [*zip(self.trainable_variables, trainable_values), *fixed]
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                self._begin_train_step(x, y, sample_weight)
                out = self.compute_objective(
                    x, y, training=True, sample_weight=sample_weight, sample_tape=tape
                )
                scaled_loss = self.optimizer.scale_loss(out["loss"])
            updated = _values(scope, self.non_trainable_variables, non_trainable)
            hooked = _values(scope, hook_variables, metric_values[num_metrics:])
            return scaled_loss, (_reported(out), updated, hooked)

        def loss_and_aux(trainable_values):
            return gradients.with_sample_tape(lambda tape: objective(trainable_values, tape))

        (_, (out, new_non_trainable, hooked)), grads = jax.value_and_grad(
            loss_and_aux, has_aux=True
        )(trainable)
        metric_values = [*metric_values[:num_metrics], *hooked]

        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        ok, flags = _nonfinite.check(self, out, grads, check_gradients=not loss_scaled)
        skips = non_trainable[_index(self.non_trainable_variables, self._consecutive_skips)]
        below_limit = _nonfinite.below_limit(self, skips)
        if below_limit is not None:
            ok = jnp.logical_and(ok, below_limit)
        if loss_scaled:
            # A LossScaleOptimizer skips overflowing steps itself (and lowers its scale).
            new_trainable, new_optimizer = self.optimizer.stateless_apply(
                optimizer_values, grads, trainable
            )
            if below_limit is not None:
                new_trainable, new_optimizer = _where(
                    below_limit,
                    (new_trainable, new_optimizer),
                    (list(trainable), list(optimizer_values)),
                )
        else:
            new_trainable, new_optimizer = _apply_if(
                self.optimizer, ok, grads, self.trainable_variables, trainable, optimizer_values
            )
        restored = {id(v) for v in self._step_state()}
        new_non_trainable = [
            jnp.where(ok, new, old) if id(v) in restored else new
            for v, new, old in zip(self.non_trainable_variables, new_non_trainable, non_trainable)
        ]

        mapping = [
            *zip(self.non_trainable_variables, new_non_trainable),
            *zip(self.metrics_variables, metric_values),
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            _nonfinite.record(self, ok, flags)
            _reporting.update(self, out, y, _batch_size(x), ok=ok, sample_weight=sample_weight)
            logs = {**_reporting.logs(self), "skipped_steps": self._skipped_steps.result()}
        new_non_trainable = _values(scope, self.non_trainable_variables, new_non_trainable)
        new_metrics = _values(scope, self.metrics_variables, metric_values)
        return StepLogs(logs), (new_trainable, new_non_trainable, new_optimizer, new_metrics)

    def test_step(self, state, data):
        trainable, non_trainable, metric_values = state
        x, y, sample_weight = self._unpack_weighted(data)
        mapping = [
            *zip(self.trainable_variables, trainable),
            *zip(self.non_trainable_variables, non_trainable),
            *zip(self.metrics_variables, metric_values),
        ]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            out = self.compute_objective(x, y, training=False, sample_weight=sample_weight)
            _reporting.update(self, out, y, _batch_size(x), sample_weight=sample_weight)
            logs = _reporting.logs(self)
        new_non_trainable = _values(scope, self.non_trainable_variables, non_trainable)
        new_metrics = _values(scope, self.metrics_variables, metric_values)
        return StepLogs(logs), (trainable, new_non_trainable, new_metrics)

    @functools.wraps(keras.Model.fit)
    def fit(self, *args, **kwargs):
        with _values_kept(self):
            return super().fit(*args, **kwargs)

    @functools.wraps(keras.Model.evaluate)
    def evaluate(self, *args, **kwargs):
        with _values_kept(self):
            return super().evaluate(*args, **kwargs)

    @functools.wraps(keras.Model.predict)
    def predict(self, *args, **kwargs):
        with _values_kept(self):
            return super().predict(*args, **kwargs)

    def _purge_model_variables(self, **groups):
        # Keras's JAX loops detach the variables here (a private method); `_values_kept`
        # keeps what they held, including variables created inside the loop (the
        # optimizer's slots on a first `fit`).
        kept = getattr(self, "_kept_values", None)
        if kept is not None:
            variables = {
                "trainable_variables": lambda: self.trainable_variables,
                "non_trainable_variables": lambda: self.non_trainable_variables,
                "optimizer_variables": lambda: self.optimizer.variables,
                "metrics_variables": lambda: self.metrics_variables,
            }
            for group, detached in groups.items():
                if detached:
                    for variable in variables[group]():
                        if getattr(variable, "_value", None) is not None:
                            kept.setdefault(id(variable), (variable, variable.value))
        return super()._purge_model_variables(**groups)

    def predict_step(self, state, data):
        # Through `__call__`, not `call` as Keras's own JAX predict step does, so that
        # `prediction="mean"` applies to `predict` as on TensorFlow.
        trainable, non_trainable = state
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        mapping = [
            *zip(self.trainable_variables, trainable),
            *zip(self.non_trainable_variables, non_trainable),
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = self(x, training=False)
        return outputs, _values(scope, self.non_trainable_variables, non_trainable)


def skip_batches(model, count: int, on_skip):
    """`model.train_function`, which first consumes `count` batches without training on them.

    For resuming an epoch interrupted mid-way (`keras_vi._fit.MidEpochResume`); `on_skip()`
    gives the logs Keras shows for a consumed batch, read from the state passed in (Keras's
    JAX `fit` detaches the variables from their values while an epoch runs).
    """
    train_function = model.train_function
    steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
    remaining = [count]

    def function(state, iterator):
        if remaining[0] > 0:
            for _ in range(steps_per_execution):
                next(iterator)
            remaining[0] -= steps_per_execution
            metric_values = state[-1]
            with keras.StatelessScope(
                state_mapping=list(zip(model.metrics_variables, metric_values))
            ):
                logs = on_skip()
            return logs, state
        return train_function(state, iterator)

    return function


@contextlib.contextmanager
def _values_kept(model):
    """Gives the variables their values back when `fit`, `evaluate` or `predict` fails.

    Keras's JAX loops detach every variable from its value while they run and reattach them
    at the end; a step that fails before any step finished (while it is traced: a shape
    error, a refused input) leaves them detached, and the model cannot even predict. The
    values detached are kept by reference (not copied) in `_purge_model_variables`.
    """
    outer = getattr(model, "_kept_values", None) is not None
    if not outer:
        model._kept_values = {}
    try:
        yield
    except BaseException:
        model.jax_state_sync()  # the steps that did finish, if any
        for variable, value in model._kept_values.values():
            if getattr(variable, "_value", value) is None:  # still detached
                variable.assign(value)
        raise
    finally:
        if not outer:
            model._kept_values = None


def current_value(model, variable):
    """`variable`'s value now, also in the middle of a JAX `fit` epoch.

    Keras's JAX `fit` keeps the live state in `model._jax_state` while an epoch runs (a
    private attribute) and copies it back to the variables only when asked (accessing
    `callback.model` does, at the cost of every variable's copy and a wait for the step).
    Reading one value from it is one scalar transfer. `tests/test_architecture.py` fails if
    Keras renames it.
    """
    state = getattr(model, "_jax_state", None)
    if state and not getattr(model, "_jax_state_synced", True):
        values = state.get("non_trainable_variables")
        if values:
            for candidate, value in zip(model.non_trainable_variables, values):
                if candidate is variable:
                    return value
    return variable.value


def snapshot(model, variable):
    """`variable`'s current value, to be read later without waiting for the step that
    writes it: a copy on the device (Keras donates the step's output to the next step),
    whose transfer to the host starts now."""
    copy = jnp.copy(current_value(model, variable))
    copy.copy_to_host_async()
    return copy


def _reported(out: dict) -> dict:
    """The entries of `compute_objective`'s dict that the step reads after the gradient
    (arrays or None: what `jax.value_and_grad` can hand back as auxiliary output)."""
    keys = (
        "loss",
        "loss_value",
        "elbo",
        "nll",
        "kl",
        "kl_per_latent",
        "example_weight",
        "regularization",
        "target_in_support",
        "y_pred",
    )
    return {key: out[key] for key in keys}


def _values(scope, variables, previous) -> list:
    """Each variable's value at the end of a stateless scope (`previous` if never written)."""
    values = []
    for variable, old in zip(variables, previous):
        new = scope.get_current_value(variable)
        values.append(old if new is None else new)
    return values


def _index(variables, variable) -> int:
    return next(i for i, candidate in enumerate(variables) if candidate is variable)


class _WritesIf(keras.StatelessScope):
    """A stateless scope whose every variable write keeps the old value unless `ok`."""

    def __init__(self, ok, state_mapping):
        super().__init__(state_mapping=state_mapping)
        self._ok = ok

    def add_update(self, update):
        variable, value = update
        old = self.get_current_value(variable)
        if old is None:
            # Keras's stateless_apply would drop this write without a word.
            raise ValueError(
                f"The optimizer wrote variable {variable.path!r}, which is neither a weight it "
                "trains nor one of `optimizer.variables`: a JAX training step carries only "
                "those, so the write would be lost. Create optimizer state with "
                "`optimizer.add_variable` (or `add_variable_from_reference`)."
            )
        super().add_update((variable, jnp.where(self._ok, value, old)))


def _apply_if(optimizer, ok, grads, variables, values, optimizer_values):
    """`optimizer.stateless_apply`, applied only when `ok`: (new values, new slots).

    A select at each write the optimizer makes, which XLA fuses into the update. Later
    reads inside the update see the selected value (Adam's weight update reads its new
    moments), so the compiled step has the layout of one without the check: a select on the
    outputs instead would leave the weight update recomputing the moments from the old
    ones, whose buffers the new moments overwrite, and XLA would copy every slot first (11 MB
    a step for the MNIST VAE). A `lax.cond` copies every weight and slot out of the skipped
    branch, and on GPUs reads its predicate on the host.
    """
    mapping = [*zip(variables, values), *zip(optimizer.variables, optimizer_values)]
    with _WritesIf(ok, mapping) as scope:
        optimizer.apply(grads, variables)
    return _values(scope, variables, values), _values(scope, optimizer.variables, optimizer_values)


def _where(ok, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def _batch_size(structure):
    first = next(t for t in jax.tree_util.tree_leaves(structure) if t is not None)
    return first.shape[0]

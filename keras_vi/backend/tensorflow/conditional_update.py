"""`optimizer.apply(gradients)` on TensorFlow, made only when the step was finite.

A `tf.cond` around the update makes every write wait for the finite check, which reads the
last gradient backpropagation produces. Run op by op (TensorFlow without XLA), the optimizer's
arithmetic then no longer overlaps the rest of backpropagation, as it does in a step without
the check (Adam is about a quarter of the MNIST VAE step's operation time on a CPU). So, where
it is known to be exact, the update is computed first: the optimizer runs in a scope that
records each write as the variable's new value, computed with the operation the write asked
for (later reads inside the update see it, as they would see the written variable), and a
`tf.cond` then hands each new value to its variable, or none. Assigning a tensor gives the
variable its buffer, so what waits for the check is a few hand-overs, not a pass over every
weight and slot.

That needs every write of the update to pass through `optimizer.assign`, `assign_add`,
`assign_sub` (what Keras asks of optimizers) or a Keras variable's `assign`. Keras's own
optimizers do, except the TensorFlow paths of weight decay, EMA and gradient accumulation,
which write `tf.Variable`s directly: those, any other optimizer, sparse gradients,
distribution strategies, XLA-compiled steps and machines with a GPU (see `can_defer`) keep
the `tf.cond` around the whole update. A write outside the scope would slip past the check,
so the ops the update creates are inspected while it is traced, and one that writes a
variable raises.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Keras's own optimizers, each checked bit for bit against `optimizer.apply`
# (tests/test_tf_conditional_update.py).
_DEFERRABLE = (
    keras.optimizers.Adadelta,
    keras.optimizers.Adafactor,
    keras.optimizers.Adagrad,
    keras.optimizers.Adam,
    keras.optimizers.Adamax,
    keras.optimizers.Ftrl,
    keras.optimizers.Lamb,
    keras.optimizers.Lion,
    keras.optimizers.Nadam,
    keras.optimizers.RMSprop,
    keras.optimizers.SGD,
)
# What a recorded update may create besides arithmetic: reads of the variables.
_ALLOWED_STATEFUL = frozenset({"ReadVariableOp", "VarHandleOp"})


def apply_if(optimizer, gradients, weights, ok, *, xla: bool = False) -> None:
    """optimizer.apply(gradients) when `ok`, otherwise nothing (no step, no state change).

    `xla`: the step is compiled by XLA, which schedules the update itself (and measured
    slower with the writes held back), so the whole update goes in the `tf.cond`.
    """
    pairs = [(g, w) for g, w in zip(gradients, weights) if g is not None]
    grads, variables = [g for g, _ in pairs], [w for _, w in pairs]
    if not xla and can_defer(optimizer, grads):
        _deferred_apply_if(optimizer, grads, variables, ok)
    else:
        _cond_apply_if(optimizer, grads, variables, ok)


def can_defer(optimizer, gradients) -> bool:
    """Whether the update can be computed before `ok` is known, writing only after it.

    Only without a GPU: until the check, the new value of every weight and slot is held
    beside the old one (twice the optimizer's memory at the peak), which a GPU's memory may
    not have room for, and the gain was measured on CPUs.
    """
    return (
        type(optimizer) in _DEFERRABLE
        and not tf.config.list_logical_devices("GPU")
        and optimizer.weight_decay is None
        and not optimizer.use_ema
        and not optimizer.gradient_accumulation_steps
        and not any(isinstance(g, tf.IndexedSlices) for g in gradients)
        and not tf.distribute.has_strategy()
        and not tf.executing_eagerly()
    )


class _RecordedWrites(keras.StatelessScope):
    """A scope in which the optimizer's writes are recorded, not made.

    Each write gives the variable's new value with the operation the optimizer asked for (an
    add for `assign_add`, ...), so the value is the one the write would have left; later
    reads inside the scope see it.
    """

    def __init__(self, variables):
        super().__init__(initialize_variables=False)
        # The tf.Variable behind each Keras variable: TensorFlow optimizers write those.
        self._keras_variables = {id(v.value): v for v in variables}
        self._new_values = {}  # id(Keras variable) -> (variable, its new value)

    def add_update(self, update):  # a Keras variable's `assign` inside the scope
        variable, value = update
        self.record(variable, "assign", value)

    def get_current_value(self, variable):
        recorded = self._new_values.get(id(variable))
        return None if recorded is None else recorded[1]

    def record(self, variable, kind: str, value) -> None:
        if not isinstance(variable, keras.Variable):
            variable = self._keras_variable(variable)
        value = tf.cast(value, variable.dtype)
        if kind == "assign":
            new = value
        else:
            recorded = self._new_values.get(id(variable))
            current = tf.convert_to_tensor(variable.value if recorded is None else recorded[1])
            new = current + value if kind == "add" else current - value
        self._new_values[id(variable)] = (variable, new)

    def _keras_variable(self, variable):
        try:
            return self._keras_variables[id(variable)]
        except KeyError:
            raise ValueError(
                f"The optimizer wrote {variable.name!r}, which is neither a weight it trains "
                "nor one of `optimizer.variables`, so keras_vi cannot hold the write back "
                "for a non-finite step. Create optimizer state with "
                "`optimizer.add_variable` (or `add_variable_from_reference`)."
            ) from None

    def make_writes(self):
        # Each variable takes its new value, computed before the check like the rest of the
        # update: assigning a tensor hands its buffer to the variable, so only these O(1)
        # hand-overs wait for the check, not an in-place pass over every weight.
        for variable, new in self._new_values.values():
            variable.value.assign(new)
        return tf.no_op()


def _deferred_apply_if(optimizer, grads, variables, ok) -> None:
    if not optimizer.built:
        with keras.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(variables)
    scope = _RecordedWrites([*variables, *optimizer.variables])
    graph = tf.compat.v1.get_default_graph()
    first_op = len(graph.get_operations())
    optimizer.assign = lambda variable, value: scope.record(variable, "assign", value)
    optimizer.assign_add = lambda variable, value: scope.record(variable, "add", value)
    optimizer.assign_sub = lambda variable, value: scope.record(variable, "sub", value)
    try:
        with scope:
            optimizer.apply(grads, variables)
    finally:
        del optimizer.assign, optimizer.assign_add, optimizer.assign_sub
    _check_no_direct_writes(optimizer, graph.get_operations()[first_op:])
    tf.cond(ok, scope.make_writes, tf.no_op)


def _check_no_direct_writes(optimizer, operations) -> None:
    stateful = [op for op in operations if op.op_def.is_stateful]
    unexpected = [op for op in stateful if op.type not in _ALLOWED_STATEFUL]
    if unexpected:
        raise RuntimeError(
            f"{type(optimizer).__name__}.apply created {unexpected[0].type} "
            f"({unexpected[0].name!r}) outside `optimizer.assign*`: keras_vi's conditional "
            "update would make it even for a skipped step. This Keras version changed how the "
            "optimizer writes; please report it to keras_vi."
        )


def _cond_apply_if(optimizer, grads, variables, ok) -> None:
    """The whole update inside a `tf.cond`.

    A cond whose branch synchronises replicas (the optimizer's merge_call) must run in
    cross-replica context under strategies that merge, as Keras's LossScaleOptimizer does.
    """
    context = tf.distribute.get_replica_context()
    if (
        context is None
        or context.num_replicas_in_sync == 1
        or tf.__internal__.distribute.strategy_supports_no_merge_call()
    ):
        tf.cond(ok, lambda: _apply(optimizer, grads, variables), tf.no_op)
        return

    def cross_replica(distribution, grads, ok):
        ok = distribution.experimental_local_results(ok)[0]

        def apply_on_replicas():
            distribution.extended.call_for_each_replica(_apply, args=(optimizer, grads, variables))
            return tf.no_op()

        tf.cond(ok, apply_on_replicas, tf.no_op)

    context.merge_call(cross_replica, args=(grads, ok))


def _apply(optimizer, grads, variables):
    optimizer.apply(grads, variables)
    return tf.no_op()

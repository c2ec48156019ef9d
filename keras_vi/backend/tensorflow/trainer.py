"""`train_step` and `test_step` of `kvi.VariationalModel` on TensorFlow.

The step itself is thin: the objective (`VariationalModel.compute_objective`), what a step
reports (`keras_vi._reporting`) and which terms must be finite (`keras_vi._nonfinite`) are
backend-agnostic. What is TensorFlow's: the gradient tape, the per-replica loss scaling of
`tf.distribute`, and applying the update only when every replica's step was finite.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_vi import _nonfinite, _reporting
from keras_vi.backend.tensorflow.conditional_update import apply_if


class VariationalTrainer:
    """Mixed into `kvi.VariationalModel` before `keras.Model` on the TensorFlow backend."""

    def train_step(self, data):
        x, y, sample_weight = self._unpack_weighted(data)
        self._begin_train_step(x, y, sample_weight)
        state = self._step_state()
        saved_state = [tf.identity(v.value) for v in state]
        with tf.GradientTape() as tape:
            out = self.compute_objective(x, y, training=True, sample_weight=sample_weight)
            # As Keras's own step: the per-replica loss divided by the replica count (so the
            # summed gradients average), then the optimizer's loss scaling (mixed precision).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(out["loss"] / replicas)
        trainable_weights = self.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)

        # A LossScaleOptimizer skips overflowing steps itself and must see them to lower its
        # scale, so it gets every update and checks the gradients.
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        ok, flags = _nonfinite.check(self, out, gradients, check_gradients=not loss_scaled)
        ok = _agreed_across_replicas(ok)
        below_limit = _nonfinite.below_limit(self, self._consecutive_skips.value)
        if below_limit is not None:
            ok = tf.logical_and(ok, below_limit)
        xla = bool(self.jit_compile)
        if loss_scaled:
            if below_limit is None:
                self.optimizer.apply(gradients, trainable_weights)
            else:
                apply_if(self.optimizer, gradients, trainable_weights, below_limit, xla=xla)
        else:
            apply_if(self.optimizer, gradients, trainable_weights, ok, xla=xla)
        for variable, saved in zip(state, saved_state):
            variable.assign(tf.where(ok, variable.value, saved))
        _nonfinite.record(self, ok, flags)
        _reporting.update(self, out, y, _batch_size(x), ok=ok, sample_weight=sample_weight)
        return _logs(self, skipped_steps=self._skipped_steps.result())

    def test_step(self, data):
        x, y, sample_weight = self._unpack_weighted(data)
        out = self.compute_objective(x, y, training=False, sample_weight=sample_weight)
        _reporting.update(self, out, y, _batch_size(x), sample_weight=sample_weight)
        return _logs(self)


def skip_batches(model, count: int, on_skip):
    """`model.train_function`, which first consumes `count` batches without training on them.

    For resuming an epoch interrupted mid-way (`keras_vi._fit.MidEpochResume`); `on_skip()`
    gives the logs Keras shows for a consumed batch.
    """
    train_function = model.train_function
    steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
    remaining = [count]

    def function(iterator):
        if remaining[0] > 0:
            for _ in range(steps_per_execution):
                next(iterator)
            remaining[0] -= steps_per_execution
            return on_skip()
        return train_function(iterator)

    return function


def current_value(model, variable):
    """`variable`'s value now (on TensorFlow the variables are always current)."""
    del model
    return variable.value


def snapshot(model, variable):
    """`variable`'s current value (a TensorFlow step has finished when `fit` goes on)."""
    return keras.ops.convert_to_numpy(current_value(model, variable))


def _batch_size(structure):
    first = next(t for t in tf.nest.flatten(structure) if t is not None)
    return tf.shape(first)[0]


def _logs(model, **extra) -> dict:
    logs = {**_reporting.logs(model), **extra}
    if _in_multi_worker_mode():
        # Keras 3 reduces multi-worker logs with MEAN over axis 0, which fails on scalars
        # (tensorflow/tensorflow#72388). The metrics are already synchronised across
        # workers, so a length-1 vector reduces back to the same scalar.
        logs = _reporting.as_vectors(logs)
    return logs


def _in_multi_worker_mode() -> bool:
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return strategy.extended._in_multi_worker_mode()


def _agreed_across_replicas(ok):
    """True only if every replica's flag is true, so all replicas take the same branch."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return ok
    bad = context.all_reduce("sum", tf.cast(tf.logical_not(ok), tf.float32))
    return tf.equal(bad, 0.0)

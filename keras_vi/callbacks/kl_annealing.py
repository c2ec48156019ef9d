"""KL annealing: the KL weight follows a schedule of the global step."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _serialization, schedules


@keras.saving.register_keras_serializable(package="keras_vi")
class KLAnnealing(keras.callbacks.Callback):
    """Sets `model.kl_weight` every training step from a schedule of the global step.

    The step is the optimizer's iteration count, so the weight resumes exactly after
    `keras.callbacks.BackupAndRestore` or a checkpoint restore. A `kvi.schedules.Schedule` is
    evaluated inside the compiled training step (no host round trip, works under XLA);
    any other callable `step -> float` is evaluated in Python before each batch.
    The weight is reported as the `kl_weight` metric, so TensorBoard and CSVLogger see it.

    Args:
        schedule: a `kvi.schedules.Schedule`, a number, or a callable `step -> float`.

    Example:
        >>> anneal = kvi.callbacks.KLAnnealing(kvi.schedules.Linear(warmup_steps=2000))
        >>> history = vae.fit(x_train, epochs=1, batch_size=32, verbose=0, callbacks=[anneal])
        >>> round(float(keras.ops.convert_to_numpy(vae.kl_weight)), 6)  # step 1: 1 / 2000
        0.0005
    """

    def __init__(self, schedule: Any):
        super().__init__()
        self.schedule = schedules.get(schedule)
        self._in_graph = isinstance(self.schedule, schedules.Schedule)
        self._previous = None

    def _check_model(self):
        if not hasattr(self.model, "kl_weight") or not hasattr(self.model, "_kl_schedule"):
            raise ValueError("KLAnnealing needs a kvi.VariationalModel (with a `kl_weight`).")

    def on_train_begin(self, logs=None):
        self._check_model()
        if self._in_graph:
            self._previous = self.model._kl_schedule
            if self.model._kl_schedule is not self.schedule:
                self.model._kl_schedule = self.schedule
                self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        if not self._in_graph:
            step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            value = float(self.schedule(step))
            if not value >= 0:
                raise ValueError(
                    f"KLAnnealing: the schedule gave {value} at step {step}; expected >= 0."
                )
            self.model.kl_weight.assign(value)

    def on_train_end(self, logs=None):
        if self._in_graph and self.model._kl_schedule is not self._previous:
            self.model._kl_schedule = self._previous
            self.model.make_train_function(force=True)

    def get_config(self):
        return {"schedule": _serialization.serialize(self.schedule, "schedule", "KLAnnealing")}

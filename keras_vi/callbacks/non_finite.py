"""Stops training after too many consecutive skipped (non-finite) steps."""

from __future__ import annotations

import keras

from keras_vi import _nonfinite
from keras_vi.errors import NonFiniteError


class NonFiniteStop(keras.callbacks.Callback):
    """Raises `kvi.NonFiniteError` once `limit` consecutive training steps were skipped.

    `kvi.VariationalModel.fit` adds one when the model's `max_consecutive_skips` is set; the
    error names the first non-finite term of the last skipped step.

    The count is read from the model only when it could have reached `limit` (after `limit`
    steps when it was 0, after `limit - c` when it was c), before the next step starts or at
    the end of the epoch: training stops at the same step as with a read after every step, at
    a tenth of the reads for the default limit of 10. The callback has no batch-end hook, so
    Keras keeps dispatching steps without waiting for each one's logs (on JAX and on
    accelerators, a batch-end hook makes every step wait for the one before).

    Args:
        limit: consecutive skipped steps that stop training, a positive integer.
    """

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def set_model(self, model):
        super().set_model(model)
        # Read without `self.model`, which on JAX copies the whole state back mid-epoch.
        self._trained = model

    def on_train_begin(self, logs=None):
        self._steps_to_check = self.limit - _nonfinite.consecutive_skips(self._trained)
        self._window_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._window_start = 0

    def on_train_batch_begin(self, batch, logs=None):
        # `batch` steps of this epoch have run (Keras counts steps_per_execution in it).
        if batch - self._window_start >= self._steps_to_check:
            self._check()
            self._window_start = batch

    def on_epoch_end(self, epoch, logs=None):
        self._check()

    def _check(self) -> None:
        count = _nonfinite.consecutive_skips(self._trained)
        if count >= self.limit:
            raise NonFiniteError(_nonfinite.message(self.model, self.limit))
        self._steps_to_check = self.limit - count

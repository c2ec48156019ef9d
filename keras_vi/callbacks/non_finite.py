"""Stops training after too many consecutive skipped (non-finite) steps."""

from __future__ import annotations

import threading

import keras

from keras_vi import _nonfinite
from keras_vi.errors import NonFiniteError


class NonFiniteStop(keras.callbacks.Callback):
    """Raises `kvi.NonFiniteError` once `limit` consecutive training steps were skipped.

    `kvi.VariationalModel.fit` adds one when the model's `max_consecutive_skips` is set; the
    error names the first non-finite term of the last skipped step.

    Once a model's step counts `limit` consecutive skips it skips every later step too (until
    the next `fit`), so the weights, optimizer and baseline state that `fit` leaves when it
    raises are those of the step that reached the limit, however late the count is read.
    This callback reads it after a step (when the count could have reached `limit`: after
    `limit` steps when it was 0, after `limit - c` when it was c) and is safe for Keras's
    asynchronous batch-end dispatch: while no other callback reads each step's logs, Keras
    runs the read in a background thread and keeps dispatching steps, which on JAX and on
    accelerators would otherwise wait for the step before. Training then stops a few steps
    after the limit at most (steps that changed nothing); with a batch-end hook of another
    callback, at the step reaching it.

    Args:
        limit: consecutive skipped steps that stop training, a positive integer.
    """

    async_safe = True

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self._lock = threading.Lock()

    def set_model(self, model):
        super().set_model(model)
        # Read without `self.model`, which on JAX copies the whole state back mid-epoch.
        self._trained = model

    def on_train_begin(self, logs=None):
        self._steps_to_check = self.limit - _nonfinite.consecutive_skips(self._trained)
        self._window_start = 0
        self._reached = False

    def on_epoch_begin(self, epoch, logs=None):
        self._window_start = 0

    def on_train_batch_end(self, batch, logs=None):
        # `batch + 1` steps of this epoch have run (Keras counts steps_per_execution in it).
        with self._lock:
            if self._reached or batch + 1 - self._window_start < self._steps_to_check:
                return
            self._window_start = batch + 1
            self._read()
        if self._reached:
            self._trained.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        with self._lock:
            self._read()
        if self._reached:
            raise NonFiniteError(_nonfinite.message(self.model, self.limit))

    def _read(self) -> None:
        count = _nonfinite.consecutive_skips(self._trained)
        self._reached = self._reached or count >= self.limit
        self._steps_to_check = self.limit - count

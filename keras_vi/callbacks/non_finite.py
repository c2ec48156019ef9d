"""Stops training after too many consecutive skipped (non-finite) steps."""

from __future__ import annotations

import keras
import numpy as np

from keras_vi import _nonfinite
from keras_vi.errors import NonFiniteError


class NonFiniteStop(keras.callbacks.Callback):
    """Raises `kvi.NonFiniteError` once `limit` consecutive training steps were skipped.

    `kvi.VariationalModel.fit` adds one when the model's `max_consecutive_skips` is set; the
    error names the first non-finite term of the last skipped step.

    Once a model's step counts `limit` consecutive skips, it skips every later step too
    (until the next `fit`), so the weights, optimizer and baseline state that `fit` leaves
    when it raises are those of the step that reached the limit, however late the count is
    read. This callback reads it late on purpose: every `limit` steps it starts a copy of
    the count to the host and reads the copy started `limit` steps before, which is long
    done, so the host never waits for a step (on JAX and on accelerators, a wait for the
    count after each window held back the next step). Training stops at most `2 * limit`
    steps past the one reaching the limit (steps that changed nothing), or at the end of the
    epoch, where the count is read at once. The callback has no batch-end hook, so Keras
    does not wait for each step's logs either.

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
        self._pending = None

    def on_epoch_begin(self, epoch, logs=None):
        self._window_start = 0

    def on_train_batch_begin(self, batch, logs=None):
        # `batch` steps of this epoch have run (Keras counts steps_per_execution in it).
        if batch - self._window_start < self.limit:
            return
        self._window_start = batch
        if self._pending is not None:
            self._raise_if_reached(int(np.asarray(self._pending)))
        self._pending = _nonfinite.skips_snapshot(self._trained)

    def on_epoch_end(self, epoch, logs=None):
        self._pending = None
        self._raise_if_reached(_nonfinite.consecutive_skips(self._trained))

    def _raise_if_reached(self, count: int) -> None:
        if count >= self.limit:
            raise NonFiniteError(_nonfinite.message(self.model, self.limit))

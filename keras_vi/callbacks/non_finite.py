"""Stops training after too many consecutive skipped (non-finite) steps."""

from __future__ import annotations

import keras

from keras_vi import _nonfinite
from keras_vi.errors import NonFiniteError


class NonFiniteStop(keras.callbacks.Callback):
    """Raises `kvi.NonFiniteError` once `limit` consecutive training steps were skipped.

    `kvi.VariationalModel.fit` adds one when the model's `max_consecutive_skips` is set; the
    error names the first non-finite term of the last skipped step.

    Args:
        limit: consecutive skipped steps that stop training, a positive integer.
    """

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def on_train_batch_end(self, batch, logs=None):
        if _nonfinite.consecutive_skips(self.model) >= self.limit:
            raise NonFiniteError(_nonfinite.message(self.model, self.limit))

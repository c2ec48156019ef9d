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
    steps when it was 0, after `limit - c` when it was c): training stops at the same step
    as with a read after every step, at a tenth of the reads for the default limit of 10.

    Args:
        limit: consecutive skipped steps that stop training, a positive integer.
    """

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def on_train_begin(self, logs=None):
        self._steps_to_check = self.limit - _nonfinite.consecutive_skips(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self._steps_to_check -= int(getattr(self.model, "steps_per_execution", 1) or 1)
        if self._steps_to_check > 0:
            return
        count = _nonfinite.consecutive_skips(self.model)
        if count >= self.limit:
            raise NonFiniteError(_nonfinite.message(self.model, self.limit))
        self._steps_to_check = self.limit - count

"""`EpochClock`, shared by the benchmarks that time whole epochs inside `fit` (not a script)."""

from __future__ import annotations

import time

import keras


class EpochClock(keras.callbacks.Callback):
    """When each epoch began and ended. No batch hooks, so Keras's loop runs as without it
    (on JAX it keeps dispatching steps without waiting for their logs)."""

    def on_train_begin(self, logs=None):
        self.begins, self.ends = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

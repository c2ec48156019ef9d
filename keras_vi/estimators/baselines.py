"""Control variates (baselines) for score-function estimators.

A baseline is a Keras layer (it may own variables or a network, which the latent layer tracks
and saves). `compute(signal, inputs, training)` returns the baseline to subtract from the
learning signal and an auxiliary objective that trains the baseline in the same step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["Baseline", "MovingAverage", "get"]


class Baseline(keras.layers.Layer):
    """Base class. Subclasses override `compute`."""

    min_num_samples = 1

    def validate(self, *, num_samples: int) -> None:
        if num_samples < self.min_num_samples:
            raise ValueError(
                f"baseline={type(self).__name__}() needs num_samples >= {self.min_num_samples} "
                f"(it compares the samples of one example), got num_samples={num_samples}."
            )

    def compute(self, signal: tf.Tensor, inputs: tf.Tensor, training: bool):
        """Returns (baseline broadcastable to signal [K, B], auxiliary objective or None)."""
        raise NotImplementedError

    def call(self, inputs):  # Keras needs a call; baselines are driven through compute.
        return inputs


@keras.saving.register_keras_serializable(package="keras_vi")
class MovingAverage(Baseline):
    """An exponential moving average of the learning signal (input independent).

    Args:
        decay: weight of the old average, in [0, 1).

    Example:
        >>> est = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage(0.9))
    """

    def __init__(self, decay: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverage: `decay` must be in [0, 1), got {decay}.")
        self.decay = float(decay)

    def build(self, input_shape=None):
        if self.built:
            return
        self.average = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="average", aggregation="mean"
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="initialized", aggregation="mean"
        )
        self.built = True

    def compute(self, signal, inputs, training):
        if not self.built:
            self.build()
        average = tf.convert_to_tensor(self.average)
        if training:
            batch_mean = tf.reduce_mean(signal)
            # The first update sets the average to the batch mean instead of decaying from 0.
            decay = self.decay * tf.convert_to_tensor(self.initialized)
            self.average.assign(decay * average + (1.0 - decay) * batch_mean)
            self.initialized.assign(1.0)
        return average, None

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


def get(identifier) -> Baseline | None:
    if identifier is None or isinstance(identifier, Baseline):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if identifier == "moving_average":
        return MovingAverage()
    raise ValueError(
        f"Unknown `baseline` {identifier!r}; expected None, 'moving_average' or a "
        "keras_vi.estimators.baselines.Baseline."
    )

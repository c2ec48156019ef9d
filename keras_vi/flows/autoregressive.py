"""Inverse autoregressive flow (Kingma et al. 2016) with a MADE conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_vi.flows import _network
from keras_vi.flows.base import FlowBlock

# Bound of |log scale| per block: scales stay within [e^-3, e^3] = [0.05, 20.1].
LOG_SCALE_BOUND = 3.0


def scale_and_log_scale(raw):
    """The soft-clamped scale exp(c * tanh(raw / c)) (c = `LOG_SCALE_BOUND`) and its log.

    raw = 0 gives a scale of exactly 1, the scale is bounded on both sides (no overflow, and
    no collapse that would make the inverse lose float32 precision), and for |raw| << c it
    is exp(raw).
    """
    log_scale = LOG_SCALE_BOUND * ops.tanh(raw / LOG_SCALE_BOUND)
    return ops.exp(log_scale), log_scale


@keras.saving.register_keras_serializable(package="keras_vi")
class IAF(FlowBlock):
    """Inverse autoregressive flow: y_i = x_i * scale_i(x_<i) + shift_i(x_<i).

    A MADE network (masked dense layers on the block's own weights) reads x and gives, for
    every dimension i, a shift and a raw scale that depend on x_1..x_{i-1} only. The scale is
    soft-clamped, exp(3 tanh(raw / 3)): exactly 1 at raw = 0, about exp(raw) near it, and
    within [0.05, 20.1] (no overflow, and no collapse to 0 that would make the inverse lose
    float32 precision; a numerically stable alternative to IAF's gated form), so the Jacobian
    is triangular and log |det| = sum_i log scale_i. Sampling (`forward`) is one network pass;
    `inverse` is exact after D sequential passes (D the event size), as density evaluation
    in an IAF must be. In a `kvi.layers.FlowLatent` every other block runs on the reversed
    order, so stacked blocks alternate their orderings.

    Args:
        hidden_units: widths of the MADE network's hidden layers (each at least D - 1 for
            every dimension to reach every later one).
        activation: the hidden layers' activation.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> iaf = kvi.flows.IAF(hidden_units=(16, 16))
        >>> iaf.build((None, 4))
        >>> y, log_det = iaf.forward(keras.ops.ones((2, 4)))  # fresh: the identity
        >>> keras.ops.convert_to_numpy(y).tolist(), keras.ops.convert_to_numpy(log_det).tolist()
        ([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], [0.0, 0.0])
    """

    def __init__(self, hidden_units: Sequence[int] = (32,), activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        owner = f"IAF {self.name!r}"
        self.hidden_units = _network.check_hidden_units(hidden_units, owner)
        self.activation = activation
        self._activation = _network.check_activation(activation, owner)

    def build(self, input_shape):
        size = self._event_size(input_shape)
        self.network = _network.Network(
            self,
            size,
            self.hidden_units,
            2 * size,
            self._activation,
            masks=_network.made_masks(size, self.hidden_units, 2),
        )
        self.built = True

    def _shift_and_raw(self, x):
        out = self.network(x)
        return out[..., : self.event_size], out[..., self.event_size :]

    def forward(self, x):
        x = ops.cast(x, "float32")
        shift, raw = self._shift_and_raw(x)
        scale, log_scale = scale_and_log_scale(raw)
        return x * scale + shift, ops.sum(log_scale, axis=-1)

    def inverse(self, y):
        y = ops.cast(y, "float32")
        x = ops.zeros_like(y)
        log_scale = ops.zeros_like(y)
        # After pass i, x_1..x_i are exact (x_i depends on x_<i only); the last pass's
        # scales are those at the final x.
        for _ in range(self.event_size):
            shift, raw = self._shift_and_raw(x)
            scale, log_scale = scale_and_log_scale(raw)
            x = (y - shift) / scale
        return x, -ops.sum(log_scale, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_units": list(self.hidden_units), "activation": self._serial_activation()}
        )
        return config

    def _serial_activation(self):
        if isinstance(self.activation, str):
            return self.activation
        return keras.activations.serialize(self.activation)

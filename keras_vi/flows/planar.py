"""Planar flow (Rezende and Mohamed 2015)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_vi.flows.base import FlowBlock

# m(s) = -1 + softplus(s + log(e - 1)): m > -1 everywhere and m(0) = 0, so u = 0 is the
# identity.
_SHIFT = math.log(math.e - 1.0)


@keras.saving.register_keras_serializable(package="keras_vi")
class Planar(FlowBlock):
    """Planar flow: y = x + u_hat * tanh(w . x + b).

    u_hat = u + (m(w . u) - w . u) w / |w|^2 with m(s) = -1 + softplus(s + log(e - 1)), so
    w . u_hat = m(w . u) > -1 and the map is invertible (Rezende and Mohamed 2015, appendix
    A; the shift inside the softplus makes m(0) = 0, so u = 0 is the identity). log |det| =
    log(1 + w . u_hat * (1 - tanh^2(w . x + b))).

    The inverse reduces to the scalar a = w . x + b, the root of a + c tanh(a) = w . y + b
    (c = w . u_hat), which is increasing in a and lies within |c| of w . y + b: `iterations`
    bisection steps find it (a fixed count, so it compiles under XLA), with the gradient
    stopped, and ONE Newton step from that root with the live parameters and y gives a
    value whose gradient is the exact implicit-function gradient. Then x = y - u_hat tanh(a).

    u and b start at zero (the identity), w at small random values.

    Args:
        iterations: bisection steps of the inverse (>= 1); 40 reach float32 round-off.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> planar = kvi.flows.Planar()
        >>> planar.build((None, 3))
        >>> [w.name for w in planar.weights]
        ['w', 'u', 'b']
    """

    def __init__(self, iterations: int = 40, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(iterations, int) and not isinstance(iterations, bool)) or iterations < 1:
            raise ValueError(
                f"Planar {self.name!r}: `iterations` must be a positive integer, got "
                f"{iterations!r}."
            )
        self.iterations = iterations

    def build(self, input_shape):
        size = self._event_size(input_shape)
        self.w = self._add("w", (size,), keras.initializers.RandomNormal(stddev=1.0 / size**0.5))
        self.u = self._add("u", (size,), "zeros")
        self.b = self._add("b", (), "zeros")
        self.built = True

    def _parameters(self):
        w = ops.convert_to_tensor(self.w)
        u = ops.convert_to_tensor(self.u)
        b = ops.convert_to_tensor(self.b)
        wu = ops.sum(w * u)
        c = ops.softplus(wu + _SHIFT) - 1.0  # = w . u_hat > -1
        u_hat = u + (c - wu) * w / (ops.sum(w * w) + 1e-12)
        return w, u_hat, b, c

    @staticmethod
    def _log_det(c, a):
        tanh = ops.tanh(a)
        return ops.log1p(c * (1.0 - tanh * tanh))

    def forward(self, x):
        x = ops.cast(x, "float32")
        w, u_hat, b, c = self._parameters()
        a = ops.sum(x * w, axis=-1) + b
        return x + u_hat * ops.tanh(a)[..., None], self._log_det(c, a)

    def inverse(self, y):
        y = ops.cast(y, "float32")
        w, u_hat, b, c = self._parameters()
        t = ops.sum(y * w, axis=-1) + b  # = a + c tanh(a)
        root = self._bisect(ops.stop_gradient(t), ops.stop_gradient(c))
        # One Newton step from the stopped root, with live t and c: the same value (to
        # round-off), and d root / d (t, c) = -(d g / d (t, c)) / g', the implicit gradient.
        tanh = ops.tanh(root)
        g = root + c * tanh - t
        slope = 1.0 + c * (1.0 - tanh * tanh)
        a = root - g / slope
        x = y - u_hat * ops.tanh(a)[..., None]
        return x, -self._log_det(c, a)

    def _bisect(self, t, c):
        radius = ops.abs(c) + 1e-6
        state = (t - radius, t + radius, t, ops.broadcast_to(c, ops.shape(t)))
        low, high, _, _ = ops.fori_loop(0, self.iterations, _bisection_step, state)
        return ops.stop_gradient(0.5 * (low + high))

    def get_config(self):
        return {**super().get_config(), "iterations": self.iterations}


def _bisection_step(_, state):
    """Halves [low, high] around the root of a + c tanh(a) - t (a module-level function, so
    the loop body is traced once per shape, not once per call)."""
    low, high, t, c = state
    middle = 0.5 * (low + high)
    above = middle + c * ops.tanh(middle) - t > 0.0
    return ops.where(above, low, middle), ops.where(above, middle, high), t, c

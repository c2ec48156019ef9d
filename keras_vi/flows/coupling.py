"""Coupling blocks: affine (RealNVP, Dinh et al. 2017) and rational-quadratic spline
(Durkan et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from keras_vi import _checks
from keras_vi.flows import _network
from keras_vi.flows.autoregressive import scale_and_log_scale
from keras_vi.flows.base import FlowBlock


class _Coupling(FlowBlock):
    """x = [x_a, x_b] with x_a the first D // 2 dimensions: x_a passes unchanged and
    conditions an invertible elementwise map of x_b."""

    params_per_dim = 2

    def __init__(self, hidden_units: Sequence[int], activation: str, **kwargs):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} {self.name!r}"
        self.hidden_units = _network.check_hidden_units(hidden_units, owner)
        self.activation = activation
        self._activation = _network.check_activation(activation, owner)

    def build(self, input_shape):
        size = self._event_size(input_shape, minimum=2)
        self.split = size // 2
        self.network = _network.Network(
            self,
            self.split,
            self.hidden_units,
            self.params_per_dim * (size - self.split),
            self._activation,
        )
        self.built = True

    def _params(self, x_a):
        out = self.network(x_a)
        shape = (*ops.shape(out)[:-1], self.event_size - self.split, self.params_per_dim)
        return ops.reshape(out, shape)

    def _transform(self, x_b, params, inverse: bool):
        raise NotImplementedError

    def _apply(self, x, inverse: bool):
        x = ops.cast(x, "float32")
        x_a, x_b = x[..., : self.split], x[..., self.split :]
        y_b, log_det = self._transform(x_b, self._params(x_a), inverse)
        return ops.concatenate([x_a, y_b], axis=-1), ops.sum(log_det, axis=-1)

    def forward(self, x):
        return self._apply(x, inverse=False)

    def inverse(self, y):
        return self._apply(y, inverse=True)

    def get_config(self):
        config = super().get_config()
        activation = self.activation
        if not isinstance(activation, str):
            activation = keras.activations.serialize(activation)
        config.update({"hidden_units": list(self.hidden_units), "activation": activation})
        return config


@keras.saving.register_keras_serializable(package="keras_vi")
class AffineCoupling(_Coupling):
    """RealNVP affine coupling: y_a = x_a, y_b = x_b * scale(x_a) + shift(x_a).

    x_a is the first D // 2 dimensions (D >= 2). The scale is soft-clamped,
    exp(3 tanh(raw / 3)) (exactly 1 at raw = 0, within [0.05, 20.1]: it cannot overflow as
    exp(raw) can, nor collapse so far that the inverse loses float32 precision), so
    log |det| = sum log scale, and the inverse is exact in one pass. In a
    `kvi.layers.FlowLatent` every other block runs on the reversed event axis, so two
    blocks transform every dimension.

    Args:
        hidden_units: widths of the conditioner's hidden layers.
        activation: the hidden layers' activation.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> coupling = kvi.flows.AffineCoupling(hidden_units=(16,))
        >>> coupling.build((None, 4))
        >>> x, log_det = coupling.inverse(keras.ops.ones((1, 4)))  # fresh: the identity
        >>> keras.ops.convert_to_numpy(log_det).tolist()
        [0.0]
    """

    def __init__(self, hidden_units: Sequence[int] = (32,), activation: str = "relu", **kwargs):
        super().__init__(hidden_units, activation, **kwargs)

    def _transform(self, x_b, params, inverse):
        shift, raw = params[..., 0], params[..., 1]
        scale, log_scale = scale_and_log_scale(raw)
        if inverse:
            return (x_b - shift) / scale, -log_scale
        return x_b * scale + shift, log_scale


@keras.saving.register_keras_serializable(package="keras_vi")
class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (neural spline flow, Durkan et al. 2019).

    x_a (the first D // 2 dimensions, D >= 2) passes unchanged; each dimension of x_b goes
    through a monotone rational-quadratic spline on [-bound, bound] with `num_bins` bins,
    whose bin widths, heights and interior knot derivatives a network reads from x_a. The
    derivatives at -bound and bound are 1, so the spline joins the identity used outside
    the interval. The inverse solves the bin's quadratic exactly; log |det| is the sum of the
    splines' log-derivatives. A fresh block (uniform bins, unit derivatives) is the identity.

    Args:
        num_bins: bins per spline, an integer >= 1.
        hidden_units: widths of the conditioner's hidden layers.
        bound: the spline acts on [-bound, bound] (> 0); the identity outside.
        activation: the hidden layers' activation.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> spline = kvi.flows.SplineCoupling(num_bins=8, hidden_units=(16,), bound=3.0)
        >>> spline.build((None, 2))
        >>> y, log_det = spline.forward(keras.ops.convert_to_tensor([[0.5, -1.0]]))
        >>> [round(v, 5) for v in keras.ops.convert_to_numpy(y)[0].tolist()]  # identity
        [0.5, -1.0]
    """

    min_bin_width = 1e-3
    min_bin_height = 1e-3
    min_derivative = 1e-3

    def __init__(
        self,
        num_bins: int = 8,
        hidden_units: Sequence[int] = (32,),
        bound: float = 3.0,
        activation: str = "relu",
        **kwargs,
    ):
        owner = "SplineCoupling"
        self.num_bins = _checks.positive_int(num_bins, "num_bins", owner)
        self.bound = _checks.finite_number(bound, "bound", owner, minimum=0.0, exclusive=True)
        self.params_per_dim = 3 * self.num_bins - 1
        super().__init__(hidden_units, activation, **kwargs)
        # softplus(raw + shift) + min_derivative is 1 at raw = 0 (up to round-off).
        self._derivative_shift = math.log(math.expm1(1.0 - self.min_derivative))

    def _knots(self, raw, minimum):
        """Bin sizes from raw values, then the knot positions on [-bound, bound]."""
        sizes = minimum + (1.0 - minimum * self.num_bins) * ops.softmax(raw, axis=-1)
        inner = ops.cumsum(sizes, axis=-1)[..., :-1]
        knots = ops.concatenate(
            [ops.zeros_like(sizes[..., :1]), inner, ops.ones_like(sizes[..., :1])], axis=-1
        )
        knots = (2.0 * knots - 1.0) * self.bound
        return knots, knots[..., 1:] - knots[..., :-1]

    def _transform(self, x_b, params, inverse):
        bins = self.num_bins
        xs, widths = self._knots(params[..., :bins], self.min_bin_width)
        ys, heights = self._knots(params[..., bins : 2 * bins], self.min_bin_height)
        inner = ops.softplus(params[..., 2 * bins :] + self._derivative_shift) + self.min_derivative
        ones = ops.ones_like(xs[..., :1])
        derivatives = ops.concatenate([ones, inner, ones], axis=-1)

        inside = ops.logical_and(x_b >= -self.bound, x_b <= self.bound)
        value = ops.clip(x_b, -self.bound, self.bound)
        knots = ys if inverse else xs
        # The bin of each value, one-hot (a gather compiles to far more XLA than this sum).
        index = ops.sum(ops.cast(value[..., None] >= knots[..., 1:-1], "int32"), axis=-1)
        one_hot = ops.one_hot(index, bins, dtype="float32")

        def at(table):
            return ops.sum(table * one_hot, axis=-1)

        x_k, w_k, y_k, h_k = at(xs[..., :-1]), at(widths), at(ys[..., :-1]), at(heights)
        d_k, d_k1 = at(derivatives[..., :-1]), at(derivatives[..., 1:])
        slope = h_k / w_k
        curvature = d_k1 + d_k - 2.0 * slope
        if inverse:
            dy = value - y_k
            a = h_k * (slope - d_k) + dy * curvature
            b = h_k * d_k - dy * curvature
            c = -slope * dy
            discriminant = ops.maximum(b * b - 4.0 * a * c, 0.0)
            xi = 2.0 * c / (-b - ops.sqrt(discriminant))
            out = xi * w_k + x_k
        else:
            xi = (value - x_k) / w_k
            out = y_k + h_k * (slope * xi * xi + d_k * xi * (1.0 - xi)) / (
                slope + curvature * xi * (1.0 - xi)
            )
        xi_1m = xi * (1.0 - xi)
        numerator = slope * slope * (d_k1 * xi * xi + 2.0 * slope * xi_1m + d_k * (1.0 - xi) ** 2)
        denominator = slope + curvature * xi_1m
        log_derivative = ops.log(numerator) - 2.0 * ops.log(denominator)
        out = ops.where(inside, out, x_b)
        log_det = ops.where(inside, -log_derivative if inverse else log_derivative, 0.0)
        return out, log_det

    def get_config(self):
        config = super().get_config()
        config.update({"num_bins": self.num_bins, "bound": self.bound})
        return config

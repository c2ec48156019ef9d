"""Bayesian 2-D convolutions: weight sample, Flipout, and local reparameterization."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _checks
from keras_vi.layers.bayesian import (
    WEIGHT_ARGS,
    KernelBiasLayer,
    random_signs,
    standard_normal,
    with_args,
)

__all__ = ["Conv2DReparameterization", "Conv2DFlipout", "Conv2DLocalReparameterization"]

_VARIANCE_FLOOR = 1e-12

_ARGS = (
    """\
filters: number of output channels, a positive integer.
kernel_size: an int or a pair of ints.
strides: an int or a pair of ints (not > 1 together with `dilation_rate` > 1).
padding: `"valid"` or `"same"`.
data_format: only `"channels_last"` (or None for the Keras default, which must be
    channels_last).
dilation_rate: an int or a pair of ints.
activation: activation function (name or callable).
use_bias: whether the layer has a (Bayesian) bias.
"""
    + WEIGHT_ARGS
)
_PADDINGS = ("valid", "same")


def _pair(value: Any, name: str, owner: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(
            f"{owner}: `{name}` must be a positive integer or a tuple of two positive integers, "
            f"got {value!r}."
        )
    return (int(value[0]), int(value[1]))


def _output_length(length, kernel: int, stride: int, dilation: int, padding: str):
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    span = (kernel - 1) * dilation + 1
    return max(0, (length - span) // stride + 1)


class _BayesianConv2D(KernelBiasLayer):
    """`keras.layers.Conv2D` (channels_last) with a mean-field normal posterior.

    Subclasses implement `_pre_activation(x, seeds)` for NHWC `x`.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs,
    ):
        super().__init__(
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        owner = type(self).__name__
        self.filters = _checks.positive_int(filters, "filters", owner)
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        self.strides = _pair(strides, "strides", owner)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate", owner)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                f"{owner}: `strides` > 1 cannot be combined with `dilation_rate` > 1, got "
                f"strides={self.strides} and dilation_rate={self.dilation_rate}."
            )
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(f"{owner}: `padding` must be one of {_PADDINGS}, got {padding!r}.")
        self.padding = padding.lower()
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            raise ValueError(
                f"{owner}: only data_format='channels_last' is supported (TensorFlow's CPU "
                f"convolutions need NHWC), got {data_format!r}."
            )
        self.data_format = data_format

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} expects inputs of shape (batch, height, "
                f"width, channels) with known channels, got {tuple(input_shape)}."
            )
        shape = (*self.kernel_size, int(input_shape[-1]), self.filters)
        self.add_kernel_and_bias(shape, (self.filters,))
        self.built = True

    def compute_output_shape(self, input_shape):
        spatial = [
            _output_length(input_shape[1 + i], kernel, stride, dilation, self.padding)
            for i, (kernel, stride, dilation) in enumerate(
                zip(self.kernel_size, self.strides, self.dilation_rate)
            )
        ]
        return (input_shape[0], *spatial, self.filters)

    def convolve(self, x: Any, kernel: Any) -> Any:
        """The layer's convolution (strides, padding, dilation) of NHWC `x` with `kernel`."""
        return ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class Conv2DReparameterization(_BayesianConv2D):
    """A 2-D convolution that draws one kernel sample per call (Blundell et al. 2015).

    All examples of a batch share the sampled kernel (correlated noise; prefer
    `Conv2DFlipout` for training). Inside a `VariationalModel` with `num_samples=K`, each of
    the K tiled copies of the batch gets its own kernel sample.

    Args:
        {args}

    Example:
        >>> conv = kvi.layers.Conv2DReparameterization(16, 3, padding="same", activation="relu")
        >>> features = conv(keras.Input((28, 28, 1)))
    """

    def _pre_activation(self, x, seeds):
        k = self.num_weight_samples()
        if k == 1:
            outputs = self.convolve(x, self.sample_weight("kernel", seeds[0]))
            if self.use_bias:
                outputs += self.sample_weight("bias", seeds[3])
            return outputs
        kernels = self.sample_weight("kernel", seeds[0], leading=(k,))
        if self.use_bias:
            biases = self.sample_weight("bias", seeds[3], leading=(k, 1, 1, 1))
        # Split rather than `_layout.to_samples`: the spatial dimensions may be unknown. Tiled
        # rows are k-major, so chunk i is copy i.
        outputs = []
        for i, chunk in enumerate(ops.split(x, k, axis=0)):
            output = self.convolve(chunk, kernels[i])
            outputs.append(output + biases[i] if self.use_bias else output)
        return ops.concatenate(outputs, axis=0)


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class Conv2DFlipout(_BayesianConv2D):
    """A 2-D convolution with Flipout weight noise (Wen et al. 2018).

    One kernel perturbation dW is drawn per call and decorrelated across examples by
    random signs on the input and output channels:
    `conv(x, loc) + conv(x * s_in, dW) * s_out`, with `s_in` of shape (batch, 1, 1,
    channels) and `s_out` of shape (batch, 1, 1, filters). The bias perturbation is drawn
    once per call and flipped by the same output signs.

    Args:
        {args}

    Example:
        >>> inputs = keras.Input((28, 28, 1))
        >>> h = kvi.layers.Conv2DFlipout(16, 5, activation="relu")(inputs)
        >>> h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
        >>> model = kvi.VariationalModel(inputs, kvi.layers.DenseFlipout(10)(h),
        ...                              likelihood="categorical")
    """

    def _pre_activation(self, x, seeds):
        loc = self.posterior_loc("kernel")
        delta = self.posterior_scale("kernel") * standard_normal(loc.shape, seeds[0])
        batch = ops.shape(x)[0]
        sign_in = random_signs((batch, 1, 1, x.shape[-1]), seeds[1])
        sign_out = random_signs((batch, 1, 1, self.filters), seeds[2])
        perturbation = self.convolve(x * sign_in, delta)
        outputs = self.convolve(x, loc)
        if self.use_bias:
            # The bias perturbation shares the example's output signs (Flipout for the bias).
            bias_scale = self.posterior_scale("bias")
            perturbation += bias_scale * standard_normal(bias_scale.shape, seeds[3])
            outputs += self.posterior_loc("bias")
        return outputs + perturbation * sign_out


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class Conv2DLocalReparameterization(_BayesianConv2D):
    """A 2-D convolution sampling pre-activations instead of weights (Kingma et al. 2015).

    Each output activation is drawn from its exact marginal under the posterior: mean
    `conv(x, loc) + bias_loc`, variance `conv(x², scale²) + bias_scale²`. The noise is
    independent across examples, output channels *and spatial positions*. With a shared
    kernel the positions of one example would be correlated; dropping that correlation is
    the approximation of this layer (it optimises a slightly different objective than a
    weight-sampling layer: each position behaves as if it had its own kernel sample). It
    costs two convolutions and gives the lowest-variance gradients of the three.

    Args:
        {args}

    Example:
        >>> h = kvi.layers.Conv2DLocalReparameterization(8, 3, activation="relu")(
        ...     keras.Input((28, 28, 1)))
    """

    def _pre_activation(self, x, seeds):
        mean = self.convolve(x, self.posterior_loc("kernel"))
        variance = self.convolve(ops.square(x), ops.square(self.posterior_scale("kernel")))
        if self.use_bias:
            mean += self.posterior_loc("bias")
            variance += ops.square(self.posterior_scale("bias"))
        noise = standard_normal(ops.shape(mean), seeds[1])
        return mean + ops.sqrt(variance + _VARIANCE_FLOOR) * noise

"""Bayesian dense layers: weight sample, Flipout, and local reparameterization."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _checks, _layout
from keras_vi.layers.bayesian import (
    WEIGHT_ARGS,
    KernelBiasLayer,
    known_last_dimension,
    random_signs,
    standard_normal,
    with_args,
)

__all__ = ["DenseReparameterization", "DenseFlipout", "DenseLocalReparameterization"]

# Added to the local-reparameterization variance before the square root (finite gradient).
_VARIANCE_FLOOR = 1e-12

_ARGS = (
    """\
units: output width, a positive integer.
activation: activation function (name or callable), as in `keras.layers.Dense`.
use_bias: whether the layer has a (Bayesian) bias.
"""
    + WEIGHT_ARGS
)


class _BayesianDense(KernelBiasLayer):
    """`keras.layers.Dense` with a mean-field normal posterior over kernel and bias.

    Subclasses implement `_dense_pre_activation(x, seeds)` for 2-D `x` [rows, input_dim];
    inputs of higher rank are flattened to rows around it.
    """

    def __init__(
        self,
        units: int,
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
        self.units = _checks.positive_int(units, "units", type(self).__name__)

    def build(self, input_shape):
        input_dim = known_last_dimension(self, input_shape)
        self.add_kernel_and_bias((input_dim, self.units), (self.units,))
        self.built = True

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def _pre_activation(self, x, seeds):
        if len(x.shape) == 2:
            return self._dense_pre_activation(x, seeds)
        leading = ops.shape(x)[:-1]  # rows are all leading positions
        outputs = self._dense_pre_activation(ops.reshape(x, (-1, x.shape[-1])), seeds)
        return ops.reshape(outputs, (*leading, self.units))

    def _dense_pre_activation(self, x, seeds):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class DenseReparameterization(_BayesianDense):
    """A dense layer that draws one weight sample per call (Blundell et al. 2015).

    All rows of a batch share the sampled kernel and bias, so their outputs are correlated
    and averaging over the batch does not reduce the gradient variance; prefer
    `DenseFlipout` or `DenseLocalReparameterization` for training. Inside a
    `VariationalModel` with `num_samples=K`, each of the K tiled copies of the batch gets
    its own weight sample.

    Args:
        {args}

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((8,)),
        ...     kvi.layers.DenseReparameterization(32, activation="relu"),
        ...     kvi.layers.DenseReparameterization(1),
        ... ])
    """

    def _dense_pre_activation(self, x, seeds):
        k = self.num_weight_samples()
        if k == 1:
            outputs = ops.matmul(x, self.sample_weight("kernel", seeds[0]))
            if self.use_bias:
                outputs += self.sample_weight("bias", seeds[3])
            return outputs
        # K independent weight samples, one per tiled copy.
        xk = _layout.to_samples(x, k)
        outputs = ops.matmul(xk, self.sample_weight("kernel", seeds[0], leading=(k,)))
        if self.use_bias:
            outputs += self.sample_weight("bias", seeds[3], leading=(k, 1))
        return _layout.to_rows(outputs)


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class DenseFlipout(_BayesianDense):
    """A dense layer with Flipout weight noise (Wen et al. 2018).

    One weight perturbation dW ~ N(0, scale²) is drawn per call and decorrelated across
    rows by random signs: `x @ loc + ((x * s_in) @ dW) * s_out`, with independent +-1
    entries `s_in`, `s_out` per row. Rows are then pairwise uncorrelated, so the variance
    of a batch average falls like 1/batch at the cost of about two matrix products. The
    bias perturbation is drawn once per call and flipped by the same output signs.

    Args:
        {args}

    Example:
        >>> inputs = keras.Input((784,))
        >>> h = kvi.layers.DenseFlipout(256, activation="relu")(inputs)
        >>> logits = kvi.layers.DenseFlipout(10)(h)
        >>> model = kvi.VariationalModel(inputs, logits, likelihood="categorical")
    """

    def _dense_pre_activation(self, x, seeds):
        loc = self.posterior_loc("kernel")
        delta = self.posterior_scale("kernel") * standard_normal(loc.shape, seeds[0])
        rows = ops.shape(x)[0]
        sign_in = random_signs((rows, x.shape[-1]), seeds[1])
        sign_out = random_signs((rows, self.units), seeds[2])
        perturbation = ops.matmul(x * sign_in, delta)
        outputs = ops.matmul(x, loc)
        if self.use_bias:
            # The bias perturbation shares the row's output signs (Flipout for the bias).
            bias_scale = self.posterior_scale("bias")
            perturbation += bias_scale * standard_normal(bias_scale.shape, seeds[3])
            outputs += self.posterior_loc("bias")
        return outputs + perturbation * sign_out


@keras.saving.register_keras_serializable(package="keras_vi")
@with_args(_ARGS)
class DenseLocalReparameterization(_BayesianDense):
    """A dense layer sampling pre-activations instead of weights (Kingma et al. 2015).

    With a factorised normal posterior the pre-activation of each row is exactly normal,
    with mean `x @ loc + bias_loc` and variance `x² @ scale² + bias_scale²`; sampling it
    directly gives every row independent weight noise for the cost of two matrix products.
    A Monte Carlo KL (for a non-normal prior) draws its own weight sample.

    Args:
        {args}

    Example:
        >>> layer = kvi.layers.DenseLocalReparameterization(64, activation="relu")
        >>> h = layer(keras.Input((20,)))
    """

    def _dense_pre_activation(self, x, seeds):
        mean = ops.matmul(x, self.posterior_loc("kernel"))
        variance = ops.matmul(ops.square(x), ops.square(self.posterior_scale("kernel")))
        if self.use_bias:
            mean += self.posterior_loc("bias")
            variance += ops.square(self.posterior_scale("bias"))
        noise = standard_normal(ops.shape(mean), seeds[1])
        return mean + ops.sqrt(variance + _VARIANCE_FLOOR) * noise

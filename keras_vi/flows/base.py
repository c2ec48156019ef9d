"""The flow-block contract, the composition of blocks, and the distribution they define."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_vi import _checks
from keras_vi.backend import distributions as tfd

__all__ = ["FlowBlock", "FlowDistribution", "forward", "inverse"]


class FlowBlock(keras.layers.Layer):
    """Base class of keras_vi's flow blocks: an invertible map of the last axis.

    A block is a Keras layer whose weights Keras tracks, trains and saves. Subclasses create
    their weights in `build(input_shape)` (the last axis is the event size D) and implement
    `forward(x)` and `inverse(y)`, each returning the transformed tensor and the log
    |det Jacobian| of the map it applied (one value per row: the input's shape without its
    last axis). `inverse` is exact and differentiable in y and in the block's weights, so
    log q(z) can be evaluated at any z. Calling the layer applies `forward` and returns y.

    Blocks compute in float32 (their weights are float32 and never autocast), whatever the
    dtype policy. A fresh block is the identity: the last layer of its network starts at
    zero.

    Example:
        >>> block = kvi.flows.AffineCoupling(hidden_units=(8,))
        >>> isinstance(block, kvi.flows.FlowBlock), isinstance(block, keras.layers.Layer)
        (True, True)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.event_size: int | None = None

    def _event_size(self, input_shape, minimum: int = 1) -> int:
        size = input_shape[-1] if len(input_shape) else None
        if size is None or not _checks.is_int(size) or size < minimum:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} needs an event axis of known size >= "
                f"{minimum}, got input shape {tuple(input_shape)}."
            )
        self.event_size = int(size)
        return self.event_size

    def _add(self, name: str, shape, initializer) -> keras.Variable:
        return self.add_weight(
            name=name, shape=shape, initializer=initializer, dtype="float32", autocast=False
        )

    def forward(self, x) -> tuple[Any, Any]:
        """(y, log |det dy/dx|) for x of shape [..., D]."""
        raise NotImplementedError

    def inverse(self, y) -> tuple[Any, Any]:
        """(x, log |det dx/dy|) for y of shape [..., D]: the exact inverse of `forward`."""
        raise NotImplementedError

    def call(self, inputs):
        return self.forward(ops.cast(inputs, "float32"))[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, dtype="float32")


def _reversed(x):
    return ops.flip(x, axis=-1)


def forward(blocks: Sequence[FlowBlock], x) -> tuple[Any, Any]:
    """Applies `blocks` in order: (y, the summed log |det dy/dx|).

    Block k acts on the reversed event axis when k is odd (and the order is restored after
    it), so consecutive coupling blocks transform complementary halves and consecutive
    autoregressive blocks use opposite orderings: a stack of two transforms every
    dimension.

    Example:
        >>> blocks = [kvi.flows.AffineCoupling((8,)), kvi.flows.AffineCoupling((8,))]
        >>> for block in blocks:
        ...     block.build((None, 3))
        >>> y, log_det = kvi.flows.forward(blocks, keras.ops.ones((2, 3)))
        >>> keras.ops.convert_to_numpy(log_det).tolist()  # fresh blocks: the identity
        [0.0, 0.0]
    """
    x = ops.cast(x, "float32")
    log_det = ops.zeros(ops.shape(x)[:-1], "float32")
    for position, block in enumerate(blocks):
        if position % 2:
            x = _reversed(x)
        x, block_log_det = block.forward(x)
        if position % 2:
            x = _reversed(x)
        log_det = log_det + block_log_det
    return x, log_det


def inverse(blocks: Sequence[FlowBlock], y) -> tuple[Any, Any]:
    """Undoes `forward(blocks, .)`: (x, the summed log |det dx/dy|)."""
    y = ops.cast(y, "float32")
    log_det = ops.zeros(ops.shape(y)[:-1], "float32")
    for position in reversed(range(len(blocks))):
        if position % 2:
            y = _reversed(y)
        y, block_log_det = blocks[position].inverse(y)
        if position % 2:
            y = _reversed(y)
        log_det = log_det + block_log_det
    return y, log_det


class FlowDistribution(tfd.Distribution):
    """A base distribution over vectors pushed through flow blocks (`forward`).

    Samples are `forward(blocks, x)` for x drawn from the base, so q is fully reparameterized
    when the base is. `log_prob(y)` always goes through the exact inverse,
    log p_base(inverse(y)) + log |det d inverse / dy|, and is therefore a function of y:
    its gradient with respect to y is right at any point, including samples whose gradient
    was stopped or perturbed (STL, DReG), and there is no cache keyed by the sample.

    Args:
        distribution: the base, a `tfd.Distribution` with event shape [D] (for example a
            diagonal Normal, `tfd.Independent(tfd.Normal(loc, scale), 1)`).
        blocks: built `kvi.flows` blocks for D dimensions, applied in order.
        validate_args: TFP's argument checks (the blocks themselves check nothing more).
        name: the distribution's name.

    Example:
        >>> block = kvi.flows.Planar()
        >>> block.build((None, 2))
        >>> q = kvi.flows.FlowDistribution(tfd.Independent(tfd.Normal([0.0, 0.0], 1.0), 1), [block])
        >>> q.event_shape, round(float(q.log_prob([0.0, 0.0])), 4)  # a fresh block: identity
        (TensorShape([2]), -1.8379)
    """

    def __init__(
        self,
        distribution: tfd.Distribution,
        blocks: Sequence[FlowBlock],
        validate_args: bool = False,
        name: str = "FlowDistribution",
    ):
        parameters = dict(locals())
        self._base = distribution
        self._blocks = tuple(blocks)
        super().__init__(
            dtype=distribution.dtype,
            reparameterization_type=distribution.reparameterization_type,
            validate_args=validate_args,
            allow_nan_stats=True,
            parameters=parameters,
            name=name,
        )

    @property
    def distribution(self) -> tfd.Distribution:
        """The base distribution."""
        return self._base

    @property
    def blocks(self) -> tuple:
        """The flow blocks, in the order they are applied."""
        return self._blocks

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return {}

    def _batch_shape(self):
        return self._base.batch_shape

    def _batch_shape_tensor(self):
        return self._base.batch_shape_tensor()

    def _event_shape(self):
        return self._base.event_shape

    def _event_shape_tensor(self):
        return self._base.event_shape_tensor()

    def _sample_n(self, n, seed=None):
        return forward(self._blocks, self._base.sample(n, seed=seed))[0]

    def _log_prob(self, value):
        x, log_det = inverse(self._blocks, value)
        return ops.cast(self._base.log_prob(x), "float32") + log_det

    def _sample_and_log_prob(self, sample_shape, seed):
        x = self._base.sample(sample_shape, seed=seed)
        y, log_det = forward(self._blocks, x)
        return y, ops.cast(self._base.log_prob(x), "float32") - log_det

    def point(self):
        """The blocks applied to the base's mean: the deterministic point a flow latent
        returns under `prediction="mean"` (not q's mean, which has no closed form)."""
        return forward(self._blocks, self._base.mean())[0]

"""Distribution heads: the model's output (distribution parameters) -> a `tfd.Distribution`.

keras_vi's counterpart of `tfp.layers`' distribution layers (`IndependentNormal`,
`MultivariateNormalTriL`, `MixtureNormal`, `IndependentBernoulli`, `OneHotCategorical`,
`IndependentPoisson`), which need Keras 2. A head is not a layer: it is the `likelihood` of a
`kvi.VariationalModel`. The network ends in a plain `keras.layers.Dense(Head.params_size(...))`
and the model scores the target under `head(output)` in `fit` and `evaluate`:

    outputs = keras.layers.Dense(kvi.heads.MixtureNormal.params_size(3, 1))(h)
    model = kvi.VariationalModel(inputs, outputs, likelihood=kvi.heads.MixtureNormal(3, 1))

Conventions shared by every head:

* The output's last axis holds the parameters (`params_size` of them); every axis before it
  is a batch axis of the distribution, so `head(output).batch_shape` is `(batch,)` for a 2-D
  output and log p(y) is one number per example.
* The target has shape `(batch, *event_shape)` (`(batch,)` of class ids for `Categorical`).
  A target of another shape is a ValueError naming the head and the shape it expected, not a
  broadcast (a target of shape `(batch,)` against an output of `(batch, 1)` would otherwise
  score every target against every example).
* An output whose width is not `params_size` is a ValueError naming the head, the width got
  and the width expected.
* `model.predict(x)` (and `model(x)`) return the raw parameters, as for the named
  likelihoods: build the distribution with `head(params)`, or take its mean with
  `head.mean(params)`. `VariationalModel(..., prediction="mean")` makes `predict` return
  `head(params).mean()` itself.
* Heads are registered Keras objects with `get_config`, so a model using one saves and loads.
* Each head also has `support(y_pred_shape, y)`, the check of target values that keras_vi
  runs for the named likelihoods (e.g. `IndependentBernoulli` wants values in [0, 1]).

Differences from `tfp.layers`: the heads apply no `convert_to_tensor_fn` (a
`VariationalModel` scores the distribution itself; nothing downstream consumes a sample),
and scales are `softplus(raw) + min_scale` (TFP adds nothing, or a hand-written constant).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi.backend import distributions as tfd

__all__ = [
    "DistributionHead",
    "IndependentNormal",
    "MultivariateNormalTriL",
    "MixtureNormal",
    "IndependentBernoulli",
    "OneHotCategorical",
    "Categorical",
    "IndependentPoisson",
]

# Floor added to softplus(raw scale) so a scale never reaches zero (as likelihood="normal").
MIN_SCALE = 1e-5


# ---------------------------------------------------------------------------- argument checks
def _positive_int(value: Any, argument: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: `{argument}` must be a positive integer, got {value!r}.")
    return int(value)


def _event_shape(value: Any, owner: str, argument: str = "event_shape") -> tuple[int, ...]:
    """An int or a sequence of positive ints as a tuple (an int n means `(n,)`)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{owner}: `{argument}` must be a positive integer or a non-empty tuple of positive "
            f"integers, got {value!r}."
        )
    return tuple(_positive_int(d, argument, owner) for d in value)


def _positive_number(value: Any, argument: str, owner: str, allow_zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.floating, np.integer))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: `{argument}` must be a finite number {bound}, got {value!r}.")
    return float(value)


def _static_shape(shape) -> tuple | None:
    try:
        return tuple(shape)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- the distribution
class _CheckedTarget(tfd.Independent):
    """A head's distribution: `tfd.Independent` that refuses a target of the wrong shape.

    TFP broadcasts a value against the distribution's parameters, so a target of shape
    `(batch,)` scored under a distribution with batch shape `(batch,)` and event shape `(1,)`
    gives a `(batch, batch)` table, summed by `Independent` to one plausible wrong number per
    example. This wrapper checks the value's static shape first: its last axes must be the
    event shape, and with exactly batch + event axes (a target, not a stack of samples) its
    leading axes the batch shape.
    """

    def _check(self, x) -> None:
        head = getattr(self, "_head_name", "DistributionHead")
        shape = _static_shape(getattr(x, "shape", None))
        event, batch = _static_shape(self.event_shape), _static_shape(self.batch_shape)
        if shape is None or event is None or batch is None:
            return
        expected = (*batch, *event)
        wrong = len(shape) < len(expected) or any(
            a is not None and b is not None and a != b
            for a, b in zip(shape[len(shape) - len(event) :], event)
        )
        if not wrong and len(shape) == len(expected):
            wrong = any(a is not None and b is not None and a != b for a, b in zip(shape, expected))
        if wrong:
            raise ValueError(
                f"{head}: the target has shape {shape}, expected {expected} (the output's "
                f"batch shape {batch} followed by the event shape {event}). Reshape the target, "
                "e.g. y.reshape(-1, 1) for a head of event shape (1,)."
            )

    def _log_prob(self, x, **kwargs):
        self._check(x)
        return super()._log_prob(x, **kwargs)

    def _prob(self, x, **kwargs):
        self._check(x)
        return ops.exp(super()._log_prob(x, **kwargs))


def _checked(distribution, reinterpreted: int, head: str) -> tfd.Distribution:
    dist = _CheckedTarget(distribution, reinterpreted_batch_ndims=reinterpreted)
    dist._head_name = head
    return dist


# ---------------------------------------------------------------------------- base class
@keras.saving.register_keras_serializable(package="keras_vi")
class DistributionHead:
    """Base class: a callable `y_pred -> tfd.Distribution` for `VariationalModel(likelihood=)`.

    Subclasses set `num_params` (the output width they read) and implement
    `_distribution(params)` on a float32 tensor whose last axis has that width; the base class
    checks the width, wraps the result so a wrongly shaped target raises, and provides
    `mean`, `support` and serialization (`get_config` returns the constructor's arguments).

    Example:
        >>> head = kvi.heads.IndependentNormal(2)
        >>> head.num_params, kvi.heads.IndependentNormal.params_size(2)
        (4, 4)
        >>> dist = head(keras.ops.zeros((5, 4)))
        >>> tuple(dist.batch_shape), tuple(dist.event_shape)
        ((5,), (2,))
    """

    num_params: int = 0
    # The event shape of the distribution, set by subclasses.
    event_shape: tuple[int, ...] = ()

    def __call__(self, y_pred: Any) -> tfd.Distribution:
        params = self._check_params(y_pred)
        dist = self._distribution(params)
        reinterpreted = 0
        if isinstance(dist, tfd.Independent) and not isinstance(dist, _CheckedTarget):
            reinterpreted = dist.reinterpreted_batch_ndims
            dist = dist.distribution
        return _checked(dist, reinterpreted, type(self).__name__)

    @property
    def __name__(self) -> str:  # how VariationalModel names a callable likelihood
        return type(self).__name__

    def _distribution(self, params: Any) -> tfd.Distribution:
        raise NotImplementedError

    def _check_params(self, y_pred: Any) -> Any:
        name = type(self).__name__
        if isinstance(y_pred, (list, tuple, dict)):
            raise ValueError(
                f"{name}: the model must have a single output tensor (the distribution's "
                f"parameters), got a {type(y_pred).__name__}."
            )
        y_pred = ops.convert_to_tensor(y_pred)
        shape = _static_shape(y_pred.shape)
        if shape is not None and len(shape) < 2:
            raise ValueError(
                f"{name}: the output must have a batch axis and a parameter axis, got shape "
                f"{shape}; expected (batch, {self.num_params})."
            )
        width = None if shape is None else shape[-1]
        if width is not None and width != self.num_params:
            raise ValueError(
                f"{name}: the output's last axis has width {width}, expected {self.num_params} "
                f"parameters ({self._params_text()}). End the network with "
                f"keras.layers.Dense({self.num_params})."
            )
        return ops.cast(y_pred, "float32")

    def _params_text(self) -> str:
        return f"{type(self).__name__}.params_size(...)"

    def mean(self, y_pred: Any) -> Any:
        """The mean of `self(y_pred)`: what `VariationalModel(prediction="mean")` returns.

        Args:
            y_pred: the model's raw output (e.g. from `model.predict`).

        Returns:
            A float32 tensor of shape `batch + event_shape`.
        """
        return self(y_pred).mean()

    def support(self, y_pred_shape: tuple, y: Any) -> tuple[Any, str] | None:
        """Which rows of the target lie in the distribution's support (None: not checked).

        The same contract as `keras_vi.likelihoods.support` for the named likelihoods:
        `(ok, expected)`, a boolean tensor with one entry per row and a text for messages.
        """
        del y_pred_shape, y
        return None

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> DistributionHead:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.get_config())))


def _rows(y: Any) -> tuple[Any, int | None] | None:
    """The target as float32 [rows, -1] (None for strings or a scalar target)."""
    y = ops.convert_to_tensor(y)
    if keras.backend.standardize_dtype(y.dtype) == "string" or not len(y.shape):
        return None
    y = ops.cast(y, "float32")
    return ops.reshape(y, (ops.shape(y)[0], -1)), y


def _support(y: Any, condition, expected: str) -> tuple[Any, str] | None:
    rows = _rows(y)
    if rows is None:
        return None
    flat = rows[0]
    nonfinite = ops.logical_not(ops.isfinite(flat))  # the non-finite checks' business
    return ops.all(condition(flat) | nonfinite, axis=1), expected


# ---------------------------------------------------------------------------- heads
@keras.saving.register_keras_serializable(package="keras_vi")
class IndependentNormal(DistributionHead):
    """Independent normals over `event_shape`: loc and softplus scale from the output.

    Parameters (last axis): `prod(event_shape)` locs, then `prod(event_shape)` raw scales,
    each reshaped to `event_shape`; scale = `softplus(raw_scale_factor * raw) + min_scale`.
    With a fixed `scale` the output holds only the locs (TFP's tutorial "case 1", a normal
    with learned mean).

    Args:
        event_shape: the target's shape per example: an int or a tuple of ints.
        scale: None (learned, from the output) or a fixed standard deviation > 0.
        min_scale: added to the softplus (>= 0; default 1e-5).
        raw_scale_factor: multiplies the raw scale before the softplus (> 0; default 1).
            TFP's regression tutorial writes `1e-3 + softplus(0.05 * t)`, i.e.
            `min_scale=1e-3, raw_scale_factor=0.05`.

    Example:
        >>> kvi.heads.IndependentNormal.params_size(3), kvi.heads.IndependentNormal.params_size(
        ...     3, scale=1.0)
        (6, 3)
        >>> head = kvi.heads.IndependentNormal(1)
        >>> params = np.array([[2.0, 0.0]], "float32")  # loc 2, scale softplus(0) + 1e-5
        >>> round(float(head(params).log_prob(np.array([[2.0]], "float32"))[0]), 4)
        -0.5524
    """

    def __init__(
        self,
        event_shape: int | tuple[int, ...] = 1,
        scale: float | None = None,
        min_scale: float = MIN_SCALE,
        raw_scale_factor: float = 1.0,
    ):
        owner = type(self).__name__
        self.event_shape = _event_shape(event_shape, owner)
        self.scale = None if scale is None else _positive_number(scale, "scale", owner)
        self.min_scale = _positive_number(min_scale, "min_scale", owner, allow_zero=True)
        self.raw_scale_factor = _positive_number(raw_scale_factor, "raw_scale_factor", owner)
        self.num_params = self.params_size(self.event_shape, scale=self.scale)

    @classmethod
    def params_size(cls, event_shape: int | tuple[int, ...] = 1, scale: float | None = None) -> int:
        """The output width: 2 * prod(event_shape), or prod(event_shape) with a fixed scale."""
        n = math.prod(_event_shape(event_shape, cls.__name__))
        return n if scale is not None else 2 * n

    def _distribution(self, params):
        n = math.prod(self.event_shape)
        batch = tuple(ops.shape(params)[:-1])
        loc = ops.reshape(params[..., :n], (*batch, *self.event_shape))
        if self.scale is not None:
            scale = ops.full(ops.shape(loc), self.scale, "float32")
        else:
            raw = ops.reshape(params[..., n:], (*batch, *self.event_shape))
            scale = ops.softplus(self.raw_scale_factor * raw) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), len(self.event_shape))

    def _params_text(self) -> str:
        n = math.prod(self.event_shape)
        if self.scale is not None:
            return f"{n} locs; IndependentNormal.params_size({self.event_shape}, scale=...)"
        return f"{n} locs and {n} raw scales; IndependentNormal.params_size({self.event_shape})"

    def get_config(self) -> dict:
        return {
            "event_shape": list(self.event_shape),
            "scale": self.scale,
            "min_scale": self.min_scale,
            "raw_scale_factor": self.raw_scale_factor,
        }


@keras.saving.register_keras_serializable(package="keras_vi")
class MultivariateNormalTriL(DistributionHead):
    """A full-covariance normal over a vector: loc and a lower-triangular scale matrix.

    Parameters (last axis): `event_size` locs, then the `event_size * (event_size + 1) / 2`
    entries of the lower triangle of the scale matrix L, row by row (L[0,0], L[1,0], L[1,1],
    L[2,0], ...). The diagonal goes through `softplus(.) + min_scale`, so L is a valid
    Cholesky factor; the covariance is L Lᵀ.

    Args:
        event_size: the dimension of the target vector.
        min_scale: added to the softplus of the diagonal (>= 0; default 1e-5).

    Example:
        >>> kvi.heads.MultivariateNormalTriL.params_size(3)  # 3 locs + 6 triangle entries
        9
        >>> head = kvi.heads.MultivariateNormalTriL(2)
        >>> dist = head(keras.ops.zeros((4, 5)))
        >>> tuple(dist.batch_shape), tuple(dist.event_shape)
        ((4,), (2,))
    """

    def __init__(self, event_size: int, min_scale: float = MIN_SCALE):
        owner = type(self).__name__
        self.event_size = _positive_int(event_size, "event_size", owner)
        self.event_shape = (self.event_size,)
        self.min_scale = _positive_number(min_scale, "min_scale", owner, allow_zero=True)
        self.num_params = self.params_size(self.event_size)
        n = self.event_size
        # Index of each matrix entry in [triangle entries..., 0]: row-major lower triangle.
        index = np.full((n, n), n * (n + 1) // 2, "int32")
        rows, cols = np.tril_indices(n)
        index[rows, cols] = np.arange(len(rows))
        self._tril_index = index.reshape(-1)

    @classmethod
    def params_size(cls, event_size: int) -> int:
        """The output width: event_size + event_size * (event_size + 1) / 2."""
        n = _positive_int(event_size, "event_size", cls.__name__)
        return n + n * (n + 1) // 2

    def _distribution(self, params):
        n = self.event_size
        batch = tuple(ops.shape(params)[:-1])
        loc = params[..., :n]
        entries = params[..., n:]
        padded = ops.concatenate([entries, ops.zeros_like(entries[..., :1])], axis=-1)
        matrix = ops.reshape(ops.take(padded, self._tril_index, axis=-1), (*batch, n, n))
        eye = ops.eye(n, dtype="bool")
        scale_tril = ops.where(eye, ops.softplus(matrix) + self.min_scale, matrix)
        return tfd.MultivariateNormalTriL(loc=loc, scale_tril=scale_tril)

    def _params_text(self) -> str:
        n = self.event_size
        return f"{n} locs and {n * (n + 1) // 2} scale entries"

    def get_config(self) -> dict:
        return {"event_size": self.event_size, "min_scale": self.min_scale}


@keras.saving.register_keras_serializable(package="keras_vi")
class MixtureNormal(DistributionHead):
    """A mixture of `num_components` independent normals: a mixture density network.

    Parameters (last axis): `num_components` mixture logits, then for each component
    `prod(event_shape)` locs followed by `prod(event_shape)` raw scales (the layout of
    `tfp.layers.MixtureNormal`); scale = `softplus(raw) + min_scale`.

    Args:
        num_components: the number of mixture components (>= 1).
        event_shape: the target's shape per example: an int or a tuple of ints.
        min_scale: added to the softplus (>= 0; default 1e-5).

    Example:
        >>> kvi.heads.MixtureNormal.params_size(3, 1)  # 3 logits + 3 * (loc, scale)
        9
        >>> head = kvi.heads.MixtureNormal(2)
        >>> params = np.array([[0.0, 0.0, -1.0, 0.5413, 1.0, 0.5413]], "float32")
        >>> keras.ops.convert_to_numpy(head.mean(params)).round(3)  # equal weights: mean 0
        array([[0.]], dtype=float32)
    """

    def __init__(
        self,
        num_components: int,
        event_shape: int | tuple[int, ...] = 1,
        min_scale: float = MIN_SCALE,
    ):
        owner = type(self).__name__
        self.num_components = _positive_int(num_components, "num_components", owner)
        self.event_shape = _event_shape(event_shape, owner)
        self.min_scale = _positive_number(min_scale, "min_scale", owner, allow_zero=True)
        self.num_params = self.params_size(self.num_components, self.event_shape)

    @classmethod
    def params_size(cls, num_components: int, event_shape: int | tuple[int, ...] = 1) -> int:
        """The output width: num_components * (1 + 2 * prod(event_shape))."""
        k = _positive_int(num_components, "num_components", cls.__name__)
        n = math.prod(_event_shape(event_shape, cls.__name__))
        return k + k * 2 * n

    def _distribution(self, params):
        k, n = self.num_components, math.prod(self.event_shape)
        batch = tuple(ops.shape(params)[:-1])
        logits = params[..., :k]
        components = ops.reshape(params[..., k:], (*batch, k, 2 * n))
        loc = ops.reshape(components[..., :n], (*batch, k, *self.event_shape))
        raw = ops.reshape(components[..., n:], (*batch, k, *self.event_shape))
        normal = tfd.Independent(
            tfd.Normal(loc, ops.softplus(raw) + self.min_scale), len(self.event_shape)
        )
        return tfd.MixtureSameFamily(tfd.Categorical(logits=logits), normal)

    def _params_text(self) -> str:
        k, n = self.num_components, math.prod(self.event_shape)
        return f"{k} logits and {k} x ({n} locs, {n} raw scales)"

    def get_config(self) -> dict:
        return {
            "num_components": self.num_components,
            "event_shape": list(self.event_shape),
            "min_scale": self.min_scale,
        }


class _ElementwiseHead(DistributionHead):
    """Independent scalar distributions over `event_shape`, one parameter per element."""

    def __init__(self, event_shape: int | tuple[int, ...] = 1):
        self.event_shape = _event_shape(event_shape, type(self).__name__)
        self.num_params = self.params_size(self.event_shape)

    @classmethod
    def params_size(cls, event_shape: int | tuple[int, ...] = 1) -> int:
        """The output width: prod(event_shape), one parameter per element."""
        return math.prod(_event_shape(event_shape, cls.__name__))

    def _element(self, params):
        """The scalar distributions for parameters shaped [batch, *event_shape]."""
        raise NotImplementedError

    def _distribution(self, params):
        batch = tuple(ops.shape(params)[:-1])
        element = self._element(ops.reshape(params, (*batch, *self.event_shape)))
        return tfd.Independent(element, len(self.event_shape))

    def get_config(self) -> dict:
        return {"event_shape": list(self.event_shape)}


@keras.saving.register_keras_serializable(package="keras_vi")
class IndependentBernoulli(_ElementwiseHead):
    """Independent Bernoullis over `event_shape`, one logit per element (float32 samples).

    Args:
        event_shape: the target's shape per example: an int or a tuple of ints.

    Example:
        >>> head = kvi.heads.IndependentBernoulli(3)
        >>> keras.ops.convert_to_numpy(head.mean(np.zeros((1, 3), "float32")))
        array([[0.5, 0.5, 0.5]], dtype=float32)
    """

    def _element(self, logits):
        return tfd.Bernoulli(logits=logits, dtype="float32")

    def support(self, y_pred_shape, y):
        return _support(y, lambda v: (v >= 0.0) & (v <= 1.0), "values in [0, 1]")


@keras.saving.register_keras_serializable(package="keras_vi")
class OneHotCategorical(DistributionHead):
    """A categorical over `event_size` classes with one-hot targets (float32).

    Args:
        event_size: the number of classes.

    Example:
        >>> head = kvi.heads.OneHotCategorical(3)
        >>> logits = np.log(np.array([[0.2, 0.3, 0.5]], "float32"))
        >>> keras.ops.convert_to_numpy(head.mean(logits)).round(2)
        array([[0.2, 0.3, 0.5]], dtype=float32)
    """

    def __init__(self, event_size: int):
        self.event_size = _positive_int(event_size, "event_size", type(self).__name__)
        self.event_shape = (self.event_size,)
        self.num_params = self.params_size(self.event_size)

    @classmethod
    def params_size(cls, event_size: int) -> int:
        """The output width: event_size logits."""
        return _positive_int(event_size, "event_size", cls.__name__)

    def _distribution(self, params):
        return tfd.OneHotCategorical(logits=params, dtype="float32")

    def support(self, y_pred_shape, y):
        rows = _rows(y)
        if rows is None:
            return None
        y = rows[1]
        in_range = ops.all((y >= 0.0) & (y <= 1.0), axis=-1)
        sums_to_one = ops.abs(ops.sum(y, axis=-1) - 1.0) < 1e-3
        ok = ops.reshape(in_range & sums_to_one, (ops.shape(y)[0], -1))
        nonfinite = ops.any(ops.logical_not(ops.isfinite(rows[0])), axis=1, keepdims=True)
        return ops.all(ok | nonfinite, axis=1), "one-hot rows (values in [0, 1] summing to 1)"

    def get_config(self) -> dict:
        return {"event_size": self.event_size}


@keras.saving.register_keras_serializable(package="keras_vi")
class Categorical(DistributionHead):
    """A categorical over `num_classes` classes with integer class-id targets.

    The target has shape `(batch,)` (one id per example, no trailing axis of 1). TFP's
    `Categorical` has no `mean`, so `VariationalModel(prediction="mean")` refuses this head;
    `head.mean(params)` returns the class probabilities (the mean of the one-hot encoding).

    Args:
        num_classes: the number of classes.

    Example:
        >>> head = kvi.heads.Categorical(3)
        >>> logits = np.log(np.array([[0.2, 0.3, 0.5]], "float32"))
        >>> round(float(head(logits).log_prob(np.array([2]))[0]), 4)  # log 0.5
        -0.6931
    """

    def __init__(self, num_classes: int):
        self.num_classes = _positive_int(num_classes, "num_classes", type(self).__name__)
        self.event_shape = ()
        self.num_params = self.params_size(self.num_classes)

    @classmethod
    def params_size(cls, num_classes: int) -> int:
        """The output width: num_classes logits."""
        return _positive_int(num_classes, "num_classes", cls.__name__)

    def _distribution(self, params):
        return tfd.Categorical(logits=params)

    def mean(self, y_pred: Any) -> Any:
        """The class probabilities, softmax of the logits (shape `(batch, num_classes)`)."""
        return ops.softmax(self._check_params(y_pred), axis=-1)

    def support(self, y_pred_shape, y):
        classes = self.num_classes
        return _support(
            y,
            lambda v: (v >= 0.0) & (v < float(classes)) & ops.equal(v, ops.round(v)),
            f"integer class ids in [0, {classes - 1}]",
        )

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="keras_vi")
class IndependentPoisson(_ElementwiseHead):
    """Independent Poissons over `event_shape`, one log-rate per element.

    Args:
        event_shape: the target's shape per example: an int or a tuple of ints.

    Example:
        >>> head = kvi.heads.IndependentPoisson(1)
        >>> keras.ops.convert_to_numpy(head.mean(np.log(np.array([[3.0]], "float32"))))
        array([[3.]], dtype=float32)
    """

    def _element(self, log_rate):
        return tfd.Poisson(log_rate=log_rate)

    def support(self, y_pred_shape, y):
        return _support(
            y, lambda v: (v >= 0.0) & ops.equal(v, ops.round(v)), "non-negative integer counts"
        )

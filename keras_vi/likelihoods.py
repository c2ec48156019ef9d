"""Likelihoods: how the model's output scores the target."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

LIKELIHOODS = ("bernoulli", "normal", "categorical", "poisson")


def check(likelihood) -> str | Callable | None:
    if likelihood is None or callable(likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood in LIKELIHOODS:
        return likelihood
    raise ValueError(
        f"Unknown `likelihood` {likelihood!r}; expected one of {LIKELIHOODS}, a callable "
        "y_pred -> tfd.Distribution, or None to use the compiled Keras loss."
    )


def _shape_error(likelihood, y_pred, y, expected) -> ValueError:
    return ValueError(
        f"likelihood={likelihood!r}: the target's shape {tuple(y.shape)} does not match the "
        f"model output's shape {tuple(y_pred.shape)}; expected a target of shape {expected}."
    )


def _same_shape(likelihood, y_pred, y):
    if y.shape.rank is not None and y_pred.shape.rank is not None:
        if y.shape.rank != y_pred.shape.rank or not y.shape[1:].is_compatible_with(
            y_pred.shape[1:]
        ):
            raise _shape_error(likelihood, y_pred, y, tuple(y_pred.shape))


def _float_target(y, likelihood):
    if y.dtype == tf.string:
        raise ValueError(f"likelihood={likelihood!r}: the target must be numeric, got strings.")
    return tf.cast(y, tf.float32)


def distribution(likelihood, y_pred, y) -> tuple[tfd.Distribution, tf.Tensor]:
    """Returns (distribution over the target, the target cast for its log_prob)."""
    y = tf.convert_to_tensor(y)
    if callable(likelihood):
        dist = likelihood(y_pred)
        if not isinstance(dist, tfd.Distribution):
            raise ValueError(
                "A callable `likelihood` must return a tfd.Distribution, got "
                f"{type(dist).__name__}."
            )
        return dist, tf.cast(y, dist.dtype)
    y_pred = tf.cast(y_pred, tf.float32)
    if likelihood == "bernoulli":
        _same_shape(likelihood, y_pred, y)
        return tfd.Bernoulli(logits=y_pred, dtype=tf.float32), _float_target(y, likelihood)
    if likelihood == "poisson":
        _same_shape(likelihood, y_pred, y)
        return tfd.Poisson(log_rate=y_pred), _float_target(y, likelihood)
    if likelihood == "normal":
        y = _float_target(y, likelihood)
        if y.shape.rank == y_pred.shape.rank and y.shape[-1] is not None:
            width, out = y.shape[-1], y_pred.shape[-1]
            if out == 2 * width and width != out:
                loc, raw_scale = tf.split(y_pred, 2, axis=-1)
                _same_shape(likelihood, loc, y)
                return tfd.Normal(loc, tf.nn.softplus(raw_scale) + 1e-5), y
        _same_shape(likelihood, y_pred, y)
        return tfd.Normal(y_pred, 1.0), y
    if likelihood == "categorical":
        same_rank = y.shape.rank is not None and y.shape.rank == y_pred.shape.rank
        if same_rank and y.shape[-1] == 1 and y_pred.shape[-1] != 1:
            y = tf.squeeze(y, -1)  # class ids with a trailing axis of 1
        elif same_rank:
            _same_shape(likelihood, y_pred, y)  # one-hot targets
            one_hot = tfd.OneHotCategorical(logits=y_pred, dtype=tf.float32)
            return one_hot, _float_target(y, likelihood)
        if y.shape.rank is not None and y.shape.rank != y_pred.shape.rank - 1:
            raise _shape_error(likelihood, y_pred, y, f"{tuple(y_pred.shape[:-1])} (class ids)")
        if y.dtype.is_floating:
            y = tf.cast(y, tf.int32)
        return tfd.Categorical(logits=y_pred), y
    raise ValueError(f"Unknown `likelihood` {likelihood!r}.")


def log_prob(likelihood, y_pred, y) -> tf.Tensor:
    """Per-example log-likelihood, summed over every axis but the first."""
    dist, target = distribution(likelihood, y_pred, y)
    lp = dist.log_prob(target)
    if lp.shape.rank is not None and lp.shape.rank > 1:
        lp = tf.reduce_sum(lp, axis=list(range(1, lp.shape.rank)))
    return lp


def keras_loss_nll(loss, y_pred, y) -> tf.Tensor:
    """Per-example negative log-likelihood from a compiled Keras loss (summed over axes > 0)."""
    fn = keras.losses.get(loss) if not isinstance(loss, keras.losses.Loss) else loss
    per_example = fn.call(y, y_pred) if isinstance(fn, keras.losses.Loss) else fn(y, y_pred)
    per_example = tf.cast(per_example, tf.float32)
    if per_example.shape.rank is not None and per_example.shape.rank > 1:
        per_example = tf.reduce_sum(per_example, axis=list(range(1, per_example.shape.rank)))
    return per_example

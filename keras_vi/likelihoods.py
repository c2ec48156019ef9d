"""Likelihoods: how the model's output scores the target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_vi.backend import distributions as tfd

LIKELIHOODS = ("bernoulli", "normal", "categorical", "poisson")
_BERNOULLI_SUPPORT = "values in [0, 1]"


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


def _static_shape(shape) -> tuple | None:
    """A static shape (a TensorShape or a tuple) as a tuple, None when its rank is unknown."""
    try:
        return tuple(shape)
    except ValueError:
        return None


def _rank(x) -> int | None:
    shape = _static_shape(x.shape)
    return None if shape is None else len(shape)


def _compatible(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(i is None or j is None or i == j for i, j in zip(a, b))


def _is_string(x) -> bool:
    return keras.backend.standardize_dtype(x.dtype) == "string"


def _same_shape(likelihood, y_pred, y):
    y_shape, out_shape = _static_shape(y.shape), _static_shape(y_pred.shape)
    if y_shape is not None and out_shape is not None:
        if len(y_shape) != len(out_shape) or not _compatible(y_shape[1:], out_shape[1:]):
            raise _shape_error(likelihood, y_pred, y, tuple(y_pred.shape))


def _float_target(y, likelihood):
    if _is_string(y):
        raise ValueError(f"likelihood={likelihood!r}: the target must be numeric, got strings.")
    return ops.cast(y, "float32")


def call_likelihood(likelihood, y_pred) -> tfd.Distribution:
    """The distribution a callable `likelihood` gives for the model's output (checked)."""
    dist = likelihood(y_pred)
    if not isinstance(dist, tfd.Distribution):
        raise ValueError(
            f"A callable `likelihood` must return a tfd.Distribution, got {type(dist).__name__}."
        )
    return dist


def distribution(likelihood, y_pred, y) -> tuple[tfd.Distribution, Any]:
    """Returns (distribution over the target, the target cast for its log_prob)."""
    y = ops.convert_to_tensor(y)
    if callable(likelihood):
        dist = call_likelihood(likelihood, y_pred)
        return dist, ops.cast(y, dist.dtype)
    y_pred = ops.cast(y_pred, "float32")
    if likelihood == "bernoulli":
        logits, target = _bernoulli_operands(y_pred, y)
        return tfd.Bernoulli(logits=logits, dtype="float32"), target
    if likelihood == "poisson":
        _same_shape(likelihood, y_pred, y)
        return tfd.Poisson(log_rate=y_pred), _float_target(y, likelihood)
    if likelihood == "normal":
        y = _float_target(y, likelihood)
        rank = _rank(y)
        if rank is not None and rank == _rank(y_pred) and rank > 0 and y.shape[-1] is not None:
            width, out = y.shape[-1], y_pred.shape[-1]
            if out == 2 * width and width != out:
                loc, raw_scale = ops.split(y_pred, 2, axis=-1)
                _same_shape(likelihood, loc, y)
                return tfd.Normal(loc, ops.softplus(raw_scale) + 1e-5), y
        _same_shape(likelihood, y_pred, y)
        return tfd.Normal(y_pred, 1.0), y
    if likelihood == "categorical":
        rank, out_rank = _rank(y), _rank(y_pred)
        same_rank = rank is not None and rank == out_rank
        if same_rank and y.shape[-1] == 1 and y_pred.shape[-1] != 1:
            y = ops.squeeze(y, -1)  # class ids with a trailing axis of 1
            rank -= 1
        elif same_rank:
            _same_shape(likelihood, y_pred, y)  # one-hot targets
            one_hot = tfd.OneHotCategorical(logits=y_pred, dtype="float32")
            return one_hot, _float_target(y, likelihood)
        if rank is not None and rank != out_rank - 1:
            raise _shape_error(likelihood, y_pred, y, f"{tuple(y_pred.shape[:-1])} (class ids)")
        if "float" in keras.backend.standardize_dtype(y.dtype):
            y = ops.cast(y, "int32")
        return tfd.Categorical(logits=y_pred), y
    raise ValueError(f"Unknown `likelihood` {likelihood!r}.")


def _check_per_example(likelihood, scored_by: str, batch_shape, lp, y, rows) -> None:
    """Raises when log p(y) is not one value per example (a broadcast or a summed batch).

    `lp` is the log-probability before event axes are summed, and `scored_by` names what gave
    it (a distribution and its shapes). Its shape must be the distribution's `batch_shape`:
    anything larger means the target broadcast against the output (a target of shape (B,)
    against an output of shape (B, 1) scores every target against every output), and a batch
    shape without the example axis means one value for the whole batch.
    """
    name = (
        likelihood if isinstance(likelihood, str) else getattr(likelihood, "__name__", "callable")
    )
    where = (
        f"likelihood={name!r}: the log-probability of the target (shape {tuple(y.shape)}) under "
        f"{scored_by}"
    )
    lp_shape, batch = _static_shape(lp.shape), _static_shape(batch_shape)
    if lp_shape is None or batch is None:
        return
    if not lp_shape or not batch:
        raise ValueError(
            f"{where} is a single number, expected one value per example ({rows} rows). The "
            "distribution must keep the batch axis as a batch dimension: do not reinterpret it "
            "as an event axis (e.g. tfd.Independent(..., reinterpreted_batch_ndims) must leave "
            "the first axis out)."
        )
    broadcast = len(lp_shape) != len(batch) or any(
        b is not None and d != b for d, b in zip(lp_shape, batch)
    )
    if broadcast:
        raise ValueError(
            f"{where} has shape {lp_shape}: the target broadcast against the model "
            f"output instead of matching it. Give the target the output's batch shape "
            f"{batch} (e.g. y.reshape(-1, 1) for an output of width 1)."
        )
    if rows is not None and lp_shape[0] is not None and lp_shape[0] != rows:
        raise ValueError(f"{where} has {lp_shape[0]} rows, expected one per example ({rows}).")


def log_prob(likelihood, y_pred, y) -> Any:
    """Per-example log-likelihood, summed over every axis but the first.

    Raises a ValueError when the target does not give exactly one value per example (see
    `_check_per_example`), for named and callable likelihoods alike.
    """
    first = _static_shape(tree.flatten(y_pred)[0].shape)
    rows = first[0] if first else None
    if likelihood == "bernoulli":
        logits, target = _bernoulli_operands(y_pred, y)
        lp = target * logits - ops.softplus(logits)
        scored_by = f"Bernoulli(batch_shape={logits.shape}, event_shape=())"
        _check_per_example(likelihood, scored_by, logits.shape, lp, target, rows)
        return _sum_but_first(lp)
    dist, target = distribution(likelihood, y_pred, y)
    lp = dist.log_prob(target)
    scored_by = (
        f"{type(dist).__name__}(batch_shape={dist.batch_shape}, event_shape={dist.event_shape})"
    )
    _check_per_example(likelihood, scored_by, dist.batch_shape, lp, target, rows)
    return _sum_but_first(lp)


def _bernoulli_operands(y_pred, y):
    """(logits, target) for `"bernoulli"`, checked and cast as `distribution` does.

    `log_prob` scores them as y * logits - softplus(logits), which is TFP's
    `Bernoulli(logits).log_prob(y)` written with one softplus instead of two softplus and two
    guarded products (about 5% of the op time of a VAE step run op by op).
    """
    y = ops.convert_to_tensor(y)
    logits = ops.cast(y_pred, "float32")
    _same_shape("bernoulli", logits, y)
    return logits, _float_target(y, "bernoulli")


def _sum_but_first(values):
    rank = _rank(values)
    if rank is not None and rank > 1:
        values = ops.sum(values, axis=tuple(range(1, rank)))
    return values


def support(likelihood, y_pred_shape, y) -> tuple[Any, str] | None:
    """Which rows of the target lie in the likelihood's support, where that is cheap and certain.

    Args:
        likelihood: a named likelihood, or a callable with a `support(y_pred_shape, y)` method
            (the heads of `kvi.heads`); other callables and compiled losses are not checked.
        y_pred_shape: the model output's shape (decides class ids vs one-hot targets).
        y: the target.

    Returns:
        None when nothing is checked, else `(ok, expected)`: a boolean tensor with one entry
        per row and a text describing the support.
    """
    if callable(getattr(likelihood, "support", None)):
        return likelihood.support(y_pred_shape, y)
    if not isinstance(likelihood, str) or likelihood == "normal":
        return None
    y = ops.convert_to_tensor(y)
    y_rank = _rank(y)
    if _is_string(y) or not y_rank:
        return None
    y = ops.cast(y, "float32")
    flat = ops.reshape(y, (ops.shape(y)[0], -1))
    # NaN/Inf are the non-finite checks' business (a skipped step naming the likelihood).
    nonfinite = ops.logical_not(ops.isfinite(flat))
    integer = ops.equal(flat, ops.round(flat))
    if likelihood == "bernoulli":
        ok, expected = (flat >= 0.0) & (flat <= 1.0), _BERNOULLI_SUPPORT
    elif likelihood == "poisson":
        ok, expected = (flat >= 0.0) & integer, "non-negative integer counts"
    else:
        rank = len(y_pred_shape)
        classes = y_pred_shape[-1]
        ids = y_rank == rank - 1 or (y_rank == rank and y.shape[-1] == 1 and classes != 1)
        if ids:
            ok = (flat >= 0.0) & integer
            expected = "integer class ids >= 0"
            if classes is not None:
                ok &= flat < float(classes)
                expected = f"integer class ids in [0, {classes - 1}]"
        else:
            in_range = ops.all((y >= 0.0) & (y <= 1.0), axis=-1)
            sums_to_one = ops.abs(ops.sum(y, axis=-1) - 1.0) < 1e-3
            ok = ops.reshape(in_range & sums_to_one, (ops.shape(y)[0], -1))
            expected = "one-hot rows (values in [0, 1] summing to 1)"
            nonfinite = ops.any(nonfinite, axis=1, keepdims=True)
    return ops.all(ok | nonfinite, axis=1), expected


def batch_in_support(likelihood, y_pred_shape, y) -> tuple[Any, str] | None:
    """`support` for a training step: one flag for the whole batch (same None and text).

    For `"bernoulli"` it takes the batch's minimum and maximum (two reductions) instead of
    five elementwise passes, a few percent of a VAE step run op by op. A batch holding a NaN
    or an infinity may then go unflagged whatever its other values, where `support` flags a
    row with a finite value outside [0, 1]; such a batch is skipped as non-finite either way
    (its log-likelihood is not finite).
    """
    if likelihood == "bernoulli" and not _is_string(ops.convert_to_tensor(y)):
        y = ops.cast(y, "float32")
        if _rank(y):
            low, high = ops.min(y, initial=np.inf), ops.max(y, initial=-np.inf)  # 0 rows
            # An infinite extreme (or a NaN one: comparisons with NaN are false) is the
            # non-finite checks' business, as in `support`.
            below = (low < 0.0) & (low > -np.inf)
            above = (high > 1.0) & (high < np.inf)
            return ops.logical_not(below | above), _BERNOULLI_SUPPORT
    checked = support(likelihood, y_pred_shape, y)
    if checked is None:
        return None
    return ops.all(checked[0]), checked[1]


def keras_loss_nll(loss, y_pred, y) -> Any:
    """Per-example negative log-likelihood from a compiled Keras loss (summed over axes > 0)."""
    fn = keras.losses.get(loss) if not isinstance(loss, keras.losses.Loss) else loss
    per_example = fn.call(y, y_pred) if isinstance(fn, keras.losses.Loss) else fn(y, y_pred)
    return _sum_but_first(ops.cast(per_example, "float32"))

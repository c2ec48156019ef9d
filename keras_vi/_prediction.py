"""What a `VariationalModel` returns outside training: a random draw or a deterministic mean.

With `VariationalModel(prediction="mean")`, a call of the model outside a training or
evaluation step (`model(x)`, `predict`, the `serve` function of `model.export`) runs inside
`mode("mean")`. There, every `Latent` layer returns a point of q instead of a draw
(`point_estimate`), every Bayesian layer uses its posterior-mean weights (its noise is zero),
and the model maps its output through the likelihood's mean (`likelihood_mean`).

The switch is thread-local (the replicas of a mirrored distribution strategy run in threads) and
read at trace time, and it never applies inside a step scope (`keras_vi._scope`), so training,
evaluation and the objective-based tools always sample.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from keras import ops, tree

from keras_vi import _scope, likelihoods
from keras_vi.backend import distributions as tfd

PREDICTIONS = ("sample", "mean")

_state = threading.local()


def check(prediction: Any) -> str:
    """Returns `prediction` if it is one of `PREDICTIONS`, else raises a ValueError.

    Example:
        >>> check("mean")
        'mean'
    """
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")
    return prediction


def current_mode() -> str | None:
    """The mode set by the innermost `mode(...)` context in this thread, or None."""
    return getattr(_state, "mode", None)


@contextlib.contextmanager
def mode(value: str):
    """Within this context (at trace time), stochastic layers follow `value`.

    `"mean"` makes them deterministic outside step scopes; `"sample"` makes them draw, and
    also stops a `VariationalModel` called inside from switching to its own `"mean"` mode
    (used by `kvi.predict_samples`, which must sample whatever the model's setting).

    Example:
        >>> with mode("mean"):
        ...     point_estimates()
        True
    """
    previous = current_mode()
    _state.mode = check(value)
    try:
        yield
    finally:
        _state.mode = previous


def sampling():
    """A context in which every stochastic layer draws, whatever a model's `prediction` is.

    Example:
        >>> with sampling():
        ...     point_estimates()
        False
    """
    return mode("sample")


def point_estimates() -> bool:
    """Whether stochastic layers should return deterministic values in this call."""
    return current_mode() == "mean" and _scope.current_scope() is None


def point_estimate(q: tfd.Distribution, owner: str = "Latent") -> Any:
    """A deterministic stand-in for a draw from q.

    The mean of a fully reparameterized q (a Gaussian's loc) and the mode of any other q
    (a Bernoulli's 1 where the logit is positive, a one-hot categorical's argmax). Where TFP
    has no closed form, the point is computed through the wrapper: a flow (a
    `TransformedDistribution`) gives the bijector applied to its base distribution's point,
    and a Concrete (`ExpRelaxedOneHotCategorical`) q gives the noise-free log-space point
    `log_softmax(logits / temperature)`.

    Args:
        q: the distribution a `Latent` layer would sample from.
        owner: the layer's description for error messages.

    Returns:
        A tensor of q's sample shape for one draw.

    Example:
        >>> q = tfd.Independent(tfd.Bernoulli(logits=[[2.0, -1.0]], dtype="float32"), 1)
        >>> keras.ops.convert_to_numpy(point_estimate(q))
        array([[1., 0.]], dtype=float32)
    """
    reparameterized = q.reparameterization_type == tfd.FULLY_REPARAMETERIZED
    try:
        return q.mean() if reparameterized else q.mode()
    except NotImplementedError:
        pass
    if isinstance(q, tfd.Independent):
        return point_estimate(q.distribution, owner)
    if isinstance(q, tfd.TransformedDistribution):
        return q.bijector.forward(point_estimate(q.distribution, owner))
    if isinstance(q, tfd.ExpRelaxedOneHotCategorical):
        return ops.log_softmax(q.logits_parameter() / q.temperature, axis=-1)
    raise ValueError(
        f"{owner}: prediction='mean' needs the {'mean' if reparameterized else 'mode'} of q, "
        f"which {type(q).__name__} does not implement. Use prediction='sample' (and "
        "kvi.predict_samples for averages), or a q with a closed-form "
        f"{'mean' if reparameterized else 'mode'}."
    )


def _input_width(inputs: Any) -> int | None:
    leaves = tree.flatten(inputs)
    if len(leaves) != 1 or getattr(leaves[0], "shape", None) is None:
        return None
    shape = leaves[0].shape
    return None if len(shape) == 0 or shape[-1] is None else int(shape[-1])


def likelihood_mean(likelihood: Any, y_pred: Any, inputs: Any = None) -> Any:
    """The mean of the likelihood p(y | output) that a `VariationalModel` scores against.

    `"bernoulli"`: sigmoid of the logits; `"categorical"`: softmax of the logits;
    `"poisson"`: exp of the log-rate; `"normal"`: the loc (for an output of [loc, raw scale],
    twice as wide as the target, its first half); a callable: `likelihood(y_pred).mean()`;
    None (a compiled Keras loss): `y_pred` unchanged, since there is no distribution.

    Args:
        likelihood: the model's `likelihood`.
        y_pred: the model's output.
        inputs: the model's inputs. Only `"normal"` uses them: training tells loc from
            [loc, raw scale] by the target's width, and predict has no target, so the input
            stands in for it (exact for unsupervised models, whose target is the input).

    Returns:
        The mean, float32 for the named likelihoods.

    Example:
        >>> mean = likelihood_mean("bernoulli", np.array([[0.0, 2.0]]))
        >>> keras.ops.convert_to_numpy(mean).round(3)
        array([[0.5  , 0.881]], dtype=float32)
    """
    if likelihood is None:
        return y_pred
    if callable(likelihood):
        dist = likelihoods.call_likelihood(likelihood, y_pred)
        try:
            return dist.mean()
        except NotImplementedError as error:
            raise ValueError(
                f"prediction='mean' needs the mean of the likelihood's {type(dist).__name__}, "
                "which it does not implement. Use prediction='sample'."
            ) from error
    y_pred = ops.cast(y_pred, "float32")
    if likelihood == "bernoulli":
        return ops.sigmoid(y_pred)
    if likelihood == "categorical":
        return ops.softmax(y_pred, axis=-1)
    if likelihood == "poisson":
        return ops.exp(y_pred)
    if likelihood == "normal":
        return _normal_loc(y_pred, _input_width(inputs))
    raise ValueError(f"Unknown `likelihood` {likelihood!r}.")


def _normal_loc(y_pred: Any, width: int | None) -> Any:
    out = y_pred.shape[-1] if len(y_pred.shape) else None
    if width is not None and out == 2 * width:
        return ops.split(y_pred, 2, axis=-1)[0]
    if out is None or out == width or out % 2 == 1:
        return y_pred  # an odd width cannot hold [loc, raw scale]
    raise ValueError(
        f"likelihood='normal' with prediction='mean': the output has width {out} and the input "
        f"width {width}, so predict cannot tell whether the output is the loc or "
        "[loc, raw scale] (in training, the target's width decides). prediction='mean' "
        "supports an output as wide as the input (loc) or twice as wide (loc and raw scale); "
        "otherwise use a callable likelihood (its .mean() is used) or prediction='sample'."
    )

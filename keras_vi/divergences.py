"""KL divergences: closed form where TFP registers one, Monte Carlo otherwise."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops, tree

from keras_vi import _checks
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random

__all__ = ["kl", "analytic_kl", "has_analytic_kl", "KL_METHODS"]

KL_METHODS = ("auto", "analytic", "mc")


# The package that TFP's own classes live in, for the active backend's TFP.
_TFP_PACKAGE = tfd.Distribution.__module__.split(".")[0]


def check_kl_method(method: str, argument: str = "method") -> str:
    return _checks.one_of(method, argument, KL_METHODS)


def _no_closed_form_errors(q: tfd.Distribution) -> tuple[type[Exception], ...]:
    """What `tfd.kl_divergence(q, p)` raises when there is no closed form.

    TFP's KL of two joint distributions is the sum of their parts' KLs, and raises a
    ValueError when the parts depend on one another (no closed form either).
    """
    if tree.is_nested(q.dtype):
        return (NotImplementedError, ValueError)
    return (NotImplementedError,)


def analytic_kl(q: tfd.Distribution, p: tfd.Distribution) -> Any:
    """Closed-form KL(q || p), or a ValueError naming both distribution types."""
    try:
        return tfd.kl_divergence(q, p)
    except _no_closed_form_errors(q) as err:
        raise ValueError(
            f"kl='analytic' was requested but no closed-form KL is registered for "
            f"KL({_describe(q)} || {_describe(p)}) ({err}). Use kl='mc' (Monte Carlo) or "
            "kl='auto'."
        ) from err


def has_analytic_kl(q: tfd.Distribution, p: tfd.Distribution) -> bool:
    """Whether TFP has a closed form for KL(q || p) (decided by trying it at trace time)."""
    try:
        with keras.name_scope("kl_probe"):
            tfd.kl_divergence(q, p)
        return True
    except _no_closed_form_errors(q):
        return False


def _describe(d: tfd.Distribution) -> str:
    # Name the TFP family (keras_vi's PhiloxNormal is a tfd.Normal to the user).
    tfp_class = next(c for c in type(d).__mro__ if c.__module__.startswith(_TFP_PACKAGE))
    name = tfp_class.__name__
    inner = getattr(d, "distribution", None)
    if isinstance(inner, tfd.Distribution):
        return f"{name}({_describe(inner)})"
    return name


def mc_kl_from_samples(q, p, z) -> Any:
    """One-sample-per-row Monte Carlo estimate log q(z) - log p(z) (no score term)."""
    return q.log_prob(z) - p.log_prob(z)


def kl(
    q: tfd.Distribution,
    p: tfd.Distribution,
    method: str = "auto",
    num_samples: int = 1,
    seed=None,
) -> Any:
    """KL(q || p) per batch element of q.

    Args:
        q: the approximate posterior; a joint distribution (`tfd.JointDistribution*`) too.
        p: the prior (broadcastable against q's batch shape, same event shape; for a joint q,
            a joint distribution of the same structure).
        method: `"analytic"` (closed form, `ValueError` if TFP has none), `"mc"` (Monte Carlo)
            or `"auto"` (closed form when registered, otherwise Monte Carlo).
        num_samples: draws for the Monte Carlo estimate.
        seed: an int, an int32[2] stateless seed, or a `keras.random.SeedGenerator`.

    Returns:
        A tensor of q's batch shape. Its gradient with respect to q's parameters is unbiased:
        pathwise when q is reparameterized, with a score-function term otherwise.

    Example:
        >>> q = tfd.Normal(0.5, 0.8)
        >>> prior = tfd.MixtureSameFamily(tfd.Categorical(probs=[0.5, 0.5]),
        ...                               tfd.Normal([-1.0, 1.0], [0.5, 0.5]))
        >>> round(float(kvi.divergences.kl(q, prior, method="mc", num_samples=1000, seed=0)), 2)
        0.36
    """
    check_kl_method(method)
    _checks.positive_int(num_samples, "num_samples")
    if method == "analytic":
        return analytic_kl(q, p)
    if method == "auto" and has_analytic_kl(q, p):
        return tfd.kl_divergence(q, p)
    # Imported here: the estimators import the objectives, which import this module.
    from keras_vi.estimators.base import is_reparameterized, stop_gradient_nested

    z = q.sample(num_samples, seed=backend_random.draw_seed(seed))
    reparameterized = is_reparameterized(q)
    if not reparameterized:
        z = stop_gradient_nested(z)
    log_ratio = q.log_prob(z) - p.log_prob(z)
    value = ops.mean(log_ratio, axis=0)
    if reparameterized:
        return value
    # Score-function term: E[stop(log q - log p) * d log q]; zero in value.
    surrogate = ops.mean(ops.stop_gradient(log_ratio) * q.log_prob(z), axis=0)
    return value + surrogate - ops.stop_gradient(surrogate)


def per_dimension(q, p, z=None):
    """Elementwise KL over the dimensions of a factorised latent, or None if not factorised.

    Used by free bits. Analytic when registered, otherwise the one-sample estimate at z.
    Returns a tensor of shape q.batch_shape + [D].
    """
    if not (isinstance(q, tfd.Independent) and isinstance(p, tfd.Independent)):
        return None
    q_inner, p_inner = q.distribution, p.distribution
    if has_analytic_kl(q_inner, p_inner):
        elementwise = tfd.kl_divergence(q_inner, p_inner)
    elif z is not None:
        elementwise = q_inner.log_prob(z) - p_inner.log_prob(z)
    else:
        return None
    batch_rank = _rank(q.batch_shape)
    return ops.reshape(elementwise, tuple(ops.shape(elementwise)[:batch_rank]) + (-1,))


def _rank(shape) -> int | None:
    """The length of a static shape (a TensorShape or a tuple), None when unknown."""
    try:
        return len(shape)
    except ValueError:
        return None

"""Serializable priors.

A prior is a callable `prior(q) -> tfd.Distribution` that returns a distribution with the
same event shape as q. Making priors objects (not bare distributions) lets a model that uses
them be saved and loaded with `get_config`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi.backend import distributions as tfd

__all__ = [
    "Prior",
    "StandardNormal",
    "Normal",
    "Uniform",
    "MixtureOfGaussians",
    "ScaleMixture",
    "LearnableNormal",
    "FixedDistribution",
    "get",
]


def _known_shape(shape) -> tuple[int, ...] | None:
    """A distribution shape (a TensorShape or a tuple) as a tuple of ints; None if not fully
    known."""
    try:
        dims = tuple(shape)
    except (TypeError, ValueError):  # unknown rank
        return None
    if any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _event_shape(q: tfd.Distribution) -> tuple[int, ...]:
    shape = _known_shape(q.event_shape)
    if shape is None:
        raise ValueError(
            f"prior: q's event shape {q.event_shape} must be fully known to build a prior."
        )
    return shape


def _dtype(dtype: Any) -> str:
    return keras.backend.standardize_dtype(dtype)


class Prior:
    """Base class: `prior(q)` returns p(z) matching q's event shape.

    A prior with trainable state (such as `LearnableNormal`) overrides `bind`, which the
    owning layer calls once in `build` to create the state as that layer's weights; the
    default returns the prior itself.

    Example:
        >>> @keras.saving.register_keras_serializable(package="my_priors")
        ... class Laplace(kvi.priors.Prior):
        ...     def __call__(self, q):
        ...         zeros = keras.ops.zeros(q.event_shape, q.dtype)
        ...         return tfd.Independent(tfd.Laplace(zeros, 1.0), len(q.event_shape))
        ...     def get_config(self):
        ...         return {}
        >>> latent = kvi.layers.NormalLatent(8, prior=Laplace(), kl="mc")
    """

    def __call__(self, q: tfd.Distribution) -> tfd.Distribution:
        raise NotImplementedError

    def bind(self, layer: keras.layers.Layer, name: str) -> Any:
        """Returns the callable q -> p that `layer` uses for its weight `name`."""
        del layer, name
        return self

    def element_distribution(self, dtype: Any = "float32") -> tfd.Distribution | None:
        """The scalar distribution of each element when the prior is i.i.d., else None.

        Bayesian layers use it to compute a weight KL by broadcasting instead of
        materialising the prior over the whole weight shape.
        """
        del dtype
        return None

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Prior:
        return cls(**config)


def _independent(dist: tfd.Distribution, ndims: int) -> tfd.Distribution:
    return tfd.Independent(dist, reinterpreted_batch_ndims=ndims) if ndims else dist


@keras.saving.register_keras_serializable(package="keras_vi")
class StandardNormal(Prior):
    """N(0, I) over q's event shape.

    Example:
        >>> latent = kvi.layers.NormalLatent(8, prior=kvi.priors.StandardNormal())
    """

    def __call__(self, q):
        shape = _event_shape(q)
        zeros = ops.zeros(shape, dtype=_dtype(q.dtype))
        return _independent(tfd.Normal(zeros, ops.ones_like(zeros)), len(shape))

    def element_distribution(self, dtype="float32"):
        dtype = _dtype(dtype)
        return tfd.Normal(ops.convert_to_tensor(0.0, dtype), ops.convert_to_tensor(1.0, dtype))


@keras.saving.register_keras_serializable(package="keras_vi")
class Normal(Prior):
    """N(loc, scale²) with scalar loc and scale, over q's event shape.

    Args:
        loc: the mean of every element.
        scale: the standard deviation of every element (> 0).

    Example:
        >>> prior = kvi.priors.Normal(loc=0.0, scale=0.5)
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"Normal prior: `scale` must be positive, got {scale}.")
        self.loc = float(loc)
        self.scale = float(scale)

    def __call__(self, q):
        shape = _event_shape(q)
        dtype = _dtype(q.dtype)
        loc = ops.full(shape, self.loc, dtype=dtype)
        return _independent(tfd.Normal(loc, ops.full(shape, self.scale, dtype=dtype)), len(shape))

    def element_distribution(self, dtype="float32"):
        dtype = _dtype(dtype)
        return tfd.Normal(
            ops.convert_to_tensor(self.loc, dtype), ops.convert_to_tensor(self.scale, dtype)
        )

    def get_config(self):
        return {"loc": self.loc, "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_vi")
class Uniform(Prior):
    """The uniform prior of a discrete q: fair coins for Bernoulli, equal class odds otherwise.

    Example:
        >>> latent = kvi.layers.CategoricalLatent(10, prior=kvi.priors.Uniform())
    """

    def __call__(self, q):
        base = q.distribution if isinstance(q, tfd.Independent) else q
        if isinstance(base, tfd.Bernoulli):
            shape = _event_shape(q)
            logits = ops.zeros(shape, "float32")
            return _independent(tfd.Bernoulli(logits=logits, dtype=q.dtype), len(shape))
        if isinstance(base, (tfd.OneHotCategorical, tfd.RelaxedOneHotCategorical)):
            shape = _event_shape(q)  # [..., num_classes]
            logits = ops.zeros(shape, "float32")
            return _independent(tfd.OneHotCategorical(logits=logits, dtype=q.dtype), len(shape) - 1)
        if isinstance(base, tfd.Categorical):
            num_categories = ops.shape(base.logits_parameter())[-1]
            return tfd.Categorical(logits=ops.zeros([num_categories], "float32"), dtype=q.dtype)
        raise ValueError(
            "Uniform prior: expected q to be Bernoulli, Categorical or OneHotCategorical "
            f"(optionally Independent), got {type(base).__name__}."
        )


@keras.saving.register_keras_serializable(package="keras_vi")
class MixtureOfGaussians(Prior):
    """A mixture of isotropic Gaussians over q's event shape (no closed-form KL with a Normal q).

    Args:
        locs: one location per component; each a scalar or a vector of the event size.
        scales: one positive scale per component.
        weights: mixture weights (normalised); equal if omitted.

    Example:
        >>> prior = kvi.priors.MixtureOfGaussians(locs=[-2.0, 2.0], scales=[0.5, 0.5])
    """

    def __init__(self, locs: list, scales: list, weights: list | None = None):
        if len(locs) != len(scales):
            raise ValueError(
                f"MixtureOfGaussians: `locs` and `scales` need one entry per component, got "
                f"{len(locs)} and {len(scales)}."
            )
        if any(not float(s) > 0 for s in scales):
            raise ValueError(f"MixtureOfGaussians: every scale must be positive, got {scales}.")
        if weights is not None and len(weights) != len(locs):
            raise ValueError(
                f"MixtureOfGaussians: `weights` needs {len(locs)} entries, got {len(weights)}."
            )
        self.locs = [float(v) if not isinstance(v, (list, tuple)) else list(v) for v in locs]
        self.scales = [float(s) for s in scales]
        self.weights = None if weights is None else [float(w) for w in weights]

    def __call__(self, q):
        shape = _event_shape(q)
        n = len(self.locs)
        dtype = _dtype(q.dtype)
        locs = ops.cast(ops.convert_to_tensor(self.locs, "float32"), dtype)
        locs = ops.broadcast_to(
            ops.reshape(locs, [n] + [1] * len(shape) if len(locs.shape) == 1 else [n, *shape]),
            [n, *shape],
        )
        scales = ops.broadcast_to(
            ops.reshape(ops.convert_to_tensor(self.scales, dtype), [n] + [1] * len(shape)),
            [n, *shape],
        )
        components = _independent(tfd.Normal(locs, scales), len(shape))
        probs = (
            ops.ones([n], "float32") / n
            if self.weights is None
            else ops.convert_to_tensor(self.weights, "float32") / sum(self.weights)
        )
        return tfd.MixtureSameFamily(tfd.Categorical(probs=ops.cast(probs, dtype)), components)

    def get_config(self):
        return {"locs": self.locs, "scales": self.scales, "weights": self.weights}


@keras.saving.register_keras_serializable(package="keras_vi")
class ScaleMixture(Prior):
    """Blundell et al. (2015) scale mixture: pi N(0, sigma1²) + (1 - pi) N(0, sigma2²), per element.

    No closed-form KL exists against a Normal posterior, so the KL is estimated by Monte Carlo.

    Args:
        pi: weight of the first component, in (0, 1).
        sigma1: standard deviation of the first (wide) component (> 0).
        sigma2: standard deviation of the second (narrow) component (> 0).

    Example:
        >>> prior = kvi.priors.ScaleMixture(pi=0.5, sigma1=1.0, sigma2=0.0025)
    """

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = 0.0025):
        if not 0.0 < pi < 1.0:
            raise ValueError(f"ScaleMixture: `pi` must be in (0, 1), got {pi}.")
        if not (sigma1 > 0 and sigma2 > 0):
            raise ValueError(
                f"ScaleMixture: `sigma1` and `sigma2` must be positive, got {sigma1}, {sigma2}."
            )
        self.pi, self.sigma1, self.sigma2 = float(pi), float(sigma1), float(sigma2)

    def __call__(self, q):
        return tfd.Sample(self.element_distribution(q.dtype), _event_shape(q))

    def element_distribution(self, dtype="float32"):
        dtype = _dtype(dtype)
        mix = tfd.Categorical(probs=ops.convert_to_tensor([self.pi, 1.0 - self.pi], dtype))
        comps = tfd.Normal(
            ops.zeros([2], dtype), ops.convert_to_tensor([self.sigma1, self.sigma2], dtype)
        )
        return tfd.MixtureSameFamily(mix, comps)

    def get_config(self):
        return {"pi": self.pi, "sigma1": self.sigma1, "sigma2": self.sigma2}


def _softplus_inverse(x: float) -> float:
    return float(x + math.log(-math.expm1(-x)))


@keras.saving.register_keras_serializable(package="keras_vi")
class LearnableNormal(Prior):
    """An empirical-Bayes prior N(loc, scale²) whose scale (and optionally loc) is learned.

    Each weight tensor of a Bayesian layer gets its own scalar prior scale, stored as a
    trainable weight of that layer (`<weight>_prior_raw_scale`, through softplus) and, with
    `learn_loc=True`, a scalar location (`<weight>_prior_loc`). Training the ELBO then
    maximises the evidence over these hyperparameters (type-II maximum likelihood), as in
    automatic relevance determination with one relevance per tensor. The KL against a normal
    posterior stays in closed form.

    The prior needs a layer to own its variables, so it works with the Bayesian layers
    (`kvi.layers.DenseFlipout`, ...) but not with `Latent` layers, which call priors
    directly.

    Learning both the mean and the scale can make the KL collapse: the only term of the ELBO
    that involves the prior is -KL(q || p), and a prior free to match q drives it to 0. That
    happens exactly when every posterior element of a tensor shares the same mean and scale,
    most visibly for a tensor with a single weight (a `Dense(1)` on a 1-D input, as in TFP's
    regression tutorial): with `learn_loc=True` its KL goes to 0 and the layer is no longer
    regularized. `learn_scale=False` keeps the scale fixed at `scale` and learns the mean
    only (TFP's `prior_trainable`; see also `kvi.layers.trainable_prior`, one mean per
    weight), so shrinking the posterior still costs KL.

    Args:
        loc: initial (and, unless `learn_loc`, fixed) prior mean.
        scale: initial (and, with `learn_scale=False`, fixed) prior standard deviation, > 0.
        learn_loc: whether the mean is learned as well.
        learn_scale: whether the scale is learned (default True). With False the
            `<weight>_prior_raw_scale` weight still exists (the same checkpoint layout) but is
            not trainable.

    Example:
        >>> layer = kvi.layers.DenseFlipout(64, prior=kvi.priors.LearnableNormal(scale=1.0))
        >>> prior = kvi.priors.LearnableNormal(learn_loc=True, learn_scale=False)
        >>> prior.get_config()
        {'loc': 0.0, 'scale': 1.0, 'learn_loc': True, 'learn_scale': False}
    """

    def __init__(
        self,
        loc: float = 0.0,
        scale: float = 1.0,
        learn_loc: bool = False,
        learn_scale: bool = True,
    ):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"LearnableNormal prior: `scale` must be a number > 0, got {scale!r}.")
        if isinstance(loc, bool) or not isinstance(loc, (int, float)) or not math.isfinite(loc):
            raise ValueError(f"LearnableNormal prior: `loc` must be a finite number, got {loc!r}.")
        self.loc = float(loc)
        self.scale = float(scale)
        self.learn_loc = bool(learn_loc)
        if not isinstance(learn_scale, (bool, np.bool_)):
            raise ValueError(
                f"LearnableNormal prior: `learn_scale` must be a bool, got {learn_scale!r}."
            )
        self.learn_scale = bool(learn_scale)

    def bind(self, layer, name):
        loc = layer.add_weight(
            name=f"{name}_prior_loc",
            shape=(),
            initializer=keras.initializers.Constant(self.loc),
            trainable=self.learn_loc,
            dtype="float32",
            autocast=False,  # float32 maths even under mixed precision
        )
        raw_scale = layer.add_weight(
            name=f"{name}_prior_raw_scale",
            shape=(),
            initializer=keras.initializers.Constant(_softplus_inverse(self.scale)),
            trainable=self.learn_scale,
            dtype="float32",
            autocast=False,  # float32 maths even under mixed precision
        )
        return _BoundLearnableNormal(loc, raw_scale)

    def __call__(self, q):
        raise ValueError(
            "LearnableNormal prior has trainable state and must be owned by a layer that binds "
            "it (the Bayesian layers in kvi.layers do). It cannot be used as a Latent's prior; "
            "use kvi.priors.Normal(loc, scale) there."
        )

    def get_config(self):
        return {
            "loc": self.loc,
            "scale": self.scale,
            "learn_loc": self.learn_loc,
            "learn_scale": self.learn_scale,
        }


class _BoundLearnableNormal:
    """The per-tensor state of a `LearnableNormal`: q -> N(loc, softplus(raw)²) elementwise."""

    def __init__(self, loc, raw_scale):
        self.loc = loc
        self.raw_scale = raw_scale

    def __call__(self, q):
        shape = _event_shape(q)
        element = self.element_distribution(q.dtype)
        loc = ops.broadcast_to(element.loc, shape)
        return _independent(tfd.Normal(loc, ops.broadcast_to(element.scale, shape)), len(shape))

    def element_distribution(self, dtype="float32"):
        dtype = _dtype(dtype)
        loc = ops.cast(ops.convert_to_tensor(self.loc), dtype)
        scale = ops.softplus(ops.convert_to_tensor(self.raw_scale))
        return tfd.Normal(loc, ops.cast(scale, dtype))


class FixedDistribution(Prior):
    """Wraps a ready-made `tfd.Distribution` (not serializable: use a `Prior` to save models).

    Passing a `tfd.Distribution` as a layer's `prior` wraps it in this class.

    Args:
        distribution: the prior, with the same event shape as the layer's q.

    Example:
        >>> prior = tfd.Independent(tfd.Laplace(keras.ops.zeros(8), 1.0), 1)
        >>> latent = kvi.layers.NormalLatent(8, prior=prior, kl="mc")
    """

    def __init__(self, distribution: tfd.Distribution):
        self.distribution = distribution

    def __call__(self, q):
        return self.distribution

    def get_config(self):
        raise ValueError(
            "A prior given as a tfd.Distribution object cannot be serialized. To save the model, "
            "pass a keras_vi.priors.Prior (e.g. kvi.priors.MixtureOfGaussians) or a callable "
            "registered with keras.saving.register_keras_serializable."
        )


_ALIASES = {"standard_normal": StandardNormal, "normal": StandardNormal, "uniform": Uniform}


def get(identifier: Any) -> Prior | Any | None:
    """Resolves a prior identifier: None, a string alias, a Prior, a distribution or a callable."""
    if identifier is None or isinstance(identifier, Prior):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _ALIASES:
            raise ValueError(
                f"Unknown `prior` {identifier!r}; expected one of {sorted(_ALIASES)}, a "
                "keras_vi.priors.Prior, a tfd.Distribution or a callable q -> distribution."
            )
        return _ALIASES[identifier]()
    if isinstance(identifier, tfd.Distribution):
        return FixedDistribution(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(
        f"`prior` must be None, a string, a Prior, a tfd.Distribution or a callable; got "
        f"{type(identifier).__name__}."
    )

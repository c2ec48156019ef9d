"""`DenseVariational`: `tfp.layers.DenseVariational`'s contract in Keras 3, with its factories.

The layer's weights have a posterior q and a prior p that the user builds: each factory
`make_fn(kernel_size, bias_size, dtype)` returns a Keras layer (or any callable) whose output,
called on the layer's input, is a `tfd.Distribution` over the flattened `[kernel, bias]`
vector (event shape `[kernel_size + bias_size]`, kernel first, row-major `(input_dim, units)`).
Every call draws one weight vector from q and reports KL(q || p) exactly as the other
Bayesian layers do (see `keras_vi.layers.bayesian`).

The factories of TFP's "Probabilistic Layers Regression" tutorial ship here:
`mean_field_posterior` (its `posterior_mean_field`), `trainable_prior` (its `prior_trainable`)
and `standard_normal_prior`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_vi import _checks, _layout, _prediction, _scope, _serialization, divergences
from keras_vi.backend import distributions as tfd
from keras_vi.layers import bayesian
from keras_vi.layers.bayesian import BayesianLayer

__all__ = [
    "DenseVariational",
    "MeanFieldNormal",
    "NormalPrior",
    "mean_field_posterior",
    "trainable_prior",
    "standard_normal_prior",
]

# Added to softplus(raw scale), as TFP's tutorial does (1e-5).
_MIN_SCALE = 1e-5


class _DistributionLayer(keras.layers.Layer):
    """A layer whose output is a `tfd.Distribution` (a factory's layer), never a tensor."""

    def compute_output_spec(self, inputs=None):
        raise ValueError(
            f"{type(self).__name__} outputs a tfd.Distribution, not a tensor: use it as a "
            "DenseVariational factory's layer, not in a functional graph."
        )


@keras.saving.register_keras_serializable(package="keras_vi")
class MeanFieldNormal(_DistributionLayer):
    """A trainable mean-field normal over a vector of `size` weights; ignores its input.

    Its output is `Independent(Normal(loc, softplus(raw_scale) + 1e-5), 1)`, event shape
    `[size]`, with trainable `loc` and `raw_scale` of shape `[size]` (TFP's `VariableLayer`
    followed by a `DistributionLambda`).

    Args:
        size: the number of weights.
        loc_initializer: initializer of the mean (default zeros, as TFP's tutorial).
        scale_init: initial standard deviation (> 1e-5; default 1, as TFP's tutorial).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
        >>> q = kvi.layers.MeanFieldNormal(3)(keras.ops.zeros((1, 1)))
        >>> tuple(q.event_shape), round(float(q.stddev()[0]), 4)
        ((3,), 1.0)
    """

    def __init__(
        self,
        size: int,
        loc_initializer: Any = "zeros",
        scale_init: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = _checks.positive_int(size, "size", type(self).__name__)
        self.loc_initializer = keras.initializers.get(loc_initializer)
        self.scale_init = _checks.finite_number(
            scale_init, "scale_init", type(self).__name__, minimum=_MIN_SCALE, exclusive=True
        )
        self.loc = self.add_weight(
            name="loc", shape=(self.size,), initializer=self.loc_initializer, dtype="float32"
        )
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(self.size,),
            initializer=keras.initializers.Constant(
                bayesian._softplus_inverse(self.scale_init - _MIN_SCALE)
            ),
            dtype="float32",
        )

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs=None) -> tfd.Distribution:
        loc = ops.convert_to_tensor(self.loc)
        scale = ops.softplus(ops.convert_to_tensor(self.raw_scale)) + _MIN_SCALE
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "loc_initializer": keras.initializers.serialize(self.loc_initializer),
                "scale_init": self.scale_init,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vi")
class NormalPrior(_DistributionLayer):
    """A normal prior over a vector of `size` weights with a FIXED scale; ignores its input.

    Its output is `Independent(Normal(loc, scale), 1)`, event shape `[size]`. With
    `trainable_loc=True` the per-weight mean `loc` is a trainable weight (TFP's
    `prior_trainable`: empirical Bayes on the means only); otherwise it is the constant
    `loc_init` and the layer has no weights.

    Args:
        size: the number of weights.
        scale: the prior standard deviation of every weight (> 0, never learned).
        trainable_loc: whether each weight's prior mean is learned.
        loc_init: the (initial) prior mean.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
        >>> p = kvi.layers.NormalPrior(4, trainable_loc=True)(keras.ops.zeros((1, 1)))
        >>> tuple(p.event_shape), float(p.stddev()[0])
        ((4,), 1.0)
    """

    def __init__(
        self,
        size: int,
        scale: float = 1.0,
        trainable_loc: bool = False,
        loc_init: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.size = _checks.positive_int(size, "size", owner)
        self.scale = _checks.finite_number(scale, "scale", owner, minimum=0, exclusive=True)
        self.trainable_loc = bool(trainable_loc)
        self.loc_init = _checks.finite_number(loc_init, "loc_init", owner)
        self.loc = None
        if self.trainable_loc:
            self.loc = self.add_weight(
                name="loc",
                shape=(self.size,),
                initializer=keras.initializers.Constant(self.loc_init),
                dtype="float32",
            )

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs=None) -> tfd.Distribution:
        if self.loc is None:
            loc = ops.full((self.size,), self.loc_init, "float32")
        else:
            loc = ops.convert_to_tensor(self.loc)
        scale = ops.full((self.size,), self.scale, "float32")
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "scale": self.scale,
                "trainable_loc": self.trainable_loc,
                "loc_init": self.loc_init,
            }
        )
        return config


# ---------------------------------------------------------------------------- factories
@keras.saving.register_keras_serializable(package="keras_vi")
def mean_field_posterior(
    kernel_size: int, bias_size: int = 0, dtype: Any = None
) -> MeanFieldNormal:
    """TFP's `posterior_mean_field`: a trainable mean-field normal over all weights.

    Means start at 0 and standard deviations at 1 (softplus(log(e - 1)) as in TFP's tutorial),
    so the network starts at its prior's spread; fine for the tutorial's one-layer models,
    too wide for deep networks (write a factory returning
    `kvi.layers.MeanFieldNormal(n, loc_initializer="glorot_uniform", scale_init=0.05)`, or
    use `kvi.layers.DenseFlipout`).

    Args:
        kernel_size: the number of kernel entries.
        bias_size: the number of bias entries.
        dtype: the layer's dtype (the weights are float32).

    Returns:
        A `kvi.layers.MeanFieldNormal` over `kernel_size + bias_size` weights.

    Example:
        >>> layer = kvi.layers.DenseVariational(
        ...     1, kvi.layers.mean_field_posterior, kvi.layers.trainable_prior)
        >>> tuple(layer(keras.ops.ones((4, 2))).shape)
        (4, 1)
        >>> sorted(w.name for w in layer.trainable_weights)  # q: loc, raw_scale; p: loc
        ['loc', 'loc', 'raw_scale']
    """
    del dtype
    return MeanFieldNormal(kernel_size + bias_size, name="posterior")


@keras.saving.register_keras_serializable(package="keras_vi")
def trainable_prior(kernel_size: int, bias_size: int = 0, dtype: Any = None) -> NormalPrior:
    """TFP's `prior_trainable`: N(m, 1) per weight, each mean m learned, the scale FIXED at 1.

    Why the scale stays fixed: the ELBO's only term that involves the prior is -KL(q || p),
    so a prior whose mean AND scale are learned simply moves onto the posterior (for normals:
    m = posterior mean, s = posterior std) and the KL goes to 0. The Bayesian layer then has
    no regularizer at all (the weight uncertainty is free to collapse, as in maximum
    likelihood) and the reported `kl` of 0 says nothing about the posterior. With the scale
    fixed, the KL per weight at the best mean is `-log(sigma) + (sigma**2 - 1) / 2`, which
    is 0 only when the posterior std sigma equals 1: the data can move the means, but
    shrinking the posterior still costs. `kvi.priors.LearnableNormal` learns one scale per
    weight tensor (and, with `learn_loc=True`, one mean): on a layer whose tensors hold a
    single weight each (TFP's tutorial: `Dense(1)` on a 1-D input) that prior matches q
    exactly and its KL collapses to 0; use `LearnableNormal(..., learn_scale=False)` or this
    factory.

    Args:
        kernel_size: the number of kernel entries.
        bias_size: the number of bias entries.
        dtype: the layer's dtype (the weights are float32).

    Returns:
        A `kvi.layers.NormalPrior` over `kernel_size + bias_size` weights with trainable means.

    Example:
        >>> p = kvi.layers.trainable_prior(3, 1)(keras.ops.zeros((1, 3)))
        >>> tuple(p.event_shape)
        (4,)
    """
    del dtype
    return NormalPrior(kernel_size + bias_size, scale=1.0, trainable_loc=True, name="prior")


@keras.saving.register_keras_serializable(package="keras_vi")
def standard_normal_prior(kernel_size: int, bias_size: int = 0, dtype: Any = None) -> NormalPrior:
    """A fixed N(0, 1) prior over every weight (no trainable weights).

    Args:
        kernel_size: the number of kernel entries.
        bias_size: the number of bias entries.
        dtype: the layer's dtype (the weights are float32).

    Returns:
        A `kvi.layers.NormalPrior` over `kernel_size + bias_size` weights.

    Example:
        >>> layer = kvi.layers.standard_normal_prior(3, 1)
        >>> layer.trainable_weights
        []
    """
    del dtype
    return NormalPrior(kernel_size + bias_size, scale=1.0, trainable_loc=False, name="prior")


# ---------------------------------------------------------------------------- the layer
def _deserialize_fn(value: Any) -> Any:
    if isinstance(value, (dict, str)):
        return keras.saving.deserialize_keras_object(value)
    return value


@keras.saving.register_keras_serializable(package="keras_vi")
class DenseVariational(BayesianLayer):
    """A dense layer whose weights have a user-built posterior and prior (TFP's contract).

    `make_posterior_fn(kernel_size, bias_size, dtype)` and `make_prior_fn(...)` are called
    once, in `build`, with `kernel_size = input_dim * units` and `bias_size = units` (0
    without bias). Each returns a Keras layer (or a callable) that, called on the layer's
    input, gives a `tfd.Distribution` with batch shape `[]` and event shape
    `[kernel_size + bias_size]` over the flattened weights, kernel first (row-major
    `(input_dim, units)`), then bias. The returned layers are sublayers: their weights are
    tracked, trained and saved with this layer. The posterior must be reparameterized (its
    samples carry gradients back to its parameters).

    Each call draws one weight vector from q (one per tiled copy inside a
    `kvi.VariationalModel` with `num_samples=K`; q's mean with `prediction="mean"`) and
    reports KL(q || p):

    * inside a `kvi.VariationalModel`, to the model exactly as every Bayesian layer does:
      divided by the dataset size N (`num_examples`) and multiplied by the model's
      `kl_weight`. Leave `kl_weight=None` here: TFP's `kl_weight=1/N` is what the model
      already applies, and a layer `kl_weight` inside a `VariationalModel` is a ValueError
      (it would count 1/N twice);
    * in a plain `keras.Model`, `kl_weight * KL` through `add_loss` when `kl_weight` is set
      (TFP's meaning), nothing otherwise.

    Why not learn the prior's scale too: see `kvi.layers.trainable_prior` (the KL collapses
    to 0 and the prior stops regularizing).

    Args:
        units: output width, a positive integer.
        make_posterior_fn: the posterior factory, e.g. `kvi.layers.mean_field_posterior`.
            To save the model, a registered function or class (see
            `keras.saving.register_keras_serializable`).
        make_prior_fn: the prior factory, e.g. `kvi.layers.trainable_prior` or
            `kvi.layers.standard_normal_prior`.
        kl_weight: None, or a number >= 0 multiplying the KL that the layer adds through
            `add_loss` outside a `kvi.VariationalModel` (e.g. 1 / N).
        activation: activation function (name or callable), as in `keras.layers.Dense`.
        use_bias: whether the layer has a bias.
        kl: `"auto"` (closed form when TFP has one, Monte Carlo otherwise), `"analytic"` or
            `"mc"`.
        kl_samples: posterior draws per Monte Carlo KL estimate.
        seed: optional int for the layer's `keras.random.SeedGenerator`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
        >>> inputs = keras.Input((1,))
        >>> loc = kvi.layers.DenseVariational(
        ...     1, kvi.layers.mean_field_posterior, kvi.layers.trainable_prior)(inputs)
        >>> model = kvi.VariationalModel(
        ...     inputs, loc, likelihood=kvi.heads.IndependentNormal(1, scale=1.0))
        >>> model.compile(optimizer="adam")
        >>> x = np.linspace(-1.0, 1.0, 32, dtype="float32")[:, None]
        >>> logs = model.fit(x, 2 * x, epochs=1, verbose=0).history
        >>> {"elbo", "nll", "kl"} <= set(logs)  # kl: KL(q || p) / N, as every Bayesian layer's
        True
    """

    def __init__(
        self,
        units: int,
        make_posterior_fn: Callable,
        make_prior_fn: Callable,
        kl_weight: float | None = None,
        activation: Any = None,
        use_bias: bool = True,
        kl: str = "auto",
        kl_samples: int = 1,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(kl=kl, kl_samples=kl_samples, seed=seed, **kwargs)
        owner = type(self).__name__
        self.units = _checks.positive_int(units, "units", owner)
        make_posterior_fn = _deserialize_fn(make_posterior_fn)
        make_prior_fn = _deserialize_fn(make_prior_fn)
        for argument, fn in (
            ("make_posterior_fn", make_posterior_fn),
            ("make_prior_fn", make_prior_fn),
        ):
            if not callable(fn):
                raise ValueError(
                    f"{owner}: `{argument}` must be a callable (kernel_size, bias_size, dtype) "
                    f"-> layer, got {fn!r}."
                )
        self.make_posterior_fn = make_posterior_fn
        self.make_prior_fn = make_prior_fn
        self.kl_weight = (
            None
            if kl_weight is None
            else _checks.finite_number(kl_weight, "kl_weight", owner, minimum=0)
        )
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_size = None
        self.bias_size = None
        self._input_dim = None

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        self._input_dim = bayesian.known_last_dimension(self, input_shape)
        self.kernel_size = self._input_dim * self.units
        self.bias_size = self.units if self.use_bias else 0
        self.posterior_layer = self._make("make_posterior_fn", self.make_posterior_fn)
        self.prior_layer = self._make("make_prior_fn", self.make_prior_fn)
        for layer in (self.posterior_layer, self.prior_layer):
            if isinstance(layer, keras.layers.Layer) and not layer.built:
                layer.build((None, self._input_dim))
        # Check both distributions (shapes, reparameterization, closed form) now.
        q, p = self.posterior(), self.prior_distribution()
        if self.kl == "analytic":
            divergences.analytic_kl(q, p)
        self.built = True

    def _make(self, argument: str, fn: Callable) -> Any:
        made = fn(self.kernel_size, self.bias_size, "float32")
        if not callable(made):
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: `{argument}` must return a Keras layer "
                f"or a callable giving a tfd.Distribution, got {type(made).__name__}."
            )
        return made

    def _distribution(self, layer: Any, x: Any, which: str) -> tfd.Distribution:
        dist = layer(x)
        owner = f"{type(self).__name__} {self.name!r}"
        if not isinstance(dist, tfd.Distribution):
            raise ValueError(
                f"{owner}: the {which} layer must output a tfd.Distribution, got "
                f"{type(dist).__name__}."
            )
        size = self.kernel_size + self.bias_size
        event, batch = bayesian._dims(dist.event_shape), bayesian._dims(dist.batch_shape)
        if event != (size,) or batch != ():
            raise ValueError(
                f"{owner}: the {which} has batch shape {dist.batch_shape} and event shape "
                f"{dist.event_shape}; expected batch shape [] and event shape [{size}] "
                f"(kernel {self._input_dim} x {self.units} = {self.kernel_size}, then bias "
                f"{self.bias_size}), e.g. tfd.Independent(tfd.Normal(loc, scale), 1) over a "
                f"vector of {size}."
            )
        if keras.backend.standardize_dtype(dist.dtype) != "float32":
            raise ValueError(f"{owner}: the {which} must be float32, got {dist.dtype}.")
        if which == "posterior" and dist.reparameterization_type != tfd.FULLY_REPARAMETERIZED:
            raise ValueError(
                f"{owner}: the posterior {type(dist).__name__} is not reparameterized, so its "
                "samples carry no gradient to its parameters and it would not train. Use a "
                "reparameterized family (e.g. a Normal)."
            )
        return dist

    def _dummy_input(self) -> Any:
        return ops.zeros((1, self._input_dim), "float32")

    def posterior(self, name: str | None = None, inputs: Any = None) -> tfd.Distribution:
        """q over the flattened [kernel, bias] vector (the posterior layer's output).

        Args:
            name: unused (BayesianLayer's per-tensor argument; this layer has one vector).
            inputs: what the factory's layer is called on (default a row of zeros).
        """
        del name
        x = self._dummy_input() if inputs is None else inputs
        return self._distribution(self.posterior_layer, x, "posterior")

    def prior_distribution(self, name: str | None = None, inputs: Any = None) -> tfd.Distribution:
        """p over the flattened [kernel, bias] vector (the prior layer's output)."""
        del name
        x = self._dummy_input() if inputs is None else inputs
        return self._distribution(self.prior_layer, x, "prior")

    # ------------------------------------------------------------------ KL
    def _kl(self, q, p, seed) -> Any:
        return ops.cast(
            divergences.kl(q, p, method=self.kl, num_samples=self.kl_samples, seed=seed),
            "float32",
        )

    def weight_kl(self, seed: Any) -> Any:
        """KL(q || p) over all weights (float32 scalar; a Monte Carlo estimate needs `seed`)."""
        return self._kl(self.posterior(), self.prior_distribution(), seed)

    def _report(self, x, q, seed) -> None:
        if getattr(bayesian._state, "kl_disabled", False) or _prediction.point_estimates():
            return
        scope = _scope.current_scope()
        if scope is not None:
            if self.kl_weight is not None:
                raise ValueError(
                    f"{type(self).__name__} {self.name!r}: kl_weight={self.kl_weight} is for "
                    "training in a plain keras.Model (kl_weight * KL is added to the loss). A "
                    "kvi.VariationalModel already divides every weight KL by the dataset size "
                    "(num_examples) and multiplies it by its own kl_weight: leave the layer's "
                    "kl_weight=None and set VariationalModel(kl_weight=...) to reweight."
                )
            if not any(layer is self for layer, _ in scope.weight_kls):
                scope.add_weight_kl(self, self._kl(q, self.prior_distribution(inputs=x), seed))
        elif self.kl_weight is not None:
            self.add_loss(self.kl_weight * self._kl(q, self.prior_distribution(inputs=x), seed))

    def report_kl(self, seed: Any) -> None:
        """Sends the current weight KL to the model (or `add_loss` with `kl_weight`)."""
        self._report(self._dummy_input(), self.posterior(), seed)

    # ------------------------------------------------------------------ call
    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        rows = x if len(x.shape) == 2 else ops.reshape(x, (-1, x.shape[-1]))
        q = self.posterior(inputs=rows)
        seeds = self.next_seeds(2)
        k = self.num_weight_samples()
        if _prediction.point_estimates():
            weights = _prediction.point_estimate(q, f"{type(self).__name__} {self.name!r}")
            k = 1
        else:
            weights = q.sample(() if k == 1 else (k,), seed=seeds[0])
        weights = ops.cast(weights, "float32")
        kernel = ops.reshape(
            weights[..., : self.kernel_size],
            (() if k == 1 else (k,)) + (self._input_dim, self.units),
        )
        bias = weights[..., self.kernel_size :] if self.use_bias else None
        if k == 1:
            outputs = ops.matmul(rows, kernel)
            if bias is not None:
                outputs = outputs + bias
        else:  # copy j of the batch (rows j*B .. j*B + B - 1) gets weight sample j
            outputs = ops.matmul(_layout.to_samples(rows, k), kernel)
            if bias is not None:
                outputs = outputs + bias[:, None, :]
            outputs = _layout.to_rows(outputs)
        if len(x.shape) != 2:
            outputs = ops.reshape(outputs, (*ops.shape(x)[:-1], self.units))
        self._report(rows, q, seeds[1])
        if self.activation is not None:
            outputs = self.activation(outputs)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        config = keras.layers.Layer.get_config(self)
        owner = f"{type(self).__name__} {self.name!r}"
        config.update(
            {
                "units": self.units,
                "make_posterior_fn": _serialization.serialize(
                    self.make_posterior_fn, "make_posterior_fn", owner
                ),
                "make_prior_fn": _serialization.serialize(
                    self.make_prior_fn, "make_prior_fn", owner
                ),
                "kl_weight": self.kl_weight,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kl": self.kl,
                "kl_samples": self.kl_samples,
                "seed": self.seed,
            }
        )
        return config

"""Latent variables as Keras layers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
from keras import ops, tree

from keras_vi import (
    _checks,
    _layout,
    _prediction,
    _random,
    _scope,
    backend,
    divergences,
    estimators,
    objectives,
    priors,
)
from keras_vi._scope import in_symbolic_scope
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random
from keras_vi.layers import bayesian

logger = logging.getLogger("keras_vi")

__all__ = [
    "Latent",
    "NormalLatent",
    "BernoulliLatent",
    "CategoricalLatent",
]


@keras.saving.register_keras_serializable(package="keras_vi")
class Latent(_random.SeedStateMixin, keras.layers.Layer):
    """A stochastic layer: parameters in, a sample z ~ q(z | parameters) out.

    Inside a `kvi.VariationalModel`'s training or evaluation step, the layer also records q,
    z, its prior and its estimator, from which the model builds the ELBO (and adds nothing
    to `layer.losses`).

    Outside a `VariationalModel` step, for example in a plain `keras.Model` or
    `keras.Sequential`, a layer with a prior adds its KL(q || prior) to `layer.losses` on
    every call, as Keras's activity regularizers do: the per-example KL (summed over q's
    axes after the first), averaged over the batch, computed as `kl` says (a Monte Carlo
    KL uses `kl_samples` fresh draws). A plain model's loss, a per-example mean such as
    the summed binary cross-entropy of the reconstruction, plus this term is the negative
    per-example ELBO, in `fit` and in `evaluate`. Nothing is added inside
    `keras_vi.layers.bayesian.kl_disabled()` (`kvi.predict_samples`), in symbolic shape
    inference, or where the model predicts with `prediction="mean"`.

    q may be a joint distribution (`tfd.JointDistributionSequential`, `...Named`,
    `...Coroutine`, or their AutoBatched variants): the layer then returns its structured
    sample (a list, dict or tuple of tensors, each with the batch axis first), `"auto"`
    picks `Reparameterization` only when every part is fully reparameterized, and the prior
    must be a joint distribution of the same structure (or a callable q -> one).

    Args:
        distribution_fn: callable mapping the layer's input tensor to a `tfd.Distribution`
            whose batch shape is the batch axis. Register it with
            `keras.saving.register_keras_serializable` to save the model.
        prior: None (no KL term: a purely stochastic node), a string (`"standard_normal"`,
            `"uniform"`), a `kvi.priors.Prior`, a `tfd.Distribution`, or a callable q -> p.
        estimator: `"auto"`, an alias such as `"reparameterization"` or `"score_function"`,
            or a `kvi.estimators.Estimator`.
        kl: `"auto"` (closed form when TFP has one, Monte Carlo otherwise), `"analytic"`
            (ValueError when no closed form exists) or `"mc"`.
        kl_samples: draws for a Monte Carlo KL; 1 reuses the sample the layer returns
            inside a `VariationalModel` step (outside one, the draws are fresh).
        seed: optional int for this layer's `keras.random.SeedGenerator`.

    Call arguments:
        inputs: the parameters of q, one row per example.
        training: Keras's training flag.
        prior_params: optional tensor, one row per example, from which this call's prior is
            built (a structured latent: p(z1 | z2) from another latent, or p(z | c) from an
            input). `prior` must then be a callable prior_params -> tfd.Distribution
            (`NormalLatent` reads loc and softplus scale from it instead). Under
            `tile_at="latent"` it is tiled with the latent's input where it comes from the
            untiled part of the model.

    Example:
        >>> def gaussian(params):
        ...     loc, raw = keras.ops.split(params, 2, axis=-1)
        ...     return tfd.Independent(tfd.Normal(loc, keras.ops.softplus(raw) + 1e-5), 1)
        >>> z = kvi.layers.Latent(gaussian, prior="standard_normal", name="z")(h)
        >>> z.shape  # h has 64 units: 32 locations and 32 raw scales
        (None, 32)
    """

    # Whether this layer's q is fully reparameterized; None means: probe q once in build.
    reparameterized: bool | None = None

    def __init__(
        self,
        distribution_fn: Callable[[Any], tfd.Distribution] | None = None,
        prior: Any = None,
        estimator: Any = "auto",
        kl: str = "auto",
        kl_samples: int = 1,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if distribution_fn is not None and not callable(distribution_fn):
            raise ValueError(
                f"`distribution_fn` must be a callable params -> tfd.Distribution, got "
                f"{type(distribution_fn).__name__}."
            )
        if distribution_fn is None and type(self).make_distribution is Latent.make_distribution:
            raise ValueError(
                "Latent needs a `distribution_fn` (or a subclass's make_distribution)."
            )
        self.distribution_fn = distribution_fn
        self.prior = priors.get(prior)
        self.estimator = estimators.get(estimator)
        self.kl = divergences.check_kl_method(kl, "kl")
        if not (
            isinstance(kl_samples, int) and not isinstance(kl_samples, bool) and kl_samples >= 1
        ):
            raise ValueError(f"`kl_samples` must be a positive integer, got {kl_samples!r}.")
        self.kl_samples = kl_samples
        self.seed = seed
        self.seed_generator = _random.make_seed_generator(seed, self.name)
        self._tracked_checked = False
        # Set by a `ConditionalPrior` that gives this layer its prior after the call; in a
        # plain Keras model that layer then adds the KL, and this call's q and seed wait
        # for it here.
        self.conditioned_by = None
        self._pending_plain_kl = None
        self._resolved_estimator = None if self.estimator == "auto" else self.estimator
        self.baseline = getattr(self._resolved_estimator, "baseline", None)

    def make_distribution(self, inputs) -> tfd.Distribution:
        """q for a batch of parameters; subclasses override this instead of `distribution_fn`."""
        return self.distribution_fn(inputs)

    def build(self, input_shape):
        probe_shape = [1 if d is None else d for d in input_shape]
        probe = None
        if self.distribution_fn is not None:
            probe = self.make_distribution(ops.zeros(probe_shape))
            self._check_tracked(probe)
        if self._resolved_estimator is None:
            reparameterized = self.reparameterized
            if reparameterized is None:
                if probe is None:
                    probe = self.make_distribution(ops.zeros(probe_shape))
                reparameterized = estimators.is_reparameterized(probe)
            self._resolved_estimator = estimators.resolve_auto(reparameterized)
            logger.info(
                "keras_vi: latent %r uses estimator='auto' -> %r.",
                self.name,
                self._resolved_estimator,
            )
            self.baseline = getattr(self._resolved_estimator, "baseline", None)
        if self.baseline is not None and not self.baseline.built:
            self.baseline.build(input_shape)
        self.built = True

    def _check_tracked(self, q) -> None:
        """A q holding variables Keras does not track would train without them, silently."""
        untracked = backend.untracked_variables(q)
        if untracked:
            names = ", ".join(repr(getattr(v, "name", type(v).__name__)) for v in untracked[:4])
            more = f" and {len(untracked) - 4} more" if len(untracked) > 4 else ""
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the distribution from `distribution_fn` "
                f"({type(q).__name__}) holds {len(untracked)} variable(s) that Keras 3 does not "
                f"track ({names}{more}): a bare tf.Variable, or the weights of a Keras 2 "
                "(tf_keras) layer such as tfb.AutoregressiveNetwork. `fit` would never update "
                "them. Build q from Keras 3 layers' outputs, or use kvi.flows (IAF, "
                "AffineCoupling, Planar, SplineCoupling) with kvi.layers.FlowLatent."
            )

    @property
    def resolved_estimator(self) -> estimators.Estimator:
        """The estimator in use (what `"auto"` resolved to, once the layer is built)."""
        return self._resolved_estimator

    def prior_distribution(
        self, q: tfd.Distribution, prior_params: Any = None
    ) -> tfd.Distribution | None:
        """p(z) for this call's q (None without a prior), built from `prior_params` if given."""
        if prior_params is not None:
            return self._checked_prior(self.make_prior(prior_params), q)
        if self.prior is None:
            return None
        if not estimators.is_joint(q):
            return self.prior(q)
        try:
            p = self.prior(q)
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: `prior` {self.prior!r} cannot give a "
                f"prior for the joint distribution {type(q).__name__} (parts {q.dtype}); "
                "expected a joint distribution of the same structure, or a callable q -> one."
            ) from err
        try:
            tree.assert_same_structure(q.dtype, p.dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the prior's parts {p.dtype} do not "
                f"match the parts of q ({type(q).__name__}), {q.dtype}; expected a joint "
                "distribution of the same structure."
            ) from err
        return p

    def make_prior(self, prior_params) -> tfd.Distribution:
        """p(z) from the tensor passed as `prior_params` (a structured latent's prior).

        Here `prior` must be a callable prior_params -> tfd.Distribution; `NormalLatent`
        reads loc and softplus scale from the tensor instead.
        """
        if not callable(self.prior) or isinstance(self.prior, priors.Prior):
            raise ValueError(
                f"{type(self).__name__} {self.name!r} was called with `prior_params`, so its "
                f"`prior` must be a callable prior_params -> tfd.Distribution; got "
                f"prior={self.prior!r}."
            )
        return self.prior(prior_params)

    def _prior_after_call(self, q, prior_params, given_at_call=None) -> tfd.Distribution:
        """p(z | prior_params) for this call's q, given by a `ConditionalPrior` after it."""
        if given_at_call is not None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} was called with `prior_params` and is "
                "also given a prior by a ConditionalPrior; use one of the two."
            )
        self._check_prior_params(prior_params)
        return self.prior_distribution(q, ops.cast(prior_params, "float32"))

    def _check_prior_params(self, prior_params) -> None:
        if self.prior is None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} has prior=None (no KL term) but was "
                "called with `prior_params`; give it a prior, or drop `prior_params`."
            )
        if len(prior_params.shape) < 1:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: `prior_params` must have a batch axis, "
                f"got shape {tuple(prior_params.shape)}."
            )

    def _checked_prior(self, p, q) -> tfd.Distribution:
        if not isinstance(p, tfd.Distribution):
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the prior built from `prior_params` must "
                f"be a tfd.Distribution, got {type(p).__name__}."
            )
        rows = q.batch_shape[:1]
        if tuple(p.batch_shape[:1]) != tuple(rows) or tuple(p.event_shape) != tuple(q.event_shape):
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the prior built from `prior_params` has "
                f"batch shape {tuple(p.batch_shape)} and event shape {tuple(p.event_shape)}; "
                f"expected q's {tuple(q.batch_shape)} and {tuple(q.event_shape)} (one prior "
                "per row of the layer's input)."
            )
        return p

    def call(self, inputs, training=None, prior_params=None):
        inputs = ops.cast(inputs, "float32")
        scope = _scope.current_scope()
        if prior_params is not None:
            self._check_prior_params(prior_params)
            prior_params = ops.cast(prior_params, "float32")
        if scope is not None and id(self) in scope.tile_inputs_of:
            # The model did not tile its batch; the K copies of each example start here.
            inputs = _layout.tile(inputs, scope.num_samples)
        if scope is not None and id(self) in scope.tile_prior_params_of:
            prior_params = _layout.tile(prior_params, scope.num_samples)
        q = self.make_distribution(inputs)
        if scope is None and _prediction.point_estimates():
            # The model's prediction="mean": a deterministic point of q, no draw.
            z = _prediction.point_estimate(q, f"{type(self).__name__} {self.name!r}")
            return self._floating_to_compute_dtype(z)
        estimator = self._resolved_estimator
        seed = _random.draw_tfp_seed(self.seed_generator)
        prior = None
        if self.prior is not None and (scope is not None or not _kl_disabled()):
            prior = self.prior_distribution(q, prior_params)
        if scope is not None:
            estimator.validate(q, objective=scope.objective, num_samples=scope.num_samples)
            self._validate_kl(q, prior, scope)
        z = estimator.sample(q, seed)
        if self.distribution_fn is not None and not self._tracked_checked:
            # Networks inside q (a tf_keras layer) create their weights at the first draw.
            self._check_tracked(q)
            self._tracked_checked = True
        if scope is not None:
            site = _scope.Site(
                name=self.name,
                q=q,
                z=z,
                prior=prior,
                estimator=estimator,
                inputs=ops.stop_gradient(inputs),
                seed=seed,
                kl=self.kl,
                kl_samples=self.kl_samples,
            )
            site.prior_from = lambda params: self._prior_after_call(q, params, prior_params)
            scope.add_latent(site)
            z = site.z  # as watched by the step's sample tape
        elif training is True and not estimator.reparameterized and not in_symbolic_scope():
            raise ValueError(
                f"{type(self).__name__} {self.name!r} uses estimator={estimator!r}, whose "
                "gradient comes from a surrogate that only kvi.VariationalModel builds: trained "
                "in a plain keras.Model, the layers before it would get no gradient from the "
                "likelihood. Train it in a kvi.VariationalModel, or use a reparameterizable "
                "latent (NormalLatent, RelaxedCategoricalLatent)."
            )
        if (
            scope is None
            and self.prior is not None
            and not in_symbolic_scope()
            and not _kl_disabled()
        ):
            # A plain Keras model: report the KL as a Keras loss (a VariationalModel builds
            # the KL itself, so adding it there would count it twice).
            if self.conditioned_by is None:
                self.add_loss(self._mean_kl(q, prior, seed))
            else:
                self._pending_plain_kl = (q, seed, prior_params)
        return self._floating_to_compute_dtype(z)

    def _floating_to_compute_dtype(self, z):
        """z cast to the compute dtype where floating, part by part for a joint q."""
        return tree.map_structure(
            lambda part: ops.cast(part, self.compute_dtype) if _is_floating(part.dtype) else part,
            z,
        )

    def _mean_kl(self, q: tfd.Distribution, prior: tfd.Distribution, seed):
        """KL(q || prior) per example (summed over q's axes after the first), batch mean."""
        kl = divergences.kl(
            q,
            prior,
            method=self.kl,
            num_samples=self.kl_samples,
            seed=backend_random.fold_in(seed, 1),
        )
        kl = ops.cast(kl, "float32")
        if len(kl.shape):
            kl = ops.sum(ops.reshape(kl, (ops.shape(kl)[0], -1)), axis=1)
        return ops.mean(kl)

    def _validate_kl(self, q, prior, scope):
        if self.prior is None:
            return
        if objectives.is_multi_sample(scope.objective) and self.kl == "analytic":
            raise ValueError(
                f"Latent {self.name!r}: kl='analytic' cannot be used with objective="
                f"{scope.objective!r}, which needs log p(z) - log q(z) at every sample. Use "
                "kl='auto' or kl='mc'."
            )
        if self.kl == "analytic":
            divergences.analytic_kl(q, prior)

    def compute_output_spec(self, inputs, training=None, prior_params=None):
        probe = self.make_distribution(ops.zeros([1 if d is None else d for d in inputs.shape]))
        if prior_params is not None:  # checked when the graph is built, not at the first step
            self._check_prior_params(prior_params)
            rows = inputs.shape[0] or 1
            self.prior_distribution(probe, ops.zeros((rows, *prior_params.shape[1:])))

        def spec(event_shape, dtype):
            dtype = keras.backend.standardize_dtype(dtype)
            return keras.KerasTensor(
                (inputs.shape[0], *event_shape),
                dtype=self.compute_dtype if _is_floating(dtype) else dtype,
            )

        # A joint q has one event shape and dtype per part: the output is that structure.
        shapes = []
        tree.map_shape_structure(lambda shape: shapes.append(tuple(shape)), probe.event_shape)
        dtypes = tree.flatten(probe.dtype)
        specs = [spec(shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        if not tree.is_nested(probe.dtype):
            return specs[0]
        return tree.pack_sequence_as(probe.dtype, specs)

    def get_config(self):
        from keras_vi._serialization import serialize

        config = super().get_config()
        owner = f"{type(self).__name__} {self.name!r}"
        config.update(
            {
                "distribution_fn": None
                if self.distribution_fn is None
                else serialize(self.distribution_fn, "distribution_fn", owner),
                "prior": None if self.prior is None else serialize(self.prior, "prior", owner),
                "estimator": self.estimator
                if isinstance(self.estimator, str)
                else serialize(self.estimator, "estimator", owner),
                "kl": self.kl,
                "kl_samples": self.kl_samples,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("distribution_fn", "prior", "estimator"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _kl_disabled() -> bool:
    """Whether the caller asked stochastic layers to skip their KL (`kvi.predict_samples`)."""
    return getattr(bayesian._state, "kl_disabled", False)


def _check_width(layer: Latent, input_shape, expected: int, what: str) -> None:
    width = input_shape[-1]
    if width is not None and width != expected:
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r} expects an input of width {expected} "
            f"({what}), got {width}."
        )


def _check_positive_int(value, name: str, owner: str) -> int:
    return _checks.positive_int(value, name, owner)


def _is_floating(dtype) -> bool:
    return "float" in keras.backend.standardize_dtype(dtype)


@keras.saving.register_keras_serializable(package="keras_vi")
class NormalLatent(Latent):
    """A diagonal Gaussian latent of `units` dimensions, standard-normal prior by default.

    The input has width 2 * units: the first half is the mean, the second half passes
    through softplus (plus `min_scale`) to give the standard deviation.

    Args:
        units: latent dimensions, a positive integer.
        prior: as in `Latent`; default `"standard_normal"`.
        min_scale: floor added to the standard deviation (>= 0), so q never collapses to a
            point and log q stays finite.
        **kwargs: `Latent` arguments (`estimator`, `kl`, `kl_samples`, `seed`) and base
            `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> params = keras.layers.Dense(2 * 16)(h)  # 16 locations, 16 raw scales
        >>> z = kvi.layers.NormalLatent(16, name="z")(params)
        >>> z.shape
        (None, 16)

        A prior that depends on another latent, p(z1 | z2), from `prior_params` (loc and raw
        scale, as q's input):

        >>> z2 = kvi.layers.NormalLatent(2, name="z2")(keras.layers.Dense(4)(h))
        >>> z1 = kvi.layers.NormalLatent(3, name="z1")(
        ...     keras.layers.Dense(6)(h), prior_params=keras.layers.Dense(6)(z2))
        >>> z1.shape
        (None, 3)
    """

    reparameterized = True

    def __init__(
        self, units: int, prior: Any = "standard_normal", min_scale: float = 1e-5, **kwargs
    ):
        super().__init__(prior=prior, **kwargs)
        self.units = _check_positive_int(units, "units", "NormalLatent")
        if not min_scale >= 0:
            raise ValueError(f"NormalLatent: `min_scale` must be >= 0, got {min_scale}.")
        self.min_scale = float(min_scale)

    def build(self, input_shape):
        _check_width(self, input_shape, 2 * self.units, "loc and scale")
        super().build(input_shape)

    def make_distribution(self, inputs):
        loc, raw_scale = ops.split(inputs, 2, axis=-1)
        scale = ops.softplus(raw_scale) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def make_prior(self, prior_params):
        """p(z | prior_params): loc and softplus scale (plus `min_scale`), as q reads its input."""
        if not isinstance(self.prior, priors.StandardNormal):
            raise ValueError(
                f"NormalLatent {self.name!r} was given both prior={self.prior!r} and "
                "`prior_params`; with `prior_params` the prior is the Normal they parameterize. "
                "Leave `prior` at its default."
            )
        width = prior_params.shape[-1]
        if width is not None and width != 2 * self.units:
            raise ValueError(
                f"NormalLatent {self.name!r} expects `prior_params` of width {2 * self.units} "
                f"(loc and scale of its {self.units} units), got {width}."
            )
        return self.make_distribution(prior_params)

    def get_config(self):
        config = super().get_config()
        config.pop("distribution_fn")
        return {**config, "units": self.units, "min_scale": self.min_scale}


@keras.saving.register_keras_serializable(package="keras_vi")
class BernoulliLatent(Latent):
    """`units` independent binary latents from logits, uniform (fair-coin) prior by default.

    Not reparameterizable: `"auto"` picks the score-function estimator with a moving average.

    Args:
        units: binary latents, a positive integer; the input is `units` logits.
        prior: as in `Latent`; default `"uniform"` (probability 1/2 per unit).
        **kwargs: `Latent` arguments (`estimator`, `kl`, `kl_samples`, `seed`) and base
            `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> z = kvi.layers.BernoulliLatent(200, name="bits")(keras.layers.Dense(200)(h))
        >>> z.shape
        (None, 200)
    """

    reparameterized = False

    def __init__(self, units: int, prior: Any = "uniform", **kwargs):
        super().__init__(prior=prior, **kwargs)
        self.units = _check_positive_int(units, "units", "BernoulliLatent")

    def build(self, input_shape):
        _check_width(self, input_shape, self.units, "logits")
        super().build(input_shape)

    def make_distribution(self, inputs):
        return tfd.Independent(tfd.Bernoulli(logits=inputs, dtype="float32"), 1)

    def get_config(self):
        config = super().get_config()
        config.pop("distribution_fn")
        return {**config, "units": self.units}


@keras.saving.register_keras_serializable(package="keras_vi")
class CategoricalLatent(Latent):
    """One or several categorical latents from logits; returns one-hot samples.

    Args:
        num_classes: classes per variable.
        num_variables: None for one variable (input width `num_classes`, output
            `[batch, num_classes]`), or V independent variables (input width
            `V * num_classes`, output flattened to `[batch, V * num_classes]`).
        prior: as in `Latent`; default `"uniform"` (equal class probabilities).
        **kwargs: `Latent` arguments (`estimator`, `kl`, `kl_samples`, `seed`) and base
            `keras.layers.Layer` arguments (`name`, ...).

    Example:
        >>> z = kvi.layers.CategoricalLatent(10, num_variables=20, estimator="score_function")(
        ...     keras.layers.Dense(200)(h))
        >>> z.shape  # 20 one-hot variables of 10 classes, flattened
        (None, 200)
    """

    reparameterized = False

    def __init__(
        self, num_classes: int, num_variables: int | None = None, prior: Any = "uniform", **kwargs
    ):
        super().__init__(prior=prior, **kwargs)
        owner = type(self).__name__
        self.num_classes = _check_positive_int(num_classes, "num_classes", owner)
        self.num_variables = (
            None
            if num_variables is None
            else _check_positive_int(num_variables, "num_variables", owner)
        )

    def build(self, input_shape):
        _check_width(self, input_shape, self.num_classes * (self.num_variables or 1), "logits")
        super().build(input_shape)

    def _logits(self, inputs):
        if self.num_variables is None:
            return inputs
        return ops.reshape(inputs, (-1, self.num_variables, self.num_classes))

    def make_distribution(self, inputs):
        q = tfd.OneHotCategorical(logits=self._logits(inputs), dtype="float32")
        return q if self.num_variables is None else tfd.Independent(q, 1)

    def call(self, inputs, training=None, prior_params=None):
        return self._flatten(super().call(inputs, training=training, prior_params=prior_params))

    def _flatten(self, z):
        """[batch, V, classes] samples -> [batch, V * classes] (one variable: unchanged)."""
        if self.num_variables is None:
            return z
        return ops.reshape(z, (-1, self.num_variables * self.num_classes))

    def compute_output_spec(self, inputs, training=None, prior_params=None):
        width = self.num_classes * (self.num_variables or 1)
        return keras.KerasTensor((inputs.shape[0], width), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("distribution_fn")
        return {**config, "num_classes": self.num_classes, "num_variables": self.num_variables}

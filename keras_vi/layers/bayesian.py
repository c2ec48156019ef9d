"""The shared machinery of Bayesian (weight-uncertainty) layers.

A Bayesian layer keeps a mean-field normal posterior q(w) = N(loc, softplus(raw_scale)²)
over each of its weight tensors (kernel and bias) and a prior p(w). Every call draws noise
(how depends on the layer: one weight sample, Flipout, or local reparameterization) and
reports KL(q || p) summed over its weights:

* inside a `kvi.VariationalModel` step, to the model's step scope, which adds it to the
  objective divided by the dataset size N and multiplied by the KL weight;
* elsewhere, through `add_loss(KL / num_examples)` only when the layer was given
  `num_examples` (for plain `keras.Model` training); otherwise the KL is not computed.

The concrete layers live in `bayesian_dense.py` and `bayesian_conv.py`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import keras
from keras import ops

from keras_vi import _checks, _prediction, _random, _scope, _serialization, divergences, priors
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random

__all__ = ["BayesianLayer"]

# Floor added to softplus(raw_scale) so a posterior scale never reaches exactly zero.
MIN_SCALE = 1e-6


# The Args entries every concrete Bayesian layer shares, for `with_args` (entries at column
# 0, continuation lines indented by 4).
WEIGHT_ARGS = """\
kernel_initializer: initializer of the kernel's posterior mean.
bias_initializer: initializer of the bias's posterior mean.
kernel_constraint: constraint on the kernel's posterior mean.
bias_constraint: constraint on the bias's posterior mean.
prior: prior over the weights: `"standard_normal"` (default), a `kvi.priors.Prior`
    such as `kvi.priors.ScaleMixture(0.5, 1.0, 0.0025)` (Monte Carlo KL) or
    `kvi.priors.LearnableNormal()` (empirical Bayes), or a `tfd.Distribution`.
bias_prior: prior over the bias; None uses `prior`.
posterior_scale_init: initial posterior standard deviation (> 0; default 0.05).
kl: `"auto"`, `"analytic"` or `"mc"`; how KL(q || p) is computed.
kl_samples: draws per Monte Carlo KL estimate.
num_examples: dataset size N, only for training in a plain `keras.Model`: each call
    outside a `kvi.VariationalModel` then adds KL / N through `add_loss`.
seed: optional int for the layer's `keras.random.SeedGenerator`.
**kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
"""


def with_args(args: str):
    """Class decorator: puts the shared `args` entries where the docstring says `{args}`."""

    def decorate(cls):
        indented = "\n".join(("        " + line) if line else "" for line in args.splitlines())
        cls.__doc__ = cls.__doc__.replace("        {args}", indented)
        return cls

    return decorate


def standard_normal(shape, seed: Any) -> Any:
    """float32 N(0, 1) draws from a stateless seed.

    Zeros when the model predicts with `prediction="mean"`: every layer's weight noise then
    vanishes, so each computes its output at the posterior-mean weights.
    """
    if _prediction.point_estimates():
        return ops.zeros(shape, "float32")
    return backend_random.normal(shape, seed, "float32")


_state = threading.local()


@contextlib.contextmanager
def kl_disabled():
    """Within this context (at trace time), Bayesian layers skip computing their weight KL.

    Used by `kvi.predict_samples`, which only needs the layers' outputs. It is a sampling
    pass, so it also keeps every stochastic layer drawing when the model's
    `prediction="mean"`.
    """
    previous = getattr(_state, "kl_disabled", False)
    _state.kl_disabled = True
    try:
        with _prediction.sampling():
            yield
    finally:
        _state.kl_disabled = previous


def random_signs(shape, seed: Any) -> Any:
    """Independent +-1 entries (Rademacher), float32, from a stateless seed."""
    bits = backend_random.uniform(shape, seed, dtype="int32", minval=0, maxval=2)
    return ops.cast(2 * bits - 1, "float32")


def known_last_dimension(layer, input_shape) -> int:
    """The input's last dimension, which a dense Bayesian layer's weights need at build."""
    input_dim = input_shape[-1] if len(input_shape) else None
    if input_dim is None:
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r} needs a known last input dimension, got "
            f"input shape {tuple(input_shape)}."
        )
    return int(input_dim)


def _softplus_inverse(x: float) -> float:
    return float(x + math.log(-math.expm1(-x)))


def _dims(shape) -> tuple | None:
    """A distribution shape (TensorShape or tuple) as a tuple; None when its rank is unknown."""
    try:
        return tuple(shape)
    except (TypeError, ValueError):
        return None


def _resolve_prior(prior: Any, argument: str, owner: str):
    if prior is None:
        raise ValueError(
            f"{owner}: `{argument}` must not be None: a Bayesian layer needs a prior over its "
            "weights. Use 'standard_normal', a kvi.priors.Prior such as "
            "kvi.priors.ScaleMixture(...), or a tfd.Distribution."
        )
    resolved = priors.get(prior)
    if not callable(resolved):
        raise ValueError(
            f"{owner}: `{argument}` must resolve to a callable q -> distribution, got "
            f"{type(resolved).__name__}."
        )
    return resolved


def _serialize_prior(prior: Any, argument: str, layer: Any) -> Any:
    if isinstance(prior, str):
        return prior
    return _serialization.serialize(prior, argument, f"{type(layer).__name__} {layer.name!r}")


@keras.saving.register_keras_serializable(package="keras_vi")
class BayesianLayer(_random.SeedStateMixin, keras.layers.Layer):
    """Base class of the Bayesian layers: posteriors, priors, the weight KL and its reporting.

    Subclasses create their weights in `build` with `add_posterior(...)` and, in `call`,
    draw a seed with `next_seeds()`, compute their output and call `report_kl(seed)`.

    Args:
        prior: prior over the kernel (and over the bias unless `bias_prior` is given):
            `"standard_normal"`, a `kvi.priors.Prior` (`Normal`, `ScaleMixture`,
            `LearnableNormal`, ...), a `tfd.Distribution` (scalar, applied elementwise, or
            with the weight's shape as event shape; not serializable), or a callable
            q -> distribution.
        bias_prior: prior over the bias; None uses `prior`.
        posterior_scale_init: initial posterior standard deviation of every weight (> 0;
            default 0.05, about TFP's softplus(-3)). Small values start training close to a
            deterministic network; the KL term then widens what the data leave undetermined.
        kl: `"auto"` (closed form when TFP has one, e.g. a normal prior; Monte Carlo
            otherwise, e.g. a scale mixture), `"analytic"` or `"mc"`.
        kl_samples: posterior draws per Monte Carlo KL estimate.
        num_examples: only for plain `keras.Model` training: when set, every call outside a
            `kvi.VariationalModel` step adds KL / num_examples to `layer.losses`. Inside a
            `VariationalModel` it is ignored (the model scales by its own N).
        seed: optional int seeding this layer's `keras.random.SeedGenerator`.

    Example:
        >>> class MyBayesianScale(kvi.layers.BayesianLayer):
        ...     def build(self, input_shape):
        ...         self.add_posterior("kernel", (input_shape[-1],), "ones")
        ...     def call(self, x):
        ...         seeds = self.next_seeds(2)
        ...         self.report_kl(seeds[1])
        ...         return x * self.sample_weight("kernel", seeds[0])
        >>> scale = MyBayesianScale()
        >>> tuple(scale(keras.ops.ones((2, 3))).shape)
        (2, 3)
        >>> [w.name for w in scale.trainable_weights]  # the posterior's mean and raw scale
        ['kernel_loc', 'kernel_raw_scale']
    """

    def __init__(
        self,
        prior: Any = "standard_normal",
        bias_prior: Any = None,
        posterior_scale_init: float = 0.05,
        kl: str = "auto",
        kl_samples: int = 1,
        num_examples: int | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.prior = _resolve_prior(prior, "prior", owner)
        self.bias_prior = (
            None if bias_prior is None else _resolve_prior(bias_prior, "bias_prior", owner)
        )
        self.posterior_scale_init = _checks.finite_number(
            posterior_scale_init, "posterior_scale_init", owner, minimum=MIN_SCALE, exclusive=True
        )
        self.kl = divergences.check_kl_method(kl, "kl")
        self.kl_samples = _checks.positive_int(kl_samples, "kl_samples", owner)
        self.num_examples = (
            None
            if num_examples is None
            else _checks.positive_int(num_examples, "num_examples", owner)
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{owner}: `seed` must be None or an int, got {seed!r}.")
        self.seed = seed
        self.seed_generator = _random.make_seed_generator(seed, self.name)
        self._posteriors: dict[str, tuple[Any, Any]] = {}
        self._bound_priors: dict[str, Any] = {}

    # ------------------------------------------------------------------ weights
    def add_posterior(self, name: str, shape, initializer, constraint=None) -> None:
        """Creates `<name>_loc` and `<name>_raw_scale` and binds the prior for `name`."""
        loc = self.add_weight(
            name=f"{name}_loc",
            shape=shape,
            initializer=initializer,
            constraint=constraint,
            dtype="float32",
            autocast=False,  # float32 maths even under mixed precision
        )
        raw_scale = self.add_weight(
            name=f"{name}_raw_scale",
            shape=shape,
            initializer=keras.initializers.Constant(
                _softplus_inverse(self.posterior_scale_init - MIN_SCALE)
            ),
            dtype="float32",
            autocast=False,  # float32 maths even under mixed precision
        )
        self._posteriors[name] = (loc, raw_scale)
        prior = self.prior if name == "kernel" or self.bias_prior is None else self.bias_prior
        bind = getattr(prior, "bind", None)
        self._bound_priors[name] = bind(self, name) if callable(bind) else prior
        # Check the prior now (shape, dtype, closed form) rather than at the first step.
        q, p = self._aligned(name)
        if self.kl == "analytic":
            divergences.analytic_kl(q, p)

    @property
    def weight_names(self) -> list[str]:
        """Names of the weight tensors with a posterior, e.g. `["kernel", "bias"]`."""
        return list(self._posteriors)

    def posterior_loc(self, name: str) -> Any:
        """The posterior mean of weight `name` (e.g. `"kernel"`), a float32 tensor."""
        return ops.convert_to_tensor(self._posteriors[name][0])

    def posterior_scale(self, name: str) -> Any:
        """softplus(raw_scale) + 1e-6, the posterior standard deviation of weight `name`."""
        return ops.softplus(ops.convert_to_tensor(self._posteriors[name][1])) + MIN_SCALE

    def posterior(self, name: str) -> tfd.Distribution:
        """q(w) for weight `name`: independent normals with the weight's shape as event shape."""
        loc = self.posterior_loc(name)
        return tfd.Independent(
            tfd.Normal(loc, self.posterior_scale(name)),
            reinterpreted_batch_ndims=len(loc.shape),
        )

    def prior_distribution(self, name: str) -> tfd.Distribution:
        """p(w) for weight `name`, as the prior returns it for that weight's posterior."""
        return self._bound_priors[name](self.posterior(name))

    # ------------------------------------------------------------------ KL
    def _aligned(self, name: str):
        """(q, p) over the same random variables, ready for a KL.

        An i.i.d. prior (one with `element_distribution`) and a scalar prior (or one whose
        batch shape matches the weight) are compared element by element; a prior with the
        weight's event shape is used as is.
        """
        q = self.posterior(name)
        prior = self._bound_priors[name]
        element = getattr(prior, "element_distribution", None)
        element = element("float32") if callable(element) else None
        if element is not None:  # an i.i.d. prior: broadcast one element's distribution
            return q.distribution, element
        p = prior(q)
        if not isinstance(p, tfd.Distribution):
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the prior of {name!r} must give a "
                f"tfd.Distribution, got {type(p).__name__}."
            )
        dtype = keras.backend.standardize_dtype(p.dtype)
        if dtype != "float32":
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: the prior of {name!r} must be float32, "
                f"got {dtype}."
            )
        event, batch = _dims(p.event_shape), _dims(p.batch_shape)
        if event == _dims(q.event_shape) and batch == ():
            return q, p
        if event == () and batch in ((), _dims(q.event_shape)):
            return q.distribution, p
        raise ValueError(
            f"{type(self).__name__} {self.name!r}: the prior of {name!r} has batch shape "
            f"{p.batch_shape} and event shape {p.event_shape}; expected a scalar distribution "
            f"(applied to every element) or one with event shape {q.event_shape}."
        )

    def _tensor_kl(self, name: str, seed: Any) -> Any:
        q, p = self._aligned(name)
        method = self.kl
        if method == "auto":
            method = "analytic" if divergences.has_analytic_kl(q, p) else "mc"
        if method == "analytic":
            return ops.sum(divergences.analytic_kl(q, p))
        # Reparameterized draws w = loc + scale * eps (q is normal, elementwise or Independent).
        w = self.sample_weight(name, seed, leading=(self.kl_samples,))
        log_ratio = ops.reshape(q.log_prob(w) - p.log_prob(w), (self.kl_samples, -1))
        return ops.mean(ops.sum(log_ratio, axis=1))

    def weight_kl(self, seed: Any) -> Any:
        """KL(q || p) summed over all weight tensors (float32 scalar; Monte Carlo needs `seed`)."""
        total = ops.zeros((), "float32")
        for i, name in enumerate(self._posteriors):
            total += self._tensor_kl(name, backend_random.fold_in(seed, i))
        return total

    def kl_divergence(self, seed: Any = None) -> Any:
        """The layer's current weight KL: closed form, or a Monte Carlo estimate.

        Args:
            seed: an int, an int32[2] stateless seed, or None to draw from the layer's own
                seed generator (only used by a Monte Carlo estimate).

        Returns:
            A float32 scalar tensor.
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before computing its KL.")
        return self.weight_kl(
            backend_random.draw_seed(self.seed_generator if seed is None else seed)
        )

    def report_kl(self, seed: Any) -> None:
        """Sends this call's weight KL to the model (or to `add_loss` when asked to)."""
        if getattr(_state, "kl_disabled", False) or _prediction.point_estimates():
            return
        scope = _scope.current_scope()
        if scope is not None:
            # A layer called several times in one forward pass shares its weights: count once.
            if not any(layer is self for layer, _ in scope.weight_kls):
                scope.add_weight_kl(self, self.weight_kl(seed))
        elif self.num_examples is not None:
            self.add_loss(self.weight_kl(seed) / float(self.num_examples))

    # ------------------------------------------------------------------ helpers for call
    def next_seeds(self, n: int) -> Any:
        """n independent int32[2] seeds for this call, as an [n, 2] tensor."""
        return ops.stack(backend_random.split(backend_random.draw_seed(self.seed_generator), n))

    @staticmethod
    def num_weight_samples() -> int:
        """K, the model's samples per example inside a step (the batch is tiled K times)."""
        scope = _scope.current_scope()
        return 1 if scope is None else int(scope.num_samples)

    def sample_weight(self, name: str, seed: Any, leading=()) -> Any:
        """loc + scale * eps with eps of shape `leading + weight shape`."""
        loc = self.posterior_loc(name)
        return loc + self.posterior_scale(name) * standard_normal([*leading, *loc.shape], seed)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "prior": _serialize_prior(self.prior, "prior", self),
                "bias_prior": None
                if self.bias_prior is None
                else _serialize_prior(self.bias_prior, "bias_prior", self),
                "posterior_scale_init": self.posterior_scale_init,
                "kl": self.kl,
                "kl_samples": self.kl_samples,
                "num_examples": self.num_examples,
                "seed": self.seed,
            }
        )
        return config


class KernelBiasLayer(BayesianLayer):
    """The common part of the Bayesian dense and conv layers: a Bayesian kernel, an optional
    Bayesian bias, an activation, and a call that draws five seeds, computes the
    pre-activation (`_pre_activation(x, seeds)`, seeds 0-3), and reports the KL (seed 4).
    """

    def __init__(
        self,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def add_kernel_and_bias(self, kernel_shape, bias_shape) -> None:
        self.add_posterior("kernel", kernel_shape, self.kernel_initializer, self.kernel_constraint)
        if self.use_bias:
            self.add_posterior("bias", bias_shape, self.bias_initializer, self.bias_constraint)

    def call(self, inputs, training=None):
        seeds = self.next_seeds(5)
        outputs = self._pre_activation(ops.cast(inputs, "float32"), seeds)
        self.report_kl(seeds[4])
        if self.activation is not None:
            outputs = self.activation(outputs)
        return ops.cast(outputs, self.compute_dtype)

    def _pre_activation(self, x, seeds):
        raise NotImplementedError

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config

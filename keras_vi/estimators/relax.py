"""RELAX: score-function gradients with a learned, reparameterized control variate for
Bernoulli and categorical latents (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018), and REBAR
(Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017), its special case whose control
variate is the function itself at a tempered relaxation of the sample."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi import _scope, _serialization, objectives
from keras_vi.backend import distributions as tfd
from keras_vi.backend import gradients
from keras_vi.backend import random as backend_random
from keras_vi.estimators.base import Estimator, checks_training_setup, is_joint

__all__ = ["RELAX", "REBAR", "ControlVariate"]

_TINY = float(np.finfo(np.float32).tiny)
# Folded into the latent's sampling seed: the surrogate's relaxation noise is a stream of
# its own, independent of the draw of b.
_NOISE_TAG = 0x52454C58


def _base(q: tfd.Distribution):
    """("bernoulli" | "categorical", the distribution inside q's `Independent`s), or None."""
    base = q
    while isinstance(base, tfd.Independent):
        base = base.distribution
    if isinstance(base, tfd.Bernoulli):
        return "bernoulli", base
    if isinstance(base, tfd.OneHotCategorical):
        return "categorical", base
    return None


def _bernoulli_conditional(logits, noise, b):
    """z ~ p(z | b) for z = logits + Logistic noise and b = 1[z > 0], from uniforms `noise`.

    In log space: v = 1 - p + noise * p given b = 1, v = noise * (1 - p) given b = 0, and
    z = logits + log v - log(1 - v); differentiable in the logits with the noise held fixed.
    """
    log_p, log_not_p = ops.log_sigmoid(logits), ops.log_sigmoid(-logits)
    log_n, log_not_n = ops.log(noise), ops.log1p(-noise)
    one = b > 0.5
    log_v = ops.where(one, ops.logaddexp(log_not_p, log_n + log_p), log_not_p + log_n)
    log_not_v = ops.where(one, log_p + log_not_n, ops.logaddexp(log_p, log_not_n + log_not_p))
    return logits + log_v - log_not_v


def _categorical_conditional(log_probs, noise, b):
    """z ~ p(z | b) for z = log_probs + Gumbel noise and b = one_hot(argmax z).

    The maximum, at the class k of b, is a standard Gumbel (log_probs are normalized); the
    others are Gumbels of locations log_probs truncated below it:
    z_k = -log E_k, z_i = -log(E_i exp(-log_probs_i) + E_k), E = -log(noise).
    """
    log_e = ops.log(-ops.log(noise))
    log_e_k = ops.sum(b * log_e, axis=-1, keepdims=True)
    others = -ops.logaddexp(log_e - log_probs, log_e_k)
    return ops.where(b > 0.5, -log_e_k, others)


def relaxed_log_prob(q: tfd.Distribution, value):
    """log q(v) of a relaxed value v (in [0, 1], or on the simplex) by the Bernoulli or
    categorical formula, q's logits held fixed: shape [*sample, *q.batch_shape]."""
    kind, base = _base(q)
    logits = ops.stop_gradient(ops.cast(base.logits_parameter(), "float32"))
    if kind == "bernoulli":
        elementwise = value * ops.log_sigmoid(logits) + (1.0 - value) * ops.log_sigmoid(-logits)
    else:
        elementwise = ops.sum(value * ops.log_softmax(logits, axis=-1), axis=-1)
    rank = len(value.shape) - len(q.event_shape)
    extra = tuple(range(rank, len(elementwise.shape)))
    return ops.sum(elementwise, axis=extra) if extra else elementwise


def _tempered(kind: str, z, temperature):
    """sigma(z / lambda) for Bernoulli, softmax(z / lambda) for categorical."""
    if kind == "bernoulli":
        return ops.sigmoid(z / temperature)
    return ops.softmax(z / temperature, axis=-1)


@keras.saving.register_keras_serializable(package="keras_vi")
class ControlVariate(keras.layers.Layer):
    """RELAX's control variate c_phi, owned by a `RELAX` estimator and tracked by its latent.

    c_phi(z) = r(z) + eta * f(sigma(z / lambda)): a network r (omitted by `REBAR`) plus, with
    `rebar=True`, REBAR's term, the learning signal f at a tempered relaxation of z, with a
    learned scale eta (`rebar_scale`, starting at 1) and temperature lambda (`log_temperature`,
    starting at `temperature`).

    The network maps `[rows, 2 * width]` (a row's relaxed sample z, flattened, then its logits
    with the gradient stopped) to `[rows, 1]`; `width` is the latent layer's input width (its
    logits), or the event size of q inside `kvi.expectation`.

    Args:
        network: a Keras layer or model, None for one tanh hidden layer of `hidden_units`, or
            False for no network (REBAR alone; needs `rebar=True`).
        hidden_units: width of the default network's hidden layer.
        rebar: whether c_phi adds REBAR's term eta * f(sigma(z / lambda)).
        temperature: lambda's starting value (with `rebar=True`).

    Example:
        >>> cv = kvi.estimators.relax.ControlVariate(hidden_units=8)
        >>> cv.build((None, 3))
        >>> tuple(cv(keras.ops.zeros((5, 6))).shape)  # a row: z and the logits, 3 + 3
        (5, 1)
    """

    def __init__(
        self,
        network: keras.layers.Layer | None | bool = None,
        hidden_units: int = 64,
        rebar: bool = False,
        temperature: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        if (
            network is not None
            and network is not False
            and not isinstance(network, keras.layers.Layer)
        ):
            raise ValueError(
                "RELAX: `control_variate` must be a Keras layer or model mapping "
                f"[rows, 2 * width] to [rows, 1], or None; got {type(network).__name__}."
            )
        if isinstance(hidden_units, bool) or not isinstance(hidden_units, int) or hidden_units < 1:
            raise ValueError(
                f"RELAX: `hidden_units` must be a positive integer, got {hidden_units!r}."
            )
        if not isinstance(rebar, bool):
            raise ValueError(f"RELAX: `rebar` must be True or False, got {rebar!r}.")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not np.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                f"RELAX: `temperature` must be a positive finite number, got {temperature!r}."
            )
        if network is False and not rebar:
            raise ValueError("RELAX: a control variate without a network needs `rebar=True`.")
        self.custom = isinstance(network, keras.layers.Layer)
        self.hidden_units = hidden_units
        self.rebar = rebar
        self.temperature = float(temperature)
        if network is None:
            network = keras.Sequential(
                [keras.layers.Dense(hidden_units, activation="tanh"), keras.layers.Dense(1)],
                name="control_variate",
            )
        self.network = None if network is False else network
        self.width = None
        if rebar:
            self.rebar_scale = self.add_weight(
                shape=(), initializer="ones", name="rebar_scale", dtype="float32"
            )
            self.log_temperature = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(float(np.log(temperature))),
                name="log_temperature",
                dtype="float32",
            )

    def validate(self, *, num_samples: int, objective: Any = "elbo") -> None:
        """Any number of samples serves (the baseline interface latents call)."""
        del num_samples, objective

    def build(self, input_shape=None):
        # `input_shape` is the latent's input (its logits); without it (a swapped-in
        # estimator's diagnostics), the first surrogate builds the network.
        width = None if input_shape is None else input_shape[-1]
        if width is None or self.width is not None:
            return
        self.width = int(width)
        if self.network is not None and not self.network.built:
            self.network.build((None, 2 * self.width))

    def call(self, inputs):
        return self.network(inputs)

    def options(self) -> dict:
        """The constructor arguments (the network serialized when it is a custom one)."""
        network = False if self.network is None else None
        if self.custom:
            network = _serialization.serialize(self.network, "control_variate", "RELAX")
        return {
            "network": network,
            "hidden_units": self.hidden_units,
            "rebar": self.rebar,
            "temperature": self.temperature,
        }

    def get_config(self):
        return {**super().get_config(), **self.options()}


@keras.saving.register_keras_serializable(package="keras_vi")
class RELAX(Estimator):
    """RELAX (Grathwohl et al. 2018): unbiased gradients for Bernoulli and categorical latents
    with a learned control variate c_phi, trained in the same step to minimise the variance.

    b ~ q is drawn as usual. z is the continuous relaxation behind it (logits plus Logistic
    noise for Bernoulli, whose sign is b; normalized logits plus Gumbel noise for categorical,
    whose argmax is b), drawn given b, its noise held fixed when differentiated; z~ is a
    second draw from p(z | b), differentiated with its uniforms held fixed. For the logits a
    of a row, the estimate is

        g = [f(b) - c(z~)] d log q(b) / da + d c(z) / da - d c(z~) / da,

    unbiased for every phi; f is the per-sample learning signal (the ELBO's log-weight, as for
    `ScoreFunction`). phi descends d/dphi of sum_i g_i^2 (averaged over samples and examples
    like the ELBO): the mean of g does not depend on phi, so this is the variance's gradient.
    Both reach the model through the surrogate (value removed), so the reported ELBO is the
    usual one.

    c_phi is a network r(z) and, with `rebar=True`, REBAR's term eta * f(sigma(z / lambda)):
    f at a tempered relaxation of z (the RELAX paper's form for its toy problems). A constant
    part of r (the network's bias) acts as a learned baseline. REBAR's term needs f away from
    the discrete b, which only `kvi.expectation(fn, ...)` can evaluate (it calls `fn` at the
    relaxed values, so `fn` must accept values in [0, 1], or on the simplex, and treat the
    draws independently); a `VariationalModel` runs its decoder at b alone and refuses
    `rebar=True`. eta and lambda descend the variance too, through the estimate alone: fn's
    own variables get no gradient from it.

    r sees a row's relaxed sample z (flattened) and its logits (gradient stopped). c_phi is
    a Keras layer the latent tracks, trains and saves with the model; give each latent its
    own `RELAX()` object. Its gradient is that of a squared gradient estimate, large in
    scale; an adaptive optimizer (Adam) takes it in stride, a global-norm clip would be
    dominated by it. Inside `kvi.expectation` the control variate is built on the first call
    (on JAX, build it before compiling: `est.control_variate.build((None, width))`).

    Needs a Bernoulli or one-hot categorical q (`kvi.layers.BernoulliLatent`,
    `kvi.layers.CategoricalLatent`, or an `Independent` of one) and `objective="elbo"`; any
    `num_samples`.

    Args:
        control_variate: None for the default network (one tanh hidden layer of
            `hidden_units`, then one output), or a Keras layer or model mapping
            `[rows, 2 * width] -> [rows, 1]` (width: the latent's logits per example).
        hidden_units: hidden width of the default network.
        rebar: whether c_phi adds REBAR's term (`kvi.expectation` only).
        temperature: REBAR's starting temperature lambda.

    Example:
        >>> z = kvi.layers.BernoulliLatent(16, estimator=kvi.estimators.RELAX())(
        ...     keras.layers.Dense(16)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(z), likelihood="bernoulli")
    """

    alias = "relax"

    def __init__(
        self,
        control_variate: keras.layers.Layer | None = None,
        hidden_units: int = 64,
        rebar: bool = False,
        temperature: float = 0.5,
    ):
        self.baseline = ControlVariate(
            control_variate, hidden_units=hidden_units, rebar=rebar, temperature=temperature
        )

    @property
    def control_variate(self) -> ControlVariate:
        """c_phi (the layer the latent tracks as its `baseline`)."""
        return self.baseline

    def validate(self, q: tfd.Distribution, *, objective: Any, num_samples: int) -> None:
        super().validate(q, objective=objective, num_samples=num_samples)
        name = type(self).__name__
        if is_joint(q) or _base(q) is None:
            raise ValueError(
                f"estimator={name}() is defined for Bernoulli and categorical latents: expected "
                "q to be tfd.Bernoulli or tfd.OneHotCategorical, or an Independent of one "
                "(kvi.layers.BernoulliLatent, kvi.layers.CategoricalLatent), got "
                f"{type(q).__name__}. Use estimator='reparameterization' for a continuous q, "
                "or 'score_function' for other discrete q."
            )
        if checks_training_setup() and objectives.is_multi_sample(objective):
            raise ValueError(
                f"estimator={name}() estimates gradients of the ELBO; objective={objective!r} "
                "is not supported (its K samples share one learning signal, the bound). Use "
                "objective='elbo', or estimator='vimco' for the IWAE bound."
            )
        # Latents validate inside a model's step scope; kvi.expectation before opening its own.
        if self.baseline.rebar and _scope.current_scope() is not None:
            raise ValueError(self._needs_fn_message())

    def _needs_fn_message(self) -> str:
        return (
            f"estimator={self!r} evaluates the learning signal at a relaxed, non-binary "
            "sample, which only kvi.expectation(fn, q, ...) can do (it calls fn there); a "
            "VariationalModel runs its decoder at the discrete draw alone. Use RELAX() "
            "without REBAR's term in a model."
        )

    def surrogate(self, site, signals) -> Any:
        """sum_i stop(g_i) a_i (the encoder's gradient) plus or minus sum_i g_i^2, whose
        gradient reaches only phi (the logits, noise and f are held fixed in it)."""
        if not signals.training:
            return None
        cv = self.baseline
        relaxed_signal = getattr(signals, "relaxed_signal_fn", None)
        if cv.rebar and relaxed_signal is None:
            raise ValueError(self._needs_fn_message())
        kind, base = _base(site.q)
        signal = ops.stop_gradient(signals.learning_signal(site))
        logits = ops.cast(base.logits_parameter(), "float32")
        b = ops.cast(ops.stop_gradient(site.z), "float32")
        if signals.layout == "samples":
            logits = ops.broadcast_to(logits[None], ops.shape(b))
        else:
            logits = signals.to_samples(logits)
            b = signals.to_samples(b)
        fixed = ops.stop_gradient(logits)
        event_axes = tuple(range(len(signal.shape), len(b.shape)))
        width = int(np.prod([b.shape[axis] for axis in event_axes]))
        self._check_width(width, site)

        def per_element(per_sample):
            for _ in event_axes:
                per_sample = ops.expand_dims(per_sample, -1)
            return per_sample

        seed = backend_random.fold_in(site.seed, _NOISE_TAG)
        noise = backend_random.uniform(
            (2, *ops.shape(b)), seed, "float32", minval=_TINY, maxval=1.0
        )
        u, v = noise[0], noise[1]
        if kind == "bernoulli":
            normalize = lambda a: a  # noqa: E731
            conditional = _bernoulli_conditional
            score = b - ops.sigmoid(fixed)
        else:
            normalize = lambda a: ops.log_softmax(a, axis=-1)  # noqa: E731
            conditional = _categorical_conditional
            score = b - ops.softmax(fixed, axis=-1)
        fixed_normal = normalize(fixed)
        # z keeps its noise (z - a) fixed; z~ keeps its uniforms v fixed.
        noise_of_z = ops.stop_gradient(conditional(fixed_normal, u, b) - fixed_normal)

        def relaxed_pair(a):
            normal = normalize(a)
            return normal + noise_of_z, conditional(normal, v, b)

        estimate = per_element(signal) * score
        if cv.network is not None:
            context = ops.reshape(fixed_normal, (-1, width))
            pair_context = ops.concatenate([context, context], axis=0)

            def controls(a):
                z, z_tilde = relaxed_pair(a)
                # One pass of r over the rows of z, then those of z~.
                relaxed = ops.concatenate(
                    [ops.reshape(z, (-1, width)), ops.reshape(z_tilde, (-1, width))], axis=0
                )
                c = cv(ops.concatenate([relaxed, pair_context], axis=-1))
                c, c_tilde = ops.split(c, 2, axis=0)
                # d sum(c - c~) / da row by row; c~'s value is read back with its sign undone.
                return ops.concatenate([c, -c_tilde], axis=-1)

            values, path = gradients.value_and_input_gradient(controls, fixed)
            c_tilde = ops.reshape(-values[:, 1], ops.shape(signal))
            estimate = estimate - per_element(c_tilde) * score + path
        reduce = signals.reduce_samples
        temperature_term = 0.0
        if cv.rebar:
            # g = estimate + eta * h(lambda), h the REBAR term with eta = 1. h enters with its
            # gradient stopped, so only eta (here) and lambda (below) see the variance: f's own
            # variables must not.
            def rebar_term(log_temperature):
                temperature = ops.exp(log_temperature)

                def relaxed_signals(a):
                    z, z_tilde = relaxed_pair(a)
                    soft, soft_tilde = (
                        _tempered(kind, z, temperature),
                        _tempered(kind, z_tilde, temperature),
                    )
                    f_z = relaxed_signal(site, soft, relaxed_log_prob(site.q, soft))
                    f_tilde = relaxed_signal(site, soft_tilde, relaxed_log_prob(site.q, soft_tilde))
                    return ops.stack([f_z, -f_tilde], axis=-1)

                values, path = gradients.value_and_input_gradient(relaxed_signals, fixed)
                return per_element(values[..., 1]) * score + path

            frozen = ops.stop_gradient(estimate)
            scale = ops.stop_gradient(ops.convert_to_tensor(cv.rebar_scale))

            def variance_of(log_temperature):
                h = rebar_term(log_temperature)
                total = ops.sum(ops.square(frozen + scale * h), axis=event_axes)
                return reduce(total), h

            _, d_log_temperature, h = gradients.value_and_input_gradient(
                variance_of,
                ops.stop_gradient(ops.convert_to_tensor(cv.log_temperature)),
                has_aux=True,
            )
            estimate = estimate + cv.rebar_scale * ops.stop_gradient(h)
            temperature_term = ops.stop_gradient(d_log_temperature) * cv.log_temperature
        encoder = ops.sum(ops.stop_gradient(estimate) * logits, axis=event_axes)
        variance = ops.sum(ops.square(estimate), axis=event_axes)
        # The caller ascends the sum when it maximizes; the variance is always descended.
        sign = -1.0 if getattr(signals, "maximize", True) else 1.0
        return reduce(encoder) + sign * (reduce(variance) + temperature_term)

    def _check_width(self, width: int, site) -> None:
        cv = self.baseline
        if cv.width is None:
            cv.build((None, width))
        elif cv.width != width:
            raise ValueError(
                f"estimator={type(self).__name__}() of latent {site.name!r}: its control "
                f"variate was built for logits of width {cv.width}, but q's samples have "
                f"{width} values per row. Give each latent its own {type(self).__name__}() "
                "object (a latent whose q's event size differs from its input width needs "
                "RELAX used through kvi.expectation)."
            )

    def __repr__(self) -> str:
        cv = self.baseline
        rebar = f", rebar=True, temperature={cv.temperature:g}" if cv.rebar else ""
        if cv.custom:
            return f"RELAX(control_variate=<{cv.network.name}>{rebar})"
        return f"RELAX(hidden_units={cv.hidden_units}{rebar})"

    def get_config(self) -> dict:
        options = self.baseline.options()
        return {"control_variate": options.pop("network"), **options}

    @classmethod
    def from_config(cls, config: dict) -> RELAX:
        config = dict(config)
        if isinstance(config.get("control_variate"), dict):
            config["control_variate"] = keras.saving.deserialize_keras_object(
                config["control_variate"]
            )
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_vi")
class REBAR(RELAX):
    """REBAR (Tucker et al. 2017): RELAX whose control variate is eta * f(sigma(z / lambda))
    alone, the learning signal at a tempered relaxation of the sample (no network).

    eta starts at 1 and lambda at `temperature`; both descend the estimate's variance in the
    same step. Unbiased for every eta and lambda. It evaluates f away from the discrete b, so
    it serves `kvi.expectation(fn, q, ...)` (fn must accept relaxed values and treat the
    draws independently); a `VariationalModel` refuses it (use `RELAX()` there).

    Args:
        temperature: lambda's starting value.

    Example:
        >>> kvi.estimators.get("rebar")
        REBAR(temperature=0.5)
        >>> bit = tfd.Bernoulli(logits=keras.ops.zeros(()), dtype="float32")
        >>> value = kvi.expectation(lambda b: (b - 0.45) ** 2, bit, "rebar", num_samples=4, seed=0)
        >>> [round(0.2025 + 0.025 * k, 4) for k in range(5)].count(round(float(value), 4))
        1
    """

    alias = "rebar"

    def __init__(self, temperature: float = 0.5):
        self.baseline = ControlVariate(False, rebar=True, temperature=temperature)

    def __repr__(self) -> str:
        return f"REBAR(temperature={self.baseline.temperature:g})"

    def get_config(self) -> dict:
        return {"temperature": self.baseline.temperature}

    @classmethod
    def from_config(cls, config: dict) -> REBAR:
        return cls(**config)

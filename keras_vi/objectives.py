"""ELBO, IWAE and Rényi bounds over [K, batch] log-weights, and the estimators' learning
signals.

Rows of a tiled batch are laid out k-major: row k * B + b is sample k of example b.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
from keras import ops, tree

from keras_vi import _layout, divergences
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random

OBJECTIVES = ("elbo", "iwae")


@keras.saving.register_keras_serializable(package="keras_vi")
class Renyi:
    """The variational Rényi bound of order `alpha` (Li & Turner 2016) over K samples.

    L_alpha = 1 / (1 - alpha) * log (1/K sum_k w_k^(1 - alpha)), with w_k = p(x, z_k) / q(z_k)
    the importance weights of the K samples of one example. `alpha = 0` is the IWAE bound
    (`Renyi(0.0)` is `"iwae"`); as alpha -> 1 it tends to the ELBO, the mean of log w_k
    (`Renyi(1.0)` is `"elbo"`). For 0 < alpha < 1 it lies between the two and falls as alpha
    grows; for alpha < 0 it lies above the IWAE bound and can exceed log p(x), so it is no
    longer a lower bound. Like IWAE it needs `num_samples >= 2`, and every sample's score is
    weighted by the bound itself (the score-function estimators) or the bound is
    differentiated through the samples (reparameterization). `DoublyReparameterized()` and
    `VIMCO()` are defined for the IWAE bound only and refuse other orders.

    Args:
        alpha: a finite number. Values very close to 1 lose float32 precision (the bound
            divides by 1 - alpha): use `"elbo"` there.

    Example:
        >>> log_w = keras.ops.convert_to_tensor([[-1.0], [-3.0]])  # K = 2 samples, 1 example
        >>> [round(float(kvi.objectives.Renyi(a).bound(log_w)[0]), 4) for a in (0.0, 0.5, 0.999)]
        [-1.5662, -1.7598, -1.9995]
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli", num_samples=5,
        ...                            objective=kvi.objectives.Renyi(0.5))
    """

    def __init__(self, alpha: float):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ValueError(f"Renyi: `alpha` must be a number, got {alpha!r}.")
        if not math.isfinite(alpha):
            raise ValueError(f"Renyi: `alpha` must be finite, got {alpha!r}.")
        self.alpha = float(alpha)

    def bound(self, log_weights):
        """L_alpha per example, from log-weights of shape [K, B]."""
        log_weights = ops.convert_to_tensor(log_weights)
        scale = 1.0 - self.alpha
        k = ops.cast(ops.shape(log_weights)[0], log_weights.dtype)
        # Centring first keeps the log-sum-exp near log K, so dividing by a small 1 - alpha
        # amplifies only its rounding, not that of the log-weights' size.
        mean = ops.mean(log_weights, axis=0)
        centred = scale * (log_weights - mean)
        return mean + (ops.logsumexp(centred, axis=0) - ops.log(k)) / scale

    def get_config(self) -> dict:
        return {"alpha": self.alpha}

    @classmethod
    def from_config(cls, config: dict) -> Renyi:
        return cls(**config)

    def __eq__(self, other) -> bool:
        return isinstance(other, Renyi) and other.alpha == self.alpha

    def __hash__(self) -> int:
        return hash(("Renyi", self.alpha))

    def __repr__(self) -> str:
        return f"Renyi(alpha={self.alpha!r})"


def check_objective(objective, num_samples: int):
    """The objective in its canonical form: `"elbo"`, `"iwae"` or a `Renyi` of another order.

    A Keras config dict of a `Renyi` is deserialized; `Renyi(0)` becomes `"iwae"` and
    `Renyi(1)` `"elbo"`, so every objective has one spelling.
    """
    if isinstance(objective, dict):
        objective = keras.saving.deserialize_keras_object(objective)
    if isinstance(objective, Renyi):
        if objective.alpha == 0.0:
            objective = "iwae"
        elif objective.alpha == 1.0:
            return "elbo"
    elif objective not in OBJECTIVES:
        raise ValueError(
            f"Unknown `objective` {objective!r}; expected one of {OBJECTIVES} or "
            "kvi.objectives.Renyi(alpha)."
        )
    if is_multi_sample(objective) and num_samples < 2:
        raise ValueError(
            f"objective={objective!r} needs num_samples >= 2 (with one sample it is the ELBO), "
            f"got num_samples={num_samples}."
        )
    return objective


def is_multi_sample(objective) -> bool:
    """Whether the bound couples the K samples of an example (IWAE, Rényi) rather than
    averaging K separate ELBOs: its terms need log p - log q at every sample, and every
    sample's score-function signal is the example's bound."""
    return objective is not None and objective != "elbo"


def serialize_objective(objective):
    """A config value for an objective: the string, or a `Renyi`'s Keras config."""
    if isinstance(objective, Renyi):
        return keras.saving.serialize_keras_object(objective)
    return objective


def bound_of(objective, log_weights):
    """The bound of each example from [K, B] log-weights: the mean (ELBO), IWAE or Rényi."""
    if objective == "iwae":
        return iwae_bound(log_weights)
    if isinstance(objective, Renyi):
        return objective.bound(log_weights)
    return ops.mean(log_weights, axis=0)


def bound_samples(sites: list, objective, num_samples: int) -> int:
    """How many of the K draws per example, the first ones, form a multi-sample bound where
    gradients are estimated: fewer than K when an estimator draws dependent extra samples
    for its learning signals only (`Estimator.bound_samples`).

    Then every other latent must be one whose gradient the value carries (no surrogate of
    its own), since the extra rows are not part of the bound.
    """
    from keras_vi.estimators.base import Estimator

    counts = {site.estimator.bound_samples(objective, num_samples) for site in sites}
    count = min(counts, default=num_samples)
    if count == num_samples:
        return count
    owner = next(s for s in sites if s.estimator.bound_samples(objective, num_samples) == count)
    for site in sites:
        own = site.estimator.bound_samples(objective, num_samples)
        if own == count and type(site.estimator) is type(owner.estimator):
            continue
        if own != num_samples or type(site.estimator).surrogate is not Estimator.surrogate:
            raise ValueError(
                f"Latent {owner.name!r}: estimator={type(owner.estimator).__name__}() with "
                f"objective={objective!r} forms the bound from the first {count} of the "
                f"num_samples={num_samples} draws; latent {site.name!r} with estimator="
                f"{type(site.estimator).__name__}() would take learning signals from all "
                "of them. Give it the same estimator or a pathwise one "
                "('reparameterization', 'stl')."
            )
    return count


def check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}.")
    return num_samples


def iwae_bound(log_weights):
    """log (1/K sum_k w_k) per example, from log-weights of shape [K, B]."""
    k = ops.cast(ops.shape(log_weights)[0], log_weights.dtype)
    return ops.logsumexp(log_weights, axis=0) - ops.log(k)


@dataclasses.dataclass
class Signals:
    """What estimators may read to build their surrogates for one step.

    Per-sample values are [K, B] (samples by examples). In a model's step the latents' draws
    are K * B rows laid out k-major (`layout="rows"`); in `kvi.expectation` they already
    carry the sample axis first (`layout="samples"`).
    """

    objective: Any  # "elbo", "iwae" or a Renyi
    num_samples: int
    training: bool
    kl_weight: Any
    per_sample: Any  # [K, B]: log p(y|z) - beta * sum of KL terms (the log-weights)
    bound: Any  # [B]: ELBO (mean over k) or IWAE bound per example
    kls: dict = dataclasses.field(default_factory=dict)  # site key -> ([K, B] KL, method)
    # Whether the caller ascends the value (a bound: True); sets the direction of auxiliary
    # objectives such as a learned baseline's regression.
    maximize: bool = True
    # [B] per-example weights (Keras's `sample_weight`), or None for equal weights.
    sample_weight: Any = None
    layout: str = "rows"
    # [K, B] weights of the draws in place of 1/K (`Estimator.draw_weights`), or None.
    draw_weights: Any = None
    # site key -> log q(z) with z held fixed, where the caller computed it already.
    score_log_probs: dict = dataclasses.field(default_factory=dict)
    # site -> d sum(per_sample) / dz (gradient stopped); given by the objective builder.
    path_gradient_fn: Any = None
    # (site, relaxed value, its log q) -> the learning signal [K, B] at a relaxed, non-discrete
    # value of the site's sample (REBAR); only kvi.expectation, which holds fn, can give it.
    relaxed_signal_fn: Any = None

    def to_samples(self, flat):
        """A site's per-row values as [K, B] (rows layout), or unchanged (samples layout)."""
        if self.layout == "samples":
            return flat
        return _layout.to_samples(flat, self.num_samples)

    def reduce_samples(self, per_sample):
        """How a [K, B] score term enters the objective: mean over k for the ELBO (each
        sample estimates it alone), sum over k for IWAE (the bound depends on all K), and
        the batch reduction of the loss: the mean, or with sample weights their weighted sum
        divided by the batch size (Keras's "sum_over_batch_size")."""
        axis_k = ops.mean if self.objective == "elbo" else ops.sum
        if self.draw_weights is not None and self.objective == "elbo":
            # The weights' own gradient belongs to the value, not to a surrogate.
            per_example = ops.sum(ops.stop_gradient(self.draw_weights) * per_sample, axis=0)
        else:
            per_example = axis_k(per_sample, axis=0)
        if self.sample_weight is None:
            return ops.mean(per_example)
        batch = ops.cast(ops.shape(per_example)[0], per_example.dtype)
        return ops.sum(self.sample_weight * per_example) / batch

    def score_log_prob(self, site):
        """log q(z) of a site's samples with z held fixed, shape [K, B]."""
        if site.key in self.score_log_probs:
            return self.score_log_probs[site.key]
        held = tree.map_structure(ops.stop_gradient, site.z)  # z may be a joint q's nest
        return self.to_samples(site.q.log_prob(held))

    @property
    def normalized_weights(self):
        if self.num_samples == 1:  # softmax over one sample (Keras warns about the axis)
            return ops.ones_like(self.per_sample)
        return ops.softmax(self.per_sample, axis=0)

    def path_gradient(self, site):
        """d log w / dz for a site's samples (shaped like z), for DReG-type estimators."""
        if self.path_gradient_fn is None:
            raise ValueError(
                f"{type(site.estimator).__name__}() needs d log w / dz, which is provided "
                "in a training step of VariationalModel (or in kvi.expectation); this step "
                "does not provide it."
            )
        return self.path_gradient_fn(site)

    def learning_signal(self, site):
        """The score-function learning signal for one latent, shape [K, B] (or [1, B])."""
        if is_multi_sample(self.objective):
            return self.bound[None, :]
        signal = self.per_sample
        kl, method = self.kls.get(site.key, (None, None))
        if method == "analytic":
            # A closed-form KL does not depend on this latent's own sample: leaving it out
            # of the signal removes variance without changing the expectation.
            signal = signal + self.kl_weight * kl
        return signal


def latent_kl(site, objective, free_bits: float | None):
    """KL term of one latent: ([K*B] values, method used, per-dimension [K*B, D] or None)."""
    q, z, p = site.q, site.z, site.prior
    method = site.kl
    estimator = site.estimator
    if is_multi_sample(objective) or estimator.kl == "sample":
        method = "mc"
    elif estimator.kl == "analytic":
        # A relaxed sample (Gumbel-softmax) has no density under the categorical q: the ELBO
        # uses the closed-form KL of the categorical, as Jang et al. (2017) do.
        if method == "mc":
            raise ValueError(
                f"Latent {site.name!r}: kl='mc' cannot be used with "
                f"estimator={type(estimator).__name__}(), whose relaxed samples have no "
                "log q(z); use kl='auto' or kl='analytic' (the categorical's closed form)."
            )
        method = "analytic"
    elif method == "auto":
        method = "analytic" if divergences.has_analytic_kl(q, p) else "mc"
    per_dim = None
    if method == "analytic":
        kl = divergences.analytic_kl(q, p)
        if free_bits is not None:
            per_dim = divergences.per_dimension(q, p)
    elif site.kl_samples == 1 or is_multi_sample(objective):
        log_q = estimator.log_prob(q, z)
        kl = log_q - p.log_prob(z)
        if (
            free_bits is not None
            and isinstance(q, tfd.Independent)
            and isinstance(p, tfd.Independent)
        ):
            inner = q.distribution.log_prob(z) - p.distribution.log_prob(z)
            per_dim = ops.reshape(inner, (ops.shape(inner)[0], -1))
    else:
        seed = backend_random.fold_in(site.seed, 1)
        kl = divergences.kl(q, p, method="mc", num_samples=site.kl_samples, seed=seed)
    if free_bits is not None and per_dim is None and tree.is_nested(q.dtype):
        # A joint q (one event shape per part) has no per-dimension KL: spread its KL evenly
        # over its D dimensions, so the free-bits floor is max(free_bits * D, KL), as for any
        # latent without a per-dimension KL.
        sizes = [_num_elements(shape) for shape in _event_shapes(q)]
        if any(size is None for size in sizes):
            raise ValueError(
                f"Latent {site.name!r}: free_bits needs the event shapes of "
                f"the parts of q to be fully known, got {q.event_shape}."
            )
        num_dims = max(1, sum(sizes))
        per_dim = ops.tile(ops.cast(kl, "float32")[:, None] / num_dims, (1, num_dims))
    return kl, method, per_dim


def path_gradient_fn(tape, sites: list, per_sample):
    """site -> d sum(log w) / dz for a site's samples, taken on request from `tape`.

    Rows are independent samples, so the gradient of the sum gives each row's own
    d log w_k / d z_k (shaped like z: a structure of parts for a joint q). `tape` is the
    backend's `SampleTape` that watched the reparameterized z during the forward pass.
    """

    def gradient(site):
        if not site.estimator.reparameterized:
            raise ValueError(
                f"Latent {site.name!r}: d log w / dz needs a reparameterized sample, but "
                f"estimator={type(site.estimator).__name__}() stops its gradient."
            )
        for other in sites:
            # Latents with the same estimator whose samples depend on one another: the total
            # derivative would mix their corrections.
            if other is site or type(other.estimator) is not type(site.estimator):
                continue
            for later, earlier in ((other, site), (site, other)):
                if tape.depends(later.z, earlier.z):
                    raise ValueError(
                        f"Latent {later.name!r} depends on the sample of latent "
                        f"{earlier.name!r}, and both use {type(site.estimator).__name__}(); "
                        "its correction is defined for latents that do not depend on one "
                        "another. Use estimator='reparameterization' for one of them."
                    )
        parts = tree.flatten(site.z)
        gradients = tape.gradient(per_sample, parts)
        return tree.map_structure(ops.stop_gradient, tree.pack_sequence_as(site.z, gradients))

    return gradient


def surrogate_loss(value, sites: list, signals: Signals):
    """`value` plus the estimators' surrogates minus their values: the scalar to ascend.

    Its value is `value` (the bound or expectation); its gradient adds each estimator's
    surrogate gradient. Shared by `VariationalModel` steps and `kvi.expectation`.
    """
    surrogate = None
    for site in sites:
        term = site.estimator.surrogate(site, signals)
        if term is not None:
            surrogate = term if surrogate is None else surrogate + term
    if surrogate is None:
        return value
    return value + surrogate - ops.stop_gradient(surrogate)


def _mean_over_draws(values, draw_weights):
    """[K, B, ...] -> [B, ...]: the mean over the K draws, or their sum weighted by
    `draw_weights` ([K, B], see `Estimator.draw_weights`)."""
    if draw_weights is None:
        return ops.mean(values, axis=0)
    weights = draw_weights
    for _ in range(len(values.shape) - len(weights.shape)):
        weights = ops.expand_dims(weights, -1)
    return ops.sum(weights * values, axis=0)


def _draw_weights(scope, k: int):
    """[K, B] weights of the draws from the one latent whose estimator gives them, or None."""
    found = None
    for site in scope.latents:
        weights = site.estimator.draw_weights(site, scope)
        if weights is None:
            continue
        if found is not None:
            raise ValueError(
                f"Latents {found[0].key!r} and {site.key!r} both weight their draws "
                f"({type(found[0].estimator).__name__}(), {type(site.estimator).__name__}()); "
                "one latent per model may."
            )
        found = (site, _layout.to_samples(ops.cast(weights, "float32"), k))
    return None if found is None else found[1]


def _weighted_mean(values, sample_weight, draw_weights=None):
    """Mean of [K, B] or [B] values over every axis, example b weighted by sample_weight[b].

    With all weights zero the mean is 0 (the batch then adds nothing to the epoch means).
    """
    if draw_weights is not None and len(values.shape) == 2:
        values = _mean_over_draws(values, draw_weights)
    if sample_weight is None:
        return ops.mean(values)
    if len(values.shape) == 2:
        values = ops.mean(values, axis=0)
    return ops.divide_no_nan(ops.sum(sample_weight * values), ops.sum(sample_weight))


def compute(
    scope,
    log_likelihood_flat,
    *,
    objective,
    num_samples: int,
    kl_weight,
    free_bits: float | None,
    num_examples,
    training: bool,
    sample_weight=None,
):
    """Builds the objective of one step.

    With `sample_weight` ([B], one weight per example) every per-example term is weighted:
    the reported `elbo`, `nll`, `kl` and `kl_per_latent` are weighted means, and the loss
    follows Keras's losses (the weighted sum of the per-example negative bounds divided by
    the batch size). Weight-KLs of Bayesian layers are global terms and are not weighted.

    Returns a dict with `loss` (the scalar to differentiate: -bound plus the estimators'
    zero-valued surrogates), `loss_value` (its value: -bound), `elbo`, `nll`, `kl`,
    `kl_per_latent` (name -> mean KL), all per example; `bound` [B]; `example_weight`, the
    total weight of the batch's examples (B without sample weights).
    """
    k = num_samples
    to_kb = lambda t: _layout.to_samples(t, k)  # noqa: E731
    log_lik = to_kb(ops.cast(log_likelihood_flat, "float32"))
    kl_weight = ops.cast(kl_weight, "float32")
    batch = ops.cast(ops.shape(log_lik)[1], "float32")
    if sample_weight is not None:
        sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        example_weight = ops.sum(sample_weight)
    else:
        example_weight = batch
    # Keras scales a weighted loss by sum(w) / B relative to the weighted mean.
    loss_scale = example_weight / batch
    draw_weights = _draw_weights(scope, k)
    wmean = lambda t: _weighted_mean(t, sample_weight, draw_weights)  # noqa: E731

    kls = {}
    kl_per_latent = {}
    total_kl = ops.zeros_like(log_lik)
    free_bits_kl = ops.zeros(())
    for site in scope.latents:
        if site.prior is None:
            continue
        kl_flat, method, per_dim = latent_kl(site, objective, free_bits)
        kl_kb = to_kb(kl_flat)
        kls[site.key] = (kl_kb, method)
        name = site.name
        kl_per_latent[name] = kl_per_latent.get(name, 0.0) + wmean(kl_kb)
        total_kl = total_kl + kl_kb
        if free_bits is not None:
            if per_dim is None:
                event_size = max(1, _num_elements(site.q.event_shape) or 1)
                free_bits_kl += ops.maximum(free_bits * event_size, wmean(kl_kb))
            else:
                per_dim_kb = _layout.to_samples(per_dim, k)
                if sample_weight is None:
                    dim_means = ops.mean(_mean_over_draws(per_dim_kb, draw_weights), axis=0)
                else:
                    weighted = _mean_over_draws(per_dim_kb, draw_weights) * sample_weight[:, None]
                    dim_means = ops.divide_no_nan(ops.sum(weighted, axis=0), example_weight)
                free_bits_kl += ops.sum(ops.maximum(free_bits, dim_means))

    weight_kl = ops.zeros(())
    for _, layer_kl in scope.weight_kls:
        weight_kl += ops.cast(layer_kl, "float32")
    weight_kl = weight_kl / ops.cast(num_examples, "float32")

    per_sample = log_lik - kl_weight * total_kl
    # Where gradients are estimated, an estimator may form the bound from the first of its
    # draws only (DisARM's antithetic partners); evaluation bounds every draw.
    if is_multi_sample(objective):
        num_bound = bound_samples(scope.latents, objective, k) if training else k
        bound = bound_of(objective, per_sample[:num_bound])
        value = wmean(bound)
    else:
        bound = _mean_over_draws(per_sample, draw_weights)
        if free_bits is not None:
            value = wmean(log_lik) - kl_weight * free_bits_kl
        else:
            value = wmean(bound)
    value = loss_scale * value - kl_weight * weight_kl

    tape = scope.path_tape
    signals = Signals(
        objective=objective,
        num_samples=k,
        training=training,
        kl_weight=kl_weight,
        per_sample=per_sample,
        bound=bound,
        kls=kls,
        sample_weight=sample_weight,
        draw_weights=draw_weights,
        path_gradient_fn=None
        if tape is None
        else path_gradient_fn(tape, scope.latents, per_sample),
    )
    # Surrogates shape the gradient of a training step only. An evaluation step (test_step,
    # kvi.log_likelihood with its own objective and K) reports the value and skips them: some
    # are undefined there (VIMCO with K = 1) and none is differentiated.
    objective_value = surrogate_loss(value, scope.latents if training else [], signals)

    nll = -wmean(log_lik)
    kl = wmean(total_kl) + weight_kl
    return {
        "loss": -objective_value,
        "loss_value": -value,
        "elbo": -nll - kl,
        "nll": nll,
        "kl": kl,
        "kl_per_latent": kl_per_latent,
        "bound": bound,
        "example_weight": example_weight,
        "signals": signals,
    }


def _event_shapes(q) -> list:
    """q's event shape, one per part for a joint q (TFP gives a structure of shapes)."""
    shapes = []
    # Shapes are tuples on some backends: map_shape_structure keeps each one whole.
    tree.map_shape_structure(lambda shape: shapes.append(tuple(shape)), q.event_shape)
    return shapes


def _num_elements(shape) -> int | None:
    """Elements of an event shape (a TensorShape or a tuple), None when not fully known."""
    dims = tuple(shape)
    if any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims)

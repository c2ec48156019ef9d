"""ELBO and IWAE bounds over [K, batch] log-weights, and the estimators' learning signals.

Rows of a tiled batch are laid out k-major: row k * B + b is sample k of example b.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp

from keras_vi import divergences

tfd = tfp.distributions

OBJECTIVES = ("elbo", "iwae")


def check_objective(objective: str, num_samples: int) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown `objective` {objective!r}; expected one of {OBJECTIVES}.")
    if objective == "iwae" and num_samples < 2:
        raise ValueError(
            "objective='iwae' needs num_samples >= 2 (with one sample it is the ELBO), got "
            f"num_samples={num_samples}."
        )
    return objective


def check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}.")
    return num_samples


def iwae_bound(log_weights: tf.Tensor) -> tf.Tensor:
    """log (1/K sum_k w_k) per example, from log-weights of shape [K, B]."""
    k = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(k)


@dataclasses.dataclass
class Signals:
    """What estimators may read to build their surrogates for one step."""

    objective: str
    num_samples: int
    training: bool
    kl_weight: tf.Tensor
    log_likelihood: tf.Tensor  # [K, B]
    per_sample: tf.Tensor  # [K, B]: log p(y|z) - beta * sum of KL terms (the log-weights)
    bound: tf.Tensor  # [B]: ELBO (mean over k) or IWAE bound per example
    kls: dict  # id(record) -> ([K, B] KL term, method)
    # id(record) -> d sum(per_sample) / dz (gradient stopped), for estimators that need it.
    path_gradients: dict = dataclasses.field(default_factory=dict)
    # Whether the caller ascends the value (a bound: True); sets the direction of auxiliary
    # objectives such as a learned baseline's regression.
    maximize: bool = True

    def to_samples(self, flat: tf.Tensor) -> tf.Tensor:
        """[K*B] -> [K, B]."""
        return tf.reshape(flat, [self.num_samples, -1])

    def reduce_samples(self, per_sample: tf.Tensor) -> tf.Tensor:
        """How a [K, B] score term enters the objective: mean over k for the ELBO (each
        sample estimates it alone), sum over k for IWAE (the bound depends on all K), and
        the mean over the batch."""
        axis_k = tf.reduce_mean if self.objective == "elbo" else tf.reduce_sum
        return tf.reduce_mean(axis_k(per_sample, axis=0))

    def score_log_prob(self, record) -> tf.Tensor:
        """log q(z) of a latent's samples with z held fixed, shape [K, B]."""
        return self.to_samples(record.q.log_prob(tf.stop_gradient(record.z)))

    @property
    def normalized_weights(self) -> tf.Tensor:
        return tf.nn.softmax(self.per_sample, axis=0)

    def path_gradient(self, record) -> tf.Tensor:
        """d log w / dz for a latent's samples (shaped like z), for DReG-type estimators."""
        gradient = self.path_gradients.get(id(record))
        if gradient is None:
            raise ValueError(
                f"{type(record.estimator).__name__}() needs d log w / dz, which is provided "
                "when the forward pass runs inside VariationalModel.compute_objective (or "
                "kvi.expectation); this step did not record it."
            )
        return gradient

    def learning_signal(self, record) -> tf.Tensor:
        """The score-function learning signal for one latent, shape [K, B] (or [1, B])."""
        if self.objective == "iwae":
            return self.bound[tf.newaxis, :]
        signal = self.per_sample
        kl, method = self.kls.get(id(record), (None, None))
        if method == "analytic":
            # A closed-form KL does not depend on this latent's own sample: leaving it out
            # of the signal removes variance without changing the expectation.
            signal = signal + self.kl_weight * kl
        return signal


def latent_kl(record, objective: str, free_bits: float | None):
    """KL term of one latent: ([K*B] values, method used, per-dimension [K*B, D] or None)."""
    layer, q, z, p = record.layer, record.q, record.z, record.prior
    method = layer.kl
    estimator = record.estimator
    if objective == "iwae" or getattr(estimator, "needs_sample_kl", False):
        method = "mc"
    elif getattr(estimator, "requires_analytic_kl", False):
        # A relaxed sample (Gumbel-softmax) has no density under the categorical q: the ELBO
        # uses the closed-form KL of the categorical, as Jang et al. (2017) do.
        if method == "mc":
            raise ValueError(
                f"Latent {getattr(layer, 'name', '?')!r}: kl='mc' cannot be used with "
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
    elif layer.kl_samples == 1 or objective == "iwae":
        log_q = estimator.log_prob(q, z)
        kl = log_q - p.log_prob(z)
        if (
            free_bits is not None
            and isinstance(q, tfd.Independent)
            and isinstance(p, tfd.Independent)
        ):
            inner = q.distribution.log_prob(z) - p.distribution.log_prob(z)
            per_dim = tf.reshape(inner, [tf.shape(inner)[0], -1])
    else:
        seed = tf.random.experimental.stateless_fold_in(record.seed, 1)
        kl = divergences.kl(q, p, method="mc", num_samples=layer.kl_samples, seed=seed)
    return kl, method, per_dim


def _path_gradients(scope, per_sample: tf.Tensor) -> dict:
    """d sum(log w) / dz for every latent whose estimator asks for it (DReG).

    Rows are independent samples, so the gradient of the sum gives each row's own
    d log w_k / d z_k. Needs `scope.path_tape`, a persistent tape that watched those z during
    the forward pass (opened by `VariationalModel.compute_objective`).
    """
    records = [r for r in scope.latents if getattr(r.estimator, "needs_path_gradient", False)]
    if not records:
        return {}
    tape = getattr(scope, "path_tape", None)
    if tape is None:
        names = sorted({getattr(r.layer, "name", "?") for r in records})
        raise ValueError(
            f"Latents {names} use an estimator that needs d log w / dz, but the forward pass "
            "was not recorded on a path tape; run it through VariationalModel.compute_objective."
        )
    with tape.stop_recording():
        gradients = tape.gradient(
            per_sample,
            [r.z for r in records],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        for i, upstream in enumerate(records):
            for j, downstream in enumerate(records):
                if i != j and tape.gradient(downstream.z, upstream.z) is not None:
                    raise ValueError(
                        f"Latent {getattr(downstream.layer, 'name', '?')!r} depends on the "
                        f"sample of latent {getattr(upstream.layer, 'name', '?')!r}, and both "
                        f"use {type(downstream.estimator).__name__}(); its correction is "
                        "defined for latents that do not depend on one another. Use "
                        "estimator='reparameterization' for one of them."
                    )
    return {id(r): tf.stop_gradient(g) for r, g in zip(records, gradients)}


def compute(
    scope,
    log_likelihood_flat: tf.Tensor,
    *,
    objective: str,
    num_samples: int,
    kl_weight: tf.Tensor,
    free_bits: float | None,
    num_examples: tf.Tensor,
    training: bool,
):
    """Builds the objective of one step.

    Returns a dict with `loss` (the scalar to differentiate: -bound plus the estimators'
    zero-valued surrogates), `loss_value` (-bound), `elbo`, `nll`, `kl`, `kl_per_latent`
    (name -> mean KL), all per example; `bound` [B].
    """
    k = num_samples
    to_kb = lambda t: tf.reshape(t, [k, -1])  # noqa: E731
    log_lik = to_kb(tf.cast(log_likelihood_flat, tf.float32))
    kl_weight = tf.cast(kl_weight, tf.float32)

    kls = {}
    kl_per_latent = {}
    total_kl = tf.zeros_like(log_lik)
    free_bits_kl = tf.constant(0.0)
    for record in scope.latents:
        if record.prior is None:
            continue
        kl_flat, method, per_dim = latent_kl(record, objective, free_bits)
        kl_kb = to_kb(kl_flat)
        kls[id(record)] = (kl_kb, method)
        name = record.layer.name
        kl_per_latent[name] = kl_per_latent.get(name, 0.0) + tf.reduce_mean(kl_kb)
        total_kl = total_kl + kl_kb
        if free_bits is not None:
            if per_dim is None:
                event_size = max(1, record.q.event_shape.num_elements() or 1)
                free_bits_kl += tf.maximum(free_bits * event_size, tf.reduce_mean(kl_kb))
            else:
                free_bits_kl += tf.reduce_sum(
                    tf.maximum(free_bits, tf.reduce_mean(per_dim, axis=0))
                )

    weight_kl = tf.constant(0.0)
    for _, layer_kl in scope.weight_kls:
        weight_kl += tf.cast(layer_kl, tf.float32)
    weight_kl = weight_kl / tf.cast(num_examples, tf.float32)

    per_sample = log_lik - kl_weight * total_kl
    # Surrogates shape the gradient of a training step only. An evaluation step (test_step,
    # kvi.log_likelihood with its own objective and K) reports the value and skips them: some
    # are undefined there (VIMCO with K = 1) and none is differentiated.
    path_gradients = _path_gradients(scope, per_sample) if training else {}
    if objective == "iwae":
        bound = iwae_bound(per_sample)
        value = tf.reduce_mean(bound)
    else:
        bound = tf.reduce_mean(per_sample, axis=0)
        if free_bits is not None:
            value = tf.reduce_mean(log_lik) - kl_weight * free_bits_kl
        else:
            value = tf.reduce_mean(bound)
    value = value - kl_weight * weight_kl

    signals = Signals(
        objective=objective,
        num_samples=k,
        training=training,
        kl_weight=kl_weight,
        log_likelihood=log_lik,
        per_sample=per_sample,
        bound=bound,
        kls=kls,
        path_gradients=path_gradients,
    )
    surrogate = tf.constant(0.0)
    for record in scope.latents if training else ():
        term = record.estimator.surrogate(record, signals)
        if term is not None:
            surrogate += term

    nll = -tf.reduce_mean(log_lik)
    kl = tf.reduce_mean(total_kl) + weight_kl
    return {
        "loss": -(value + surrogate - tf.stop_gradient(surrogate)),
        "loss_value": -value,
        "elbo": -nll - kl,
        "nll": nll,
        "kl": kl,
        "kl_per_latent": kl_per_latent,
        "bound": bound,
        "signals": signals,
    }

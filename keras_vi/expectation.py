"""`kvi.expectation`: Monte Carlo expectations with a chosen gradient estimator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from keras_vi import _random, _scope, estimators, objectives

tfd = tfp.distributions

__all__ = ["expectation"]


@dataclasses.dataclass
class _ExpectationSignals(objectives.Signals):
    log_q: Any = None

    def to_samples(self, flat):
        return flat

    def score_log_prob(self, record):
        return self.log_q

    def learning_signal(self, record):
        return self.per_sample


def _align(values: tf.Tensor, log_q: tf.Tensor):
    """Brings f(z) [S, ...] and log q(z) [S, ...] to one shape.

    Extra trailing axes of log q (independent batch members that f sums over) are summed;
    extra axes of f (several outputs per sample) are averaged, matching the value's mean.
    """
    f_rank, q_rank = values.shape.rank, log_q.shape.rank
    if q_rank > f_rank:
        log_q = tf.reduce_sum(log_q, axis=list(range(f_rank, q_rank)))
    elif f_rank > q_rank:
        values = tf.reduce_mean(values, axis=list(range(q_rank, f_rank)))
    return values, log_q


def expectation(
    fn: Callable[[tf.Tensor], tf.Tensor],
    q: tfd.Distribution,
    estimator: Any = "auto",
    num_samples: int = 1,
    seed: Any = None,
) -> tf.Tensor:
    """E_q[fn(z)] by Monte Carlo, with the gradient of the chosen estimator.

    The value is the mean of `fn(z)` over the `num_samples` draws (and any batch axes). Its
    gradient inside a `tf.GradientTape` is the estimator's: pathwise through z for
    `Reparameterization`, `(fn(z) - b) grad log q(z)` for `ScoreFunction`, plus `fn`'s own
    variables. `"auto"` is pathwise when q is reparameterized and plain `ScoreFunction()`
    otherwise (a moving average needs state across calls: pass your own estimator object
    to keep one).

    Args:
        fn: maps samples of shape `[num_samples, *q.batch_shape, *q.event_shape]` to values
            with leading axis `num_samples`.
        q: the distribution to average over.
        estimator: `"auto"`, an alias, or a `kvi.estimators.Estimator`.
        num_samples: Monte Carlo draws.
        seed: int, int32[2] stateless seed, or a `keras.random.SeedGenerator` (advanced on
            every call, so repeated calls draw fresh noise).

    Returns:
        A scalar tensor.

    Example:
        >>> loc, scale = tf.Variable(1.0), tf.Variable(2.0)
        >>> with tf.GradientTape() as tape:
        ...     value = kvi.expectation(lambda x: (x - 3.0) ** 2, tfd.Normal(loc, scale),
        ...                             estimator="score_function", num_samples=1000, seed=0)
        >>> tape.gradient(value, [loc, scale])  # about [2 * (1 - 3), 2 * 2]
    """
    objectives.check_num_samples(num_samples)
    est = estimators.get(estimator)
    if est == "auto":
        est = (
            estimators.Reparameterization()
            if estimators.is_reparameterized(q)
            else estimators.ScoreFunction()
        )
    est.validate(q, objective="elbo", num_samples=num_samples)
    tfp_seed = _random.draw_tfp_seed(seed)
    z = est.sample(q, tfp_seed, sample_shape=[num_samples])
    values = tf.convert_to_tensor(fn(z))
    if values.shape.rank == 0 or values.shape[0] != num_samples:
        raise ValueError(
            f"`fn` must return values with leading axis num_samples={num_samples}, got shape "
            f"{tuple(values.shape)}."
        )
    value = tf.reduce_mean(values)
    record = _scope.LatentRecord(
        layer=None, q=q, z=z, prior=None, estimator=est, inputs=None, seed=tfp_seed
    )
    signal, log_q = _align(tf.cast(values, tf.float32), est.log_prob(q, tf.stop_gradient(z)))
    signals = _ExpectationSignals(
        objective="elbo",
        num_samples=num_samples,
        training=True,
        kl_weight=tf.constant(0.0),
        log_likelihood=signal,
        per_sample=signal,
        bound=tf.reduce_mean(signal, axis=0),
        kls={},
        log_q=log_q,
    )
    surrogate = est.surrogate(record, signals)
    if surrogate is None:
        return value
    return value + surrogate - tf.stop_gradient(surrogate)

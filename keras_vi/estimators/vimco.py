"""VIMCO: the multi-sample score-function estimator of the IWAE bound (Mnih & Rezende 2016)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_vi.estimators.base import Estimator, checks_training_setup

__all__ = ["VIMCO", "leave_one_out_bounds"]


def leave_one_out_bounds(log_weights: tf.Tensor) -> tf.Tensor:
    """The IWAE bound with sample k's weight replaced by the others' geometric mean.

    For log-weights of shape [K, ...] returns, for every k,
    log((sum_{j != k} w_j + exp(mean_{j != k} log w_j)) / K), computed in log space with one
    log-sum-exp over a [K, K, ...] array (exact, no cancellation).

    Example:
        >>> leave_one_out_bounds(tf.math.log([[1.0], [3.0]]))  # [[log 2], [log 1]]
    """
    log_weights = tf.convert_to_tensor(log_weights)
    k = log_weights.shape[0]
    if k is None:
        k = tf.shape(log_weights)[0]
    k_float = tf.cast(k, log_weights.dtype)
    total = tf.reduce_sum(log_weights, axis=0, keepdims=True)
    mean_of_others = (total - log_weights) / (k_float - 1.0)  # [K, ...]
    extra = tf.ones([log_weights.shape.rank - 1], tf.int32)
    replace = tf.reshape(tf.eye(k, dtype=tf.bool), tf.concat([[k, k], extra], axis=0))
    # Row k: the K log-weights with entry k swapped for the leave-k-out geometric mean.
    swapped = tf.where(replace, mean_of_others[:, tf.newaxis], log_weights[tf.newaxis])
    return tf.reduce_logsumexp(swapped, axis=1) - tf.math.log(k_float)


@keras.saving.register_keras_serializable(package="keras_vi")
class VIMCO(Estimator):
    """VIMCO (Mnih & Rezende 2016): score-function gradients of the IWAE bound with
    per-sample leave-one-out learning signals.

    Sample k's learning signal is L - L_{-k}, where L is the IWAE bound of the example and
    L_{-k} is the bound with w_k replaced by the geometric mean of the other K - 1 weights.
    The part sum_k w_k grad log w_k (z held fixed) comes from the bound's own gradient.
    Unbiased; works for any q, discrete included, and needs no learned baseline.

    Needs `objective="iwae"` and `num_samples >= 2`.

    Example:
        >>> z = kvi.layers.BernoulliLatent(200, estimator="vimco")(logits)
        >>> vae = kvi.VariationalModel(x, out, likelihood="bernoulli",
        ...                            objective="iwae", num_samples=5)
    """

    alias = "vimco"
    pathwise = False
    requires_objective = "iwae"

    def validate(self, q, *, objective, num_samples):
        super().validate(q, objective=objective, num_samples=num_samples)
        if checks_training_setup() and num_samples < 2:
            raise ValueError(
                f"estimator=VIMCO() compares the K samples of an example and needs "
                f"num_samples >= 2, got num_samples={num_samples}."
            )

    def surrogate(self, record, signals):
        log_weights = tf.stop_gradient(signals.per_sample)
        bound = tf.reduce_logsumexp(log_weights, axis=0, keepdims=True) - tf.math.log(
            tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
        )
        signal = tf.stop_gradient(bound - leave_one_out_bounds(log_weights))
        return signals.reduce_samples(signal * signals.score_log_prob(record))

"""VIMCO: the multi-sample score-function estimator of the IWAE bound (Mnih & Rezende 2016)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_vi.estimators.base import Estimator, checks_training_setup

__all__ = ["VIMCO", "leave_one_out_bounds"]


def leave_one_out_bounds(log_weights: tf.Tensor) -> tf.Tensor:
    """The IWAE bound with sample k's weight replaced by the others' geometric mean.

    For log-weights of shape [K, ...] (K >= 2) returns, for every k,
    log((sum_{j != k} w_j + exp(mean_{j != k} log w_j)) / K), in log space with O(K) memory
    and no cancellation, however far one weight dominates the others. Log-weights of -inf
    (samples the model rules out) are allowed.

    Args:
        log_weights: a float tensor of shape [K, ...], K >= 2 samples on the first axis.

    Returns:
        A tensor of the same shape and dtype.

    Example:
        >>> bounds = leave_one_out_bounds(tf.math.log([[1.0], [3.0]]))
        >>> np.round(bounds.numpy(), 4)  # [[log((3 + 3) / 2)], [log((1 + 1) / 2)]]
        array([[1.0986],
               [0.    ]], dtype=float32)
    """
    log_weights = tf.convert_to_tensor(log_weights)
    if not log_weights.dtype.is_floating:
        raise ValueError(
            f"leave_one_out_bounds: `log_weights` must be a float tensor, got dtype "
            f"{log_weights.dtype.name}."
        )
    static_rank = log_weights.shape.rank
    k = log_weights.shape[0] if static_rank else None
    if static_rank == 0 or (k is not None and k < 2):
        raise ValueError(
            "leave_one_out_bounds: `log_weights` must have shape [K, ...] with K >= 2 samples "
            f"on the first axis, got shape {log_weights.shape}."
        )
    if k is None:
        k = tf.shape(log_weights)[0]
    # Samples on the last axis: a reduction over the contiguous axis sums pairwise (relative
    # error ~1e-7 at K = 200,000 in float32); one over the first axis sums sequentially.
    if static_rank is None:
        rank = tf.rank(log_weights)
        to_last = tf.concat([tf.range(1, rank), [0]], 0)
        to_first = tf.concat([[rank - 1], tf.range(rank - 1)], 0)
    else:
        to_last = [*range(1, static_rank), 0]
        to_first = [static_rank - 1, *range(static_rank - 1)]
    log_w = tf.transpose(log_weights, to_last)  # [..., K]
    positions = tf.range(k)
    # The first largest log-weight of each column.
    is_top = tf.equal(positions, tf.argmax(log_w, axis=-1, output_type=tf.int32)[..., None])
    k_float = tf.cast(k, log_w.dtype)
    bounds = tf.reduce_logsumexp(
        tf.stack([_log_sum_of_others(log_w, is_top), _mean_of_others(log_w, is_top, k_float)]),
        axis=0,
    )
    return tf.transpose(bounds, to_first) - tf.math.log(k_float)


def _log_sum_of_others(log_w: tf.Tensor, is_top: tf.Tensor) -> tf.Tensor:
    """log sum_{j != k} w_j for every k of log_w [..., K], in O(K).

    Each sum is taken against the largest weight it keeps, so a dominant weight is never
    subtracted from a sum that holds it. For k below the top, the kept top term makes the sum
    >= 1 in its units and subtracting w_k <= w_top is exact to round-off; for the top itself,
    the others are summed afresh against the second largest.
    """
    neg_inf = tf.constant(-float("inf"), log_w.dtype)
    rest = tf.where(is_top, neg_inf, log_w)
    top = _finite_or_zero(tf.reduce_max(log_w, axis=-1, keepdims=True))
    second = _finite_or_zero(tf.reduce_max(rest, axis=-1, keepdims=True))
    scaled = tf.exp(log_w - top)
    without_k = tf.reduce_sum(scaled, axis=-1, keepdims=True) - scaled
    # At the top, without_k can round to 0 or below; that branch is discarded, so feed it 1.
    below_top = tf.math.log(tf.where(is_top, tf.ones_like(scaled), without_k)) + top
    of_top = tf.math.log(tf.reduce_sum(tf.exp(rest - second), axis=-1, keepdims=True)) + second
    return tf.where(is_top, of_top, below_top)


def _mean_of_others(log_w: tf.Tensor, is_top: tf.Tensor, k_float: tf.Tensor) -> tf.Tensor:
    """mean_{j != k} log w_j for every k of log_w [..., K], in O(K).

    -inf as soon as one of the others is -inf. The running sum leaves out the largest and
    the smallest finite log-weight, so leaving out an outlier on either side subtracts
    nothing large from it.
    """
    dtype = log_w.dtype
    zero = tf.zeros([], dtype)
    neg_inf = tf.constant(-float("inf"), dtype)
    is_neg_inf = tf.equal(log_w, neg_inf)
    finite = tf.where(is_neg_inf, zero, log_w)
    candidates = tf.where(is_top | is_neg_inf, tf.constant(float("inf"), dtype), finite)
    bottom_index = tf.argmin(candidates, axis=-1, output_type=tf.int32)[..., None]
    is_bottom = tf.equal(tf.range(tf.shape(log_w)[-1]), bottom_index)

    def total(mask):
        return tf.reduce_sum(tf.where(mask, finite, zero), axis=-1, keepdims=True)

    middle = total(~(is_top | is_bottom))
    top, bottom = total(is_top), total(is_bottom)
    others_sum = tf.where(
        is_top,
        middle + bottom,
        tf.where(is_bottom, middle + top, (middle - finite) + (top + bottom)),
    )
    num_neg_inf = tf.reduce_sum(tf.cast(is_neg_inf, dtype), axis=-1, keepdims=True)
    others_neg_inf = num_neg_inf - tf.cast(is_neg_inf, dtype) > 0
    return tf.where(others_neg_inf, neg_inf, others_sum / (k_float - 1.0))


def _finite_or_zero(x: tf.Tensor) -> tf.Tensor:
    """x where finite, else 0: a safe shift for log-sum-exp when every term is -inf."""
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


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
        >>> z = kvi.layers.BernoulliLatent(200, estimator="vimco")(keras.layers.Dense(200)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(z), likelihood="bernoulli",
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

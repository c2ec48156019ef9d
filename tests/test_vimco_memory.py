"""VIMCO's leave-one-out bounds in O(K) memory: the same numbers as the O(K^2) formula."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vi as kvi
from keras_vi.estimators import vimco

from conftest import small_vae

leave_one_out_bounds = kvi.estimators.leave_one_out_bounds


def quadratic_reference(log_weights):
    """The former implementation: a log-sum-exp over a [K, K, ...] array."""
    log_weights = tf.convert_to_tensor(log_weights)
    k = log_weights.shape[0]
    k_float = tf.cast(k, log_weights.dtype)
    total = tf.reduce_sum(log_weights, axis=0, keepdims=True)
    mean_of_others = (total - log_weights) / (k_float - 1.0)
    extra = tf.ones([log_weights.shape.rank - 1], tf.int32)
    replace = tf.reshape(tf.eye(k, dtype=tf.bool), tf.concat([[k, k], extra], axis=0))
    swapped = tf.where(replace, mean_of_others[:, tf.newaxis], log_weights[tf.newaxis])
    return tf.reduce_logsumexp(swapped, axis=1) - tf.math.log(k_float)


def linear_reference(log_weights):
    """float64 NumPy, O(K), another formula: log sum_{j != k} w_j from prefix and suffix
    running log-sum-exps, the mean of the others from an exactly rounded sum (math.fsum)."""
    lw = np.asarray(log_weights, np.float64)
    k = lw.shape[0]
    neg_inf = np.full((1,) + lw.shape[1:], -np.inf)
    prefix = np.concatenate([neg_inf, np.logaddexp.accumulate(lw, axis=0)[:-1]], axis=0)
    suffix = np.concatenate([np.logaddexp.accumulate(lw[::-1], axis=0)[::-1][1:], neg_inf], 0)
    log_others = np.logaddexp(prefix, suffix)
    columns = lw.reshape(k, -1)
    totals = np.array([math.fsum(columns[:, c]) for c in range(columns.shape[1])])
    mean_of_others = (totals.reshape(lw.shape[1:]) - lw) / (k - 1)
    return np.logaddexp(log_others, mean_of_others) - np.log(k)


def _random_log_weights(rng, shape, spread):
    return rng.normal(scale=spread, size=shape)


@pytest.mark.parametrize(
    "shape, spread",
    [((2, 5), 1.0), ((2, 3, 4), 30.0), ((7, 6), 1.0), ((16, 3, 2), 5.0), ((50, 4), 100.0)],
)
def test_matches_the_quadratic_formula(shape, spread):
    lw = _random_log_weights(np.random.default_rng(sum(shape)), shape, spread)
    for dtype in ("float64", "float32"):
        new = leave_one_out_bounds(tf.constant(lw, dtype)).numpy()
        old = quadratic_reference(tf.constant(lw, dtype)).numpy()
        assert new.dtype == np.dtype(dtype)
        rtol = 1e-12 if dtype == "float64" else 1e-6
        np.testing.assert_allclose(new, old, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("gap", [1e3, 1e4])
def test_one_dominant_weight(k, gap):
    """One weight `gap` nats above the others: the leave-it-out bound rests on the others
    alone, which a sum over all K (then minus the dominant term) would round away."""
    rng = np.random.default_rng(k)
    lw = rng.normal(size=(k, 3))
    lw[1, 0] += gap  # dominant in column 0
    lw[0, 2] -= gap  # negligible in column 2
    expected = linear_reference(lw)
    # float64 agrees with the O(K^2) formula and the NumPy reference to round-off.
    new = leave_one_out_bounds(tf.constant(lw)).numpy()
    np.testing.assert_allclose(new, quadratic_reference(tf.constant(lw)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(new, expected, rtol=1e-10, atol=1e-10)
    # Leaving the dominant sample out gives a bound of order 1, not of order `gap`.
    assert abs(new[1, 0]) < 10
    # float32: values of order `gap` carry float32's round-off of `gap`; the bound without
    # the dominant weight rests on small numbers only and is exact to float32 precision.
    single = leave_one_out_bounds(tf.constant(lw, tf.float32)).numpy()
    np.testing.assert_allclose(single, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(single[1, 0], expected[1, 0], rtol=0, atol=1e-5)


def test_k2_by_hand():
    lw = np.log([[1.0, 2.0], [3.0, 5.0]])
    # K = 2: sample k's bound is log((w_other + w_other) / 2) = log w_other.
    expected = np.log([[3.0, 5.0], [1.0, 2.0]])
    np.testing.assert_allclose(leave_one_out_bounds(tf.constant(lw)), expected, rtol=1e-12)


def test_ties_and_negative_infinity():
    tied = np.array([[2.0], [2.0], [-1.0]])
    np.testing.assert_allclose(
        leave_one_out_bounds(tf.constant(tied)), linear_reference(tied), rtol=1e-12
    )
    # A sample the model rules out (log w = -inf): its own leave-one-out bound is finite and
    # exact; the others' use a geometric mean of -inf, i.e. only the remaining weights.
    lw = np.array([[0.5], [-np.inf], [1.0]])
    bounds = leave_one_out_bounds(tf.constant(lw)).numpy()
    expected = [
        [np.log(np.exp(1.0)) - np.log(3)],
        [np.log(np.exp(0.5) + np.exp(1.0) + np.exp(0.75)) - np.log(3)],
        [np.log(np.exp(0.5)) - np.log(3)],
    ]
    np.testing.assert_allclose(bounds, expected, rtol=1e-12)
    everything_ruled_out = tf.constant([[-np.inf], [-np.inf]])
    assert np.all(leave_one_out_bounds(everything_ruled_out).numpy() == -np.inf)


def test_two_hundred_thousand_samples_in_linear_memory():
    """K = 200,000 and a batch of 2: the [K, K, 2] float32 array of the former formula would
    need 320 GB."""
    k = 200_000
    lw = np.random.default_rng(0).normal(scale=3.0, size=(k, 2)).astype(np.float32)
    lw[123, 1] = 40.0  # one dominant weight in the second column
    bounds = leave_one_out_bounds(tf.constant(lw)).numpy()
    assert bounds.shape == (k, 2)
    expected = linear_reference(lw)
    np.testing.assert_allclose(bounds, expected, rtol=0, atol=2e-5)


def test_dynamic_shapes_and_bad_input():
    lw = np.random.default_rng(1).normal(size=(5, 3))
    traced = tf.function(leave_one_out_bounds, input_signature=[tf.TensorSpec(None, tf.float64)])
    np.testing.assert_allclose(traced(tf.constant(lw)), linear_reference(lw), rtol=1e-12)
    compiled = tf.function(leave_one_out_bounds, jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant(lw)), linear_reference(lw), rtol=1e-12)
    with pytest.raises(ValueError, match=r"`log_weights`.*K >= 2.*\(1, 3\)"):
        leave_one_out_bounds(tf.zeros([1, 3]))
    with pytest.raises(ValueError, match=r"`log_weights`.*float.*int32"):
        leave_one_out_bounds(tf.zeros([3, 2], tf.int32))


def _vimco_gradients(bounds_fn, monkeypatch, data):
    monkeypatch.setattr(vimco, "leave_one_out_bounds", bounds_fn)
    keras.utils.set_random_seed(7)
    latent = kvi.layers.BernoulliLatent(6, name="z", estimator="vimco", seed=3)
    model = small_vae(latent=latent, params_width=6, objective="iwae", num_samples=4)
    with tf.GradientTape() as tape:
        loss = model.compute_objective(data, data, training=True)["loss"]
    return float(loss), tape.gradient(loss, model.trainable_weights)


def test_vimco_gradients_unchanged(binary_data, monkeypatch):
    data = binary_data[:16]
    loss, gradients = _vimco_gradients(leave_one_out_bounds, monkeypatch, data)
    old_loss, old_gradients = _vimco_gradients(quadratic_reference, monkeypatch, data)
    assert loss == old_loss
    for new, old in zip(gradients, old_gradients):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)

"""VIMCO's leave-one-out bounds in O(K) memory: the same numbers as the O(K^2) formula."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_vi as kvi
from keras_vi.estimators import vimco

from backend_utils import value_and_gradients
from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

leave_one_out_bounds = kvi.estimators.leave_one_out_bounds
JAX = keras.backend.backend() == "jax"


@pytest.fixture
def float64():
    """float64 tensors on either backend (JAX keeps float32 unless x64 is enabled)."""
    if JAX:
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def tensor(values, dtype="float64"):
    return ops.convert_to_tensor(np.asarray(values), dtype)


def quadratic_reference(log_weights):
    """The former implementation: a log-sum-exp over a [K, K, ...] array."""
    log_weights = ops.convert_to_tensor(log_weights)
    k, rank = log_weights.shape[0], len(log_weights.shape)
    k_float = ops.cast(k, log_weights.dtype)
    total = ops.sum(log_weights, axis=0, keepdims=True)
    mean_of_others = (total - log_weights) / (k_float - 1.0)
    replace = ops.reshape(ops.cast(ops.eye(k), "bool"), (k, k) + (1,) * (rank - 1))
    swapped = ops.where(
        replace, ops.expand_dims(mean_of_others, 1), ops.expand_dims(log_weights, 0)
    )
    return ops.logsumexp(swapped, axis=1) - ops.log(k_float)


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


def _numpy(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "shape, spread",
    [((2, 5), 1.0), ((2, 3, 4), 30.0), ((7, 6), 1.0), ((16, 3, 2), 5.0), ((50, 4), 100.0)],
)
def test_matches_the_quadratic_formula(shape, spread, float64):
    lw = _random_log_weights(np.random.default_rng(sum(shape)), shape, spread)
    for dtype in ("float64", "float32"):
        new = _numpy(leave_one_out_bounds(tensor(lw, dtype)))
        old = _numpy(quadratic_reference(tensor(lw, dtype)))
        assert new.dtype == np.dtype(dtype)
        rtol = 1e-12 if dtype == "float64" else 1e-6
        np.testing.assert_allclose(new, old, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("gap", [1e3, 1e4])
def test_one_dominant_weight(k, gap, float64):
    """One weight `gap` nats above the others: the leave-it-out bound rests on the others
    alone, which a sum over all K (then minus the dominant term) would round away."""
    rng = np.random.default_rng(k)
    lw = rng.normal(size=(k, 3))
    lw[1, 0] += gap  # dominant in column 0
    lw[0, 2] -= gap  # negligible in column 2
    expected = linear_reference(lw)
    # float64 agrees with the O(K^2) formula and the NumPy reference to round-off.
    new = _numpy(leave_one_out_bounds(tensor(lw)))
    assert new.dtype == np.float64
    np.testing.assert_allclose(new, _numpy(quadratic_reference(tensor(lw))), rtol=1e-10)
    np.testing.assert_allclose(new, expected, rtol=1e-10, atol=1e-10)
    # Leaving the dominant sample out gives a bound of order 1, not of order `gap`.
    assert abs(new[1, 0]) < 10
    # float32: values of order `gap` carry float32's round-off of `gap`; the bound without
    # the dominant weight rests on small numbers only and is exact to float32 precision.
    single = _numpy(leave_one_out_bounds(tensor(lw, "float32")))
    np.testing.assert_allclose(single, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(single[1, 0], expected[1, 0], rtol=0, atol=1e-5)


def test_k2_by_hand(float64):
    lw = np.log([[1.0, 2.0], [3.0, 5.0]])
    # K = 2: sample k's bound is log((w_other + w_other) / 2) = log w_other.
    expected = np.log([[3.0, 5.0], [1.0, 2.0]])
    np.testing.assert_allclose(_numpy(leave_one_out_bounds(tensor(lw))), expected, rtol=1e-12)


def test_ties_and_negative_infinity(float64):
    tied = np.array([[2.0], [2.0], [-1.0]])
    np.testing.assert_allclose(
        _numpy(leave_one_out_bounds(tensor(tied))), linear_reference(tied), rtol=1e-12
    )
    # A sample the model rules out (log w = -inf): its own leave-one-out bound is finite and
    # exact; the others' use a geometric mean of -inf, i.e. only the remaining weights.
    lw = np.array([[0.5], [-np.inf], [1.0]])
    bounds = _numpy(leave_one_out_bounds(tensor(lw)))
    expected = [
        [np.log(np.exp(1.0)) - np.log(3)],
        [np.log(np.exp(0.5) + np.exp(1.0) + np.exp(0.75)) - np.log(3)],
        [np.log(np.exp(0.5)) - np.log(3)],
    ]
    np.testing.assert_allclose(bounds, expected, rtol=1e-12)
    everything_ruled_out = tensor([[-np.inf], [-np.inf]], "float32")
    assert np.all(_numpy(leave_one_out_bounds(everything_ruled_out)) == -np.inf)


def test_two_hundred_thousand_samples_in_linear_memory():
    """K = 200,000 and a batch of 2: the [K, K, 2] float32 array of the former formula would
    need 320 GB."""
    k = 200_000
    lw = np.random.default_rng(0).normal(scale=3.0, size=(k, 2)).astype(np.float32)
    lw[123, 1] = 40.0  # one dominant weight in the second column
    bounds = _numpy(leave_one_out_bounds(tensor(lw, "float32")))
    assert bounds.shape == (k, 2)
    expected = linear_reference(lw)
    np.testing.assert_allclose(bounds, expected, rtol=0, atol=2e-5)


# TensorFlow-only by nature: a tf.function traced for inputs of unknown rank (JAX traces
# static shapes only).
@pytest.mark.backends("tensorflow")
def test_unknown_rank_while_tracing():
    import tensorflow as tf

    lw = np.random.default_rng(1).normal(size=(5, 3))
    traced = tf.function(leave_one_out_bounds, input_signature=[tf.TensorSpec(None, tf.float64)])
    np.testing.assert_allclose(traced(tf.constant(lw)), linear_reference(lw), rtol=1e-12)


def _xla_compiled(fn):
    if JAX:
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def test_xla_compiled_and_bad_input(float64):
    lw = np.random.default_rng(1).normal(size=(5, 3))
    compiled = _xla_compiled(leave_one_out_bounds)
    np.testing.assert_allclose(_numpy(compiled(tensor(lw))), linear_reference(lw), rtol=1e-12)
    with pytest.raises(ValueError, match=r"`log_weights`.*K >= 2.*\(1, 3\)"):
        leave_one_out_bounds(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"`log_weights`.*float.*int32"):
        leave_one_out_bounds(np.zeros((3, 2), "int32"))


def _vimco_gradients(bounds_fn, monkeypatch, data):
    monkeypatch.setattr(vimco, "leave_one_out_bounds", bounds_fn)
    keras.utils.set_random_seed(7)
    latent = kvi.layers.BernoulliLatent(6, name="z", estimator="vimco", seed=3)
    model = small_vae(latent=latent, params_width=6, objective="iwae", num_samples=4)
    loss, gradients = value_and_gradients(
        lambda: model.compute_objective(data, data, training=True)["loss"],
        model.trainable_weights,
    )
    return float(loss), gradients


def test_vimco_gradients_unchanged(binary_data, monkeypatch):
    data = binary_data[:16]
    loss, gradients = _vimco_gradients(leave_one_out_bounds, monkeypatch, data)
    old_loss, old_gradients = _vimco_gradients(quadratic_reference, monkeypatch, data)
    assert loss == old_loss
    for new, old in zip(gradients, old_gradients):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)
    assert any(np.abs(g).max() > 0 for g in gradients)

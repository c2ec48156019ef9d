"""Gradient estimators and bounds against closed forms (DESIGN.md).

Single-sample gradient estimates are drawn M at a time by giving q a batch of M identical
members: the gradient for member i of mean_i f(z_i) is (1/M) times an independent
single-sample estimate. Means must lie within 4 standard errors of the truth; variances
within 10%.
"""

import math

import keras
import numpy as np
import pytest

import keras_vi as kvi

from backend_utils import gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions

M = 200_000  # independent single-sample estimates per check
numpy = keras.ops.convert_to_numpy


def estimates(fn, q, params, estimator, seed, warmup=0):
    """M single-sample gradient estimates of E_q[fn] for each of `params` (float64 arrays).

    Each warm-up call runs the estimator once without a gradient, with its own seed, so that
    a moving-average baseline starts from the batch mean of f.
    """
    for step in range(warmup):
        kvi.expectation(fn, q(), estimator=estimator, seed=np.array([seed, step + 1], "int32"))

    def value():
        seed_tensor = np.array([seed, warmup + 1], "int32")
        return kvi.expectation(fn, q(), estimator=estimator, seed=seed_tensor)

    return [g.astype(np.float64) * M for g in gradients(value, params)]


def gaussian_estimates(estimator, mu=1.0, sigma=1.0, k=2.0, warmup=0):
    loc = keras.Variable(np.full([M], mu, "float32"))
    scale = keras.Variable(np.full([M], sigma, "float32"))
    return estimates(
        lambda x: (x - k) ** 2,
        lambda: tfd.Normal(loc, scale),
        [loc, scale],
        estimator,
        seed=17,
        warmup=warmup,
    )


def assert_mean_within_4se(samples, truth):
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(samples.mean() - truth) < 4 * se, (samples.mean(), truth, se)


def assert_var_within(samples, truth, rel=0.10):
    var = samples.var(ddof=1)
    assert abs(var - truth) < rel * truth, (var, truth)


MU, SIGMA, K = 1.0, 1.0, 2.0
D = MU - K


def test_pathwise_gaussian_mean_and_variance():
    d_mu, d_sigma = gaussian_estimates(kvi.estimators.Reparameterization(), MU, SIGMA, K)
    assert_mean_within_4se(d_mu, 2 * D)
    assert_mean_within_4se(d_sigma, 2 * SIGMA)
    assert_var_within(d_mu, 4 * SIGMA**2)
    assert_var_within(d_sigma, 4 * D**2 + 8 * SIGMA**2)


def test_score_function_gaussian_mean_and_variance():
    d_mu, d_sigma = gaussian_estimates(kvi.estimators.ScoreFunction(), MU, SIGMA, K)
    assert_mean_within_4se(d_mu, 2 * D)
    assert_mean_within_4se(d_sigma, 2 * SIGMA)
    assert_var_within(d_mu, D**4 / SIGMA**2 + 14 * D**2 + 15 * SIGMA**2)


def test_score_function_with_moving_average_matches_mean_baseline_variance():
    # After one warm-up call the moving average holds the batch mean of f, i.e. E f to
    # within 1e-2, so the variance is the closed form for the baseline b = E f.
    estimator = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage(0.5))
    d_mu, _ = gaussian_estimates(estimator, MU, SIGMA, K, warmup=1)
    assert_mean_within_4se(d_mu, 2 * D)
    assert_var_within(d_mu, 8 * D**2 + 10 * SIGMA**2)


def test_pathwise_beats_score_function_on_gaussian():
    path, _ = gaussian_estimates("reparameterization")
    score, _ = gaussian_estimates("score_function")
    assert path.var() * 5 < score.var()


THETA, T = 0.3, 0.45


def bernoulli_estimates(estimator, warmup=0):
    theta = keras.Variable(np.full([M], THETA, "float32"))
    [grads] = estimates(
        lambda b: (keras.ops.cast(b, "float32") - T) ** 2,
        lambda: tfd.Bernoulli(probs=theta),
        [theta],
        estimator,
        seed=5,
        warmup=warmup,
    )
    return grads


def test_bernoulli_toy_score_function():
    grads = bernoulli_estimates(kvi.estimators.ScoreFunction())
    assert_mean_within_4se(grads, 1 - 2 * T)
    closed = (1 - T) ** 4 / THETA + T**4 / (1 - THETA) - (1 - 2 * T) ** 2
    assert_var_within(grads, closed)


def test_bernoulli_toy_score_function_with_moving_average():
    estimator = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage())
    grads = bernoulli_estimates(estimator, warmup=2)
    assert_mean_within_4se(grads, 1 - 2 * T)
    plain = (1 - T) ** 4 / THETA + T**4 / (1 - THETA) - (1 - 2 * T) ** 2
    assert grads.var() < 0.5 * plain


def test_auto_estimator_choice():
    assert isinstance(
        kvi.estimators.resolve_auto(True), kvi.estimators.Reparameterization
    ) and isinstance(kvi.estimators.resolve_auto(False), kvi.estimators.ScoreFunction)
    layer = kvi.layers.BernoulliLatent(3)
    layer.build((None, 3))
    assert isinstance(layer.resolved_estimator, kvi.estimators.ScoreFunction)
    assert isinstance(layer.resolved_estimator.baseline, kvi.estimators.baselines.MovingAverage)


# ----------------------------------------------------------------- the conjugate model
def conjugate_model(delta=0.0, kl="auto", **kwargs):
    """p(z) = N(0, 1), p(x|z) = N(z, 1); q(z|x) = N(x/2 + delta, 1/2)."""

    def posterior(x):
        return tfd.Independent(tfd.Normal(x / 2.0 + delta, math.sqrt(0.5)), 1)

    inputs = keras.Input((1,))
    z = kvi.layers.Latent(posterior, prior="standard_normal", kl=kl, name="z")(inputs)
    model = kvi.VariationalModel(inputs, z, likelihood="normal", **kwargs)
    model.compile(optimizer="sgd")
    return model


X = np.linspace(-2.0, 2.0, 50, dtype="float32")[:, None]
LOG_PX = numpy(tfd.Normal(0.0, math.sqrt(2.0)).log_prob(X[:, 0]))


def test_conjugate_elbo_equals_log_evidence_with_mc_kl():
    model = conjugate_model(kl="mc")
    result = model.evaluate(X, batch_size=50, verbose=0, return_dict=True)
    assert result["elbo"] == pytest.approx(LOG_PX.mean(), abs=1e-5)
    per_example = numpy(model.compute_objective(X, X, training=False)["bound"])
    np.testing.assert_allclose(per_example, LOG_PX, atol=1e-5)


def test_conjugate_elbo_equals_log_evidence_with_analytic_kl():
    # With a closed-form KL only E_q log p(x|z) is sampled: average K draws, 4 SE.
    model = conjugate_model(kl="analytic", num_samples=2000)
    out = model.compute_objective(X, X, training=False)
    per_sample = numpy(out["signals"].per_sample)  # [K, B]
    gap = per_sample - LOG_PX[None, :]
    se = float(gap.std(ddof=1)) / math.sqrt(gap.size)
    assert abs(gap.mean()) < 4 * se
    assert float(out["elbo"]) == pytest.approx(LOG_PX.mean(), abs=4 * se)


@pytest.mark.parametrize("delta", [0.5, 1.0])
def test_shifting_q_lowers_elbo_by_delta_squared(delta):
    model = conjugate_model(delta=delta, kl="analytic", num_samples=2000)
    per_sample = numpy(model.compute_objective(X, X, training=False)["signals"].per_sample)
    gap = per_sample - LOG_PX[None, :]
    se = float(gap.std(ddof=1)) / math.sqrt(gap.size)
    assert abs(gap.mean() + delta**2) < 4 * se


def test_iwae_lies_between_elbo_and_log_evidence():
    delta = 1.0
    elbo = conjugate_model(delta=delta, kl="mc", num_samples=1)
    iwae = conjugate_model(delta=delta, num_samples=16, objective="iwae")
    xs = np.repeat(X, 40, axis=0)
    elbo_value = float(numpy(elbo.compute_objective(xs, xs, training=False)["bound"]).mean())
    iwae_value = float(numpy(iwae.compute_objective(xs, xs, training=False)["bound"]).mean())
    log_px = float(np.repeat(LOG_PX, 40).mean())
    assert elbo_value < iwae_value < log_px
    assert elbo_value == pytest.approx(log_px - delta**2, abs=0.05)

"""`kvi.objectives.Renyi(alpha)`: the bound, its gradients, and its place in a model.

Li & Turner (2016): L_alpha = 1/(1 - alpha) log mean_k w_k^(1 - alpha); alpha = 0 is the IWAE
bound, alpha -> 1 the ELBO, and for a fixed set of samples L_alpha falls as alpha rises (a power
mean), so orderings on one set of log-weights are exact, not statistical.
"""

import itertools

import keras
import numpy as np
import pytest
from test_estimators_gradients import (
    X_OBS,
    assert_same_mean,
    assert_within_4_se,
    bernoulli,
    central_difference,
    log_joint,
    normal_log_scale,
    per_copy_gradients,
    variables,
)

import keras_vi as kvi

from backend_utils import value_and_gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")

ops = keras.ops
Renyi = kvi.objectives.Renyi


def _bound(objective, loc=0.8, scale=0.9, k=8, seed=3, n=256):
    q = kvi.distributions.Normal(np.full([n], loc, "float32"), np.float32(scale))
    value = kvi.expectation(
        log_joint, q, "reparameterization", num_samples=k, seed=seed, objective=objective
    )
    return float(ops.convert_to_numpy(value))


def test_alpha_zero_is_iwae_alpha_near_one_is_the_elbo_and_half_lies_between():
    iwae, elbo = _bound("iwae"), _bound("elbo")
    assert _bound(Renyi(0.0)) == pytest.approx(iwae, abs=1e-6)
    # Same draws (same seed): the bounds are functions of one set of log-weights.
    near_one = _bound(Renyi(0.999))
    assert near_one == pytest.approx(elbo, abs=2e-3)
    half = _bound(Renyi(0.5))
    assert elbo + 1e-3 < half < iwae - 1e-3, (elbo, half, iwae)
    # alpha < 0 lies above the IWAE bound.
    assert _bound(Renyi(-1.0)) > iwae + 1e-3
    # At the exact posterior every weight is p(x): every order gives log p(x) exactly.
    log_px = float(ops.convert_to_numpy(kvi.distributions.Normal(0.0, 2.0**0.5).log_prob(X_OBS)))
    for alpha in (0.0, 0.5, -1.0):
        exact = _bound(Renyi(alpha), loc=X_OBS / 2, scale=0.5**0.5)
        assert exact == pytest.approx(log_px, abs=1e-5)


def test_bound_matches_numpy_and_is_stable_for_large_log_weights():
    rng = np.random.default_rng(0)
    log_w = rng.normal(-500.0, 20.0, size=(6, 4)).astype("float32")
    for alpha in (0.0, 0.3, 0.9, -2.0):
        s = 1.0 - alpha
        expected = (np.logaddexp.reduce(s * log_w.astype(np.float64), axis=0) - np.log(6)) / s
        got = ops.convert_to_numpy(Renyi(alpha).bound(log_w))
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def _renyi_exact_discrete_gradient(alpha, theta, table, k):
    """d/dtheta of E[L_alpha] for Bernoulli(theta) samples, by enumerating all 2^k tuples."""

    def expected_bound(th):
        log_q = np.log(np.array([1.0 - th, th]))
        log_w = np.asarray(table, np.float64) - log_q
        total = 0.0
        for combo in itertools.product(range(2), repeat=k):
            idx = list(combo)
            s = 1.0 - alpha
            bound = (np.logaddexp.reduce(s * log_w[idx]) - np.log(k)) / s
            total += np.exp(np.sum(log_q[idx])) * bound
        return total

    return float(central_difference(expected_bound, theta))


@pytest.mark.parametrize("estimator", ["score_function", "vimco"])
def test_score_function_gradient_is_unbiased_on_a_discrete_q(estimator):
    # Bernoulli q, K = 3; target log p(x, b) = [-1.0, -2.5] for b = 0, 1; exact by enumeration.
    table = np.array([-1.0, -2.5], "float32")

    def bern_log_joint(b):
        return ops.where(b > 0.5, table[1], table[0])

    exact = _renyi_exact_discrete_gradient(0.5, 0.4, table, 3)
    [theta] = variables(0.4)
    if estimator == "vimco":  # VIMCO's leave-one-out is the IWAE bound's: refused here
        with pytest.raises(ValueError, match="needs objective='iwae'"):
            kvi.expectation(bern_log_joint, bernoulli(theta), "vimco", 3, 0, objective=Renyi(0.5))
        return
    _, (g,) = per_copy_gradients(
        bernoulli, [theta], bern_log_joint, estimator, 3, seed=11, objective=Renyi(0.5)
    )
    assert_within_4_se(g, exact, "score function, Renyi(0.5), K=3, d/dtheta")


def test_pathwise_and_score_function_gradients_agree():
    grads = {}
    for i, est in enumerate(["reparameterization", "score_function"]):
        params = variables(0.8, np.log(0.9), n=100_000)
        _, grads[est] = per_copy_gradients(
            normal_log_scale, params, log_joint, est, 4, seed=20 + i, objective=Renyi(0.5)
        )
    for j, name in enumerate(["loc", "log_scale"]):
        assert_same_mean(grads["reparameterization"][j], grads["score_function"][j], f"d/d{name}")


def _vae(objective, num_samples=4, **kwargs):
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    z = kvi.layers.NormalLatent(2, name="z")(keras.layers.Dense(4)(x))
    logits = keras.layers.Dense(6)(z)
    return kvi.VariationalModel(
        x, logits, likelihood="bernoulli", num_samples=num_samples, objective=objective, **kwargs
    )


def _data(n=32):
    return (np.random.default_rng(0).random((n, 6)) < 0.4).astype("float32")


def test_model_loss_is_minus_the_renyi_bound_of_its_log_weights():
    model = _vae(Renyi(0.5))
    x = _data()
    out = model.compute_objective(x, x, training=False)
    per_sample = ops.convert_to_numpy(out["signals"].per_sample)  # [K, B] log-weights
    s = 0.5
    expected = (np.logaddexp.reduce(s * per_sample.astype(np.float64), axis=0) - np.log(4)) / s
    assert float(ops.convert_to_numpy(out["loss_value"])) == pytest.approx(
        -expected.mean(), rel=1e-5
    )
    # The same network under "iwae" and Renyi(0): the same bound.
    iwae = _vae("iwae").compute_objective(x, x, training=False)
    renyi0 = _vae(Renyi(0.0)).compute_objective(x, x, training=False)
    assert float(ops.convert_to_numpy(renyi0["loss_value"])) == pytest.approx(
        float(ops.convert_to_numpy(iwae["loss_value"])), rel=1e-6
    )


def test_model_trains_under_xla_and_round_trips(tmp_path):
    model = _vae(Renyi(0.5))
    assert model.objective == Renyi(0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    x = _data(64)
    history = model.fit(x, epochs=3, batch_size=16, verbose=0)
    loss = history.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    path = str(tmp_path / "renyi.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.objective == Renyi(0.5)
    assert _vae(Renyi(0.0)).objective == "iwae" and _vae(Renyi(1.0)).objective == "elbo"
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(saved), ops.convert_to_numpy(restored))


def test_model_gradient_matches_the_renyi_bound_of_a_score_function_latent():
    # A Bernoulli latent (score function, bound as its signal) trains under Renyi(0.5).
    keras.utils.set_random_seed(1)
    x = keras.Input((6,))
    b = kvi.layers.BernoulliLatent(3)(keras.layers.Dense(3)(x))
    model = kvi.VariationalModel(
        x, keras.layers.Dense(6)(b), likelihood="bernoulli", num_samples=3, objective=Renyi(0.5)
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = model.fit(_data(64), epochs=4, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Renyi("0.5"), "`alpha` must be a number"),
        (lambda: Renyi(float("nan")), "`alpha` must be finite"),
        (lambda: _vae(Renyi(0.5), num_samples=1), "needs num_samples >= 2"),
        (lambda: _vae(Renyi(0.5), free_bits=0.1), "free_bits` applies to objective='elbo'"),
        (lambda: _vae("renyi"), "Unknown `objective`"),
    ],
)
def test_bad_settings_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_iwae_only_estimators_refuse_other_orders():
    x = keras.Input((6,))
    z = kvi.layers.NormalLatent(2, estimator="dreg")(keras.layers.Dense(4)(x))
    model = kvi.VariationalModel(
        x, keras.layers.Dense(6)(z), likelihood="bernoulli", num_samples=4, objective=Renyi(0.5)
    )
    with pytest.raises(ValueError, match="needs objective='iwae'"):
        model.compile(optimizer="adam")


def test_value_and_gradient_of_expectation_with_renyi_inside_a_compiled_gradient():
    [loc] = variables(0.8, n=16)
    value, [grad] = value_and_gradients(
        lambda: kvi.expectation(
            log_joint,
            kvi.distributions.Normal(loc, 0.9),
            "reparameterization",
            num_samples=4,
            seed=0,
            objective=Renyi(0.5),
        ),
        [loc],
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.any(grad != 0)

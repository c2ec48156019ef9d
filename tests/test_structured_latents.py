"""Structured latents: a prior built from a tensor (`prior_params=`), p(z1 | z2) and p(z | c)."""

import keras
import numpy as np
import pytest

import keras_vi as kvi

from backend_utils import gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")


def _conditional_prior_model(num_samples=1, tile_at="auto", kl="auto"):
    """p(z | c) with c the input, q(z | x): the prior's parameters come from the input."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh", name="encoder")(inputs)
    q_params = keras.layers.Dense(4, name="q_params")(h)
    p_params = keras.layers.Dense(4, name="p_params")(inputs)
    z = kvi.layers.NormalLatent(2, name="z", kl=kl)(q_params, prior_params=p_params)
    outputs = keras.layers.Dense(6, name="decoder")(z)
    return kvi.VariationalModel(
        inputs, outputs, likelihood="bernoulli", num_samples=num_samples, tile_at=tile_at
    )


def _top_down_model(num_samples=1, tile_at="auto", objective="elbo"):
    """q(z2 | x) q(z1 | x) with p(z2) p(z1 | z2) p(x | z1, z2): a prior that depends on
    another latent (q(z1 | x) alone, so the K copies can start at the latents)."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    z2 = kvi.layers.NormalLatent(2, name="z2")(keras.layers.Dense(4)(h))
    q1 = keras.layers.Dense(6)(h)
    p1 = keras.layers.Dense(6, name="p1")(z2)
    z1 = kvi.layers.NormalLatent(3, name="z1")(q1, prior_params=p1)
    outputs = keras.layers.Dense(6)(keras.layers.Concatenate()([z1, z2]))
    return kvi.VariationalModel(
        inputs,
        outputs,
        likelihood="bernoulli",
        num_samples=num_samples,
        tile_at=tile_at,
        objective=objective,
    )


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _normal_kl(q_params, p_params, min_scale=1e-5):
    """KL(N(q) || N(p)) summed over units, loc and softplus scale as NormalLatent reads them."""
    mq, rq = np.split(q_params.astype(np.float64), 2, axis=-1)
    mp, rp = np.split(p_params.astype(np.float64), 2, axis=-1)
    sq, sp = _softplus(rq) + min_scale, _softplus(rp) + min_scale
    return np.sum(np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5, axis=-1)


def test_conditional_prior_kl_is_the_closed_form(binary_data):
    model = _conditional_prior_model(kl="analytic")
    x = binary_data[:32, :6]
    probe = keras.Model(
        model.inputs, [model.get_layer("q_params").output, model.get_layer("p_params").output]
    )
    q_params, p_params = (keras.ops.convert_to_numpy(t) for t in probe(x))
    expected = _normal_kl(q_params, p_params)
    assert expected.std() > 0.01  # the prior differs per example
    out = model.compute_objective(x, x, training=False)
    np.testing.assert_allclose(float(out["kl_per_latent"]["z"]), expected.mean(), rtol=1e-5)
    # The same KL by Monte Carlo: within 4 standard errors of the closed form.
    mc = _conditional_prior_model(kl="mc", num_samples=1)
    mc.set_weights(model.get_weights())
    draws = [
        float(mc.compute_objective(x, x, training=False)["kl_per_latent"]["z"]) for _ in range(40)
    ]
    se = np.std(draws, ddof=1) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - expected.mean()) < 4 * se


def test_plain_keras_model_adds_the_conditional_kl():
    inputs = keras.Input((6,))
    q_params = keras.layers.Dense(4)(inputs)
    p_params = keras.layers.Dense(4)(inputs)
    z = kvi.layers.NormalLatent(2, name="z", kl="analytic")(q_params, prior_params=p_params)
    model = keras.Model(inputs, z)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    model(x)
    probe = keras.Model(inputs, [q_params, p_params])
    expected = _normal_kl(*(keras.ops.convert_to_numpy(t) for t in probe(x)))
    np.testing.assert_allclose(float(model.losses[0]), expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("build", [_conditional_prior_model, _top_down_model])
def test_tiling_at_the_latent_gives_the_same_bound_and_gradients(build, binary_data):
    x = binary_data[:12, :6]
    results = {}
    for tile_at in ("input", "latent"):
        keras.utils.set_random_seed(3)
        model = build(num_samples=3, tile_at=tile_at)
        keras.utils.set_random_seed(11)
        with keras.StatelessScope():
            out = model.compute_objective(x, x, training=True)
        keras.utils.set_random_seed(11)
        grads = gradients(
            lambda model=model: model.compute_objective(x, x, training=True)["loss"],
            model.trainable_variables,
        )
        results[tile_at] = (model, out, grads)
    assert results["latent"][0].resolved_tile_at == "latent"
    for key in ("loss", "elbo", "kl"):
        np.testing.assert_allclose(
            float(results["latent"][1][key]), float(results["input"][1][key]), rtol=1e-5
        )
    for g_latent, g_input in zip(results["latent"][2], results["input"][2]):
        np.testing.assert_allclose(g_latent, g_input, rtol=1e-4, atol=1e-6)


def test_top_down_model_trains_and_its_prior_learns(binary_data):
    model = _top_down_model(num_samples=4, objective="iwae")
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    x = binary_data[:, :6]
    before = model.evaluate(x, x, verbose=0, return_dict=True)
    p1_before = [w.copy() for w in model.get_layer("p1").get_weights()]
    history = model.fit(x, x, batch_size=64, epochs=15, verbose=0)
    after = model.evaluate(x, x, verbose=0, return_dict=True)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after["elbo"] > before["elbo"] + 1.0
    assert {"kl/z1", "kl/z2"} <= set(after)
    moved = [np.abs(a - b).max() for a, b in zip(model.get_layer("p1").get_weights(), p1_before)]
    assert max(moved) > 1e-2  # the conditional prior's parameters are trained


def test_generic_latent_takes_a_callable_prior_of_the_parameters():
    tfd = kvi.distributions

    def q_fn(params):
        return tfd.Independent(tfd.Normal(params, 1.0), 1)

    def prior_fn(prior_params):
        return tfd.Independent(tfd.Normal(prior_params, 2.0), 1)

    inputs = keras.Input((3,))
    c = keras.layers.Dense(3, name="c")(inputs)
    z = kvi.layers.Latent(q_fn, prior=prior_fn, kl="analytic", name="z")(inputs, prior_params=c)
    model = kvi.VariationalModel(inputs, keras.layers.Dense(3)(z), likelihood="normal")
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    out = model.compute_objective(x, x, training=False)
    mp = keras.ops.convert_to_numpy(keras.Model(inputs, c)(x)).astype(np.float64)
    # KL(N(x, 1) || N(c, 4)) per unit: log 2 + (1 + (x - c)^2) / 8 - 1/2
    expected = np.sum(np.log(2.0) + (1.0 + (x - mp) ** 2) / 8.0 - 0.5, axis=-1).mean()
    np.testing.assert_allclose(float(out["kl_per_latent"]["z"]), expected, rtol=1e-5)


def test_bad_prior_params_raise_clear_errors():
    inputs = keras.Input((6,))
    params = keras.layers.Dense(4)(inputs)
    with pytest.raises(ValueError, match=r"`prior_params` of width 4.*got 6"):
        kvi.layers.NormalLatent(2)(params, prior_params=keras.layers.Dense(6)(inputs))
    with pytest.raises(ValueError, match=r"prior=None.*prior_params"):
        kvi.layers.NormalLatent(2, prior=None)(params, prior_params=params)
    with pytest.raises(ValueError, match=r"both prior=.*and `prior_params`"):
        kvi.layers.NormalLatent(2, prior=kvi.priors.Normal(0.0, 2.0))(params, prior_params=params)
    tfd = kvi.distributions
    latent = kvi.layers.Latent(
        lambda p: tfd.Independent(tfd.Normal(p, 1.0), 1), prior="standard_normal"
    )
    with pytest.raises(ValueError, match=r"`prior` must be a callable prior_params"):
        latent(params, prior_params=params)
    wrong_shape = kvi.layers.Latent(
        lambda p: tfd.Independent(tfd.Normal(p, 1.0), 1),
        prior=lambda p: tfd.Independent(tfd.Normal(p[:, :2], 1.0), 1),
    )
    with pytest.raises(ValueError, match=r"event shape \(2,\); expected q's"):
        wrong_shape(params, prior_params=params)


def test_saved_model_keeps_the_conditional_prior(tmp_path, binary_data):
    model = _top_down_model(num_samples=2)
    model.compile(optimizer="adam")
    x = binary_data[:16, :6]
    model.fit(x, x, epochs=1, verbose=0)
    path = str(tmp_path / "ladder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for model_ in (model, loaded):
        keras.utils.set_random_seed(5)
        model_._reference = model_.compute_objective(x, x, training=False)
    np.testing.assert_allclose(
        float(loaded._reference["elbo"]), float(model._reference["elbo"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(loaded._reference["kl_per_latent"]["z1"]),
        float(model._reference["kl_per_latent"]["z1"]),
        rtol=1e-6,
    )


# ------------------------------------------------------------------ a chain with known evidence
# z2 ~ N(0, 1), z1 | z2 ~ N(z2, 1), x | z1 ~ N(z1, 1): log p(x) = log N(x; 0, 3). With q the
# exact posterior every importance weight is p(x), so the ELBO and the IWAE bound equal log p(x)
# for every example and every draw: any missing or misplaced term shows. (The KL is the
# per-sample Monte Carlo one: a closed-form KL is exact only in expectation.)


def _raw(scale, min_scale=1e-5):
    """NormalLatent's raw scale input for a standard deviation `scale`."""
    return float(np.log(np.expm1(scale - min_scale)))


def _fixed_dense(kernel, bias, name=None):
    kernel, bias = np.asarray(kernel, "float32"), np.asarray(bias, "float32")
    return keras.layers.Dense(
        bias.shape[0],
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
        name=name,
    )


def _bottom_up_chain(conditioned=True, **kwargs):
    """Burda et al.'s order: q(z1 | x) = p(z1 | x), then q(z2 | z1) = p(z2 | z1)."""
    x = keras.Input((1,))
    z1_layer = kvi.layers.NormalLatent(1, name="z1", kl="mc")
    z1 = z1_layer(_fixed_dense([[2 / 3, 0.0]], [0.0, _raw((2 / 3) ** 0.5)])(x))
    z2 = kvi.layers.NormalLatent(1, name="z2", kl="mc")(
        _fixed_dense([[0.5, 0.0]], [0.0, _raw(0.5**0.5)])(z1)
    )
    if conditioned:
        p1 = _fixed_dense([[1.0, 0.0]], [0.0, _raw(1.0)], name="p1")(z2)
        z1 = kvi.layers.ConditionalPrior(z1_layer)(z1, p1)
    loc = _fixed_dense([[1.0]], [0.0])(z1)
    return kvi.VariationalModel(x, loc, likelihood="normal", **kwargs)


def _top_down_chain(**kwargs):
    """q(z2 | x) = p(z2 | x), then q(z1 | x, z2) = p(z1 | z2, x), with `prior_params=`."""
    x = keras.Input((1,))
    z2 = kvi.layers.NormalLatent(1, name="z2", kl="mc")(
        _fixed_dense([[1 / 3, 0.0]], [0.0, _raw((2 / 3) ** 0.5)])(x)
    )
    q1 = _fixed_dense([[0.5, 0.0], [0.5, 0.0]], [0.0, _raw(0.5**0.5)])(
        keras.layers.Concatenate()([x, z2])
    )
    p1 = _fixed_dense([[1.0, 0.0]], [0.0, _raw(1.0)])(z2)
    z1 = kvi.layers.NormalLatent(1, name="z1", kl="mc")(q1, prior_params=p1)
    loc = _fixed_dense([[1.0]], [0.0])(z1)
    return kvi.VariationalModel(x, loc, likelihood="normal", **kwargs)


@pytest.mark.parametrize("build", [_bottom_up_chain, _top_down_chain])
@pytest.mark.parametrize("objective, k", [("elbo", 1), ("iwae", 3)])
def test_exact_posterior_of_a_chain_gives_the_evidence(build, objective, k):
    x = np.linspace(-2.0, 3.0, 8, dtype="float32")[:, None]
    log_px = -0.5 * np.log(2 * np.pi * 3.0) - x[:, 0] ** 2 / 6.0
    model = build(objective=objective, num_samples=k)
    out = model.compute_objective(x, x, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["bound"]), log_px, atol=2e-4)
    assert set(out["kl_per_latent"]) == {"z1", "z2"}


def test_without_the_conditional_prior_the_bound_is_not_the_evidence():
    x = np.linspace(-2.0, 3.0, 8, dtype="float32")[:, None]
    log_px = -0.5 * np.log(2 * np.pi * 3.0) - x[:, 0] ** 2 / 6.0
    out = _bottom_up_chain(conditioned=False).compute_objective(x, x, training=False)
    assert np.abs(keras.ops.convert_to_numpy(out["bound"]) - log_px).max() > 0.1


def _burda_like(num_samples=3, objective="iwae"):
    inputs = keras.Input((6,))
    z1_layer = kvi.layers.NormalLatent(3, name="z1")
    z1 = z1_layer(keras.layers.Dense(6)(keras.layers.Dense(8, activation="tanh")(inputs)))
    z2 = kvi.layers.NormalLatent(2, name="z2")(keras.layers.Dense(4)(z1))
    p1 = keras.layers.Dense(6, name="p1")(keras.layers.Dense(8, activation="tanh")(z2))
    z1 = kvi.layers.ConditionalPrior(z1_layer, name="p_z1")(z1, p1)
    outputs = keras.layers.Dense(6)(keras.layers.Dense(8, activation="tanh")(z1))
    return kvi.VariationalModel(
        inputs, outputs, likelihood="bernoulli", num_samples=num_samples, objective=objective
    )


def test_bottom_up_model_trains_under_xla_saves_and_its_prior_learns(binary_data, tmp_path):
    keras.utils.set_random_seed(0)
    model = _burda_like()
    model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True)
    x = binary_data[:, :6]
    p1_before = [w.copy() for w in model.get_layer("p1").get_weights()]
    history = model.fit(x, x, batch_size=64, epochs=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["elbo"][-1] > history.history["elbo"][0] + 1.0
    assert {"kl/z1", "kl/z2"} <= set(history.history)
    moved = [np.abs(a - b).max() for a, b in zip(model.get_layer("p1").get_weights(), p1_before)]
    assert max(moved) > 1e-2
    path = str(tmp_path / "bottom_up.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    keras.utils.set_random_seed(5)
    expected = model.evaluate(x, x, verbose=0, return_dict=True)
    keras.utils.set_random_seed(5)
    got = loaded.evaluate(x, x, verbose=0, return_dict=True)
    assert got["kl/z1"] == pytest.approx(expected["kl/z1"], rel=1e-5)


def test_plain_keras_model_adds_the_kl_of_the_conditional_prior():
    inputs = keras.Input((1,))
    z1_layer = kvi.layers.NormalLatent(1, name="z1", kl="analytic")
    q1 = keras.layers.Dense(2)(inputs)
    z1 = z1_layer(q1)
    p1 = keras.layers.Dense(2)(inputs)  # a parent that is not random keeps the check exact
    z1 = kvi.layers.ConditionalPrior(z1_layer)(z1, p1)
    model = keras.Model(inputs, z1)
    x = np.random.default_rng(0).normal(size=(5, 1)).astype("float32")
    model(x)
    probe = keras.Model(inputs, [q1, p1])
    expected = _normal_kl(*(keras.ops.convert_to_numpy(t) for t in probe(x)))
    assert len(model.losses) == 1  # the conditional KL only, not the latent's N(0, 1) one
    np.testing.assert_allclose(float(model.losses[0]), expected.mean(), rtol=1e-5)


def test_conditional_prior_errors():
    inputs = keras.Input((4,))
    no_prior = kvi.layers.NormalLatent(2, prior=None)
    with pytest.raises(ValueError, match="has prior=None"):
        kvi.layers.ConditionalPrior(no_prior)
    with pytest.raises(ValueError, match="must be a kvi.layers latent layer"):
        kvi.layers.ConditionalPrior(keras.layers.Dense(2))
    z_layer = kvi.layers.NormalLatent(2, name="z")
    z = z_layer(inputs)
    kvi.layers.ConditionalPrior(z_layer, name="first")
    with pytest.raises(ValueError, match="already gets its prior from ConditionalPrior 'first'"):
        kvi.layers.ConditionalPrior(z_layer)
    with pytest.raises(ValueError, match="first input must be that latent layer's output"):
        kvi.layers.ConditionalPrior("z")(keras.layers.Dense(2)(z), inputs)
    both = kvi.layers.NormalLatent(2, name="both")
    zb = both(inputs, prior_params=inputs)
    out = kvi.layers.ConditionalPrior(both)(zb, inputs)
    model = kvi.VariationalModel(inputs, keras.layers.Dense(4)(out), likelihood="bernoulli")
    x = np.zeros((2, 4), "float32")
    with pytest.raises(ValueError, match="also given a prior by a ConditionalPrior"):
        model.compute_objective(x, x, training=False)


def test_a_conditional_prior_whose_output_is_unused_is_refused():
    inputs = keras.Input((4,))
    z_layer = kvi.layers.NormalLatent(2, name="z")
    z = z_layer(inputs)
    kvi.layers.ConditionalPrior(z_layer, name="unused")(z, keras.layers.Dense(4)(z))
    model = kvi.VariationalModel(inputs, keras.layers.Dense(4)(z), likelihood="bernoulli")
    with pytest.raises(ValueError, match="ConditionalPrior 'unused', which is not part"):
        model.compile(optimizer="adam")

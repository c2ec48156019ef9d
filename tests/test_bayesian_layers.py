"""Bayesian layers: noise statistics, KL terms, model integration, saving, XLA, examples."""

import math
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_vi as kvi
from keras_vi import _scope

from backend_utils import gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
JAX = keras.backend.backend() == "jax"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

L = kvi.layers
DENSE = (L.DenseReparameterization, L.DenseFlipout, L.DenseLocalReparameterization)
CONV = (L.Conv2DReparameterization, L.Conv2DFlipout, L.Conv2DLocalReparameterization)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _make(cls, **kwargs):
    return cls(3, **kwargs) if cls in DENSE else cls(2, 3, **kwargs)


def _input(cls, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, 4) if cls in DENSE else (batch, 5, 5, 2)
    return rng.normal(size=shape).astype("float32")


def _randomize_posterior(layer, seed=0):
    rng = np.random.default_rng(seed)
    for name in layer.weight_names:
        loc, raw = layer._posteriors[name]
        loc.assign(rng.normal(0.0, 0.5, loc.shape).astype("float32"))
        raw.assign(rng.normal(-1.0, 0.5, raw.shape).astype("float32"))


def _posterior_numpy(layer, name):
    loc, raw = layer._posteriors[name]
    return np.asarray(loc, np.float64), _softplus(np.asarray(raw, np.float64)) + 1e-6


def _numpy(x):
    return ops.convert_to_numpy(x)


def _draws(layer, fn, x, draws):
    """`fn(layer(x))` for `draws` calls of the layer, compiled, stacked as a NumPy array."""
    layer(x)  # build
    if not JAX:
        import tensorflow as tf

        step = tf.function(lambda inputs: fn(layer(inputs)))
        return np.stack([step(x).numpy() for _ in range(draws)])
    import jax

    # JAX compiles pure functions: the layer's seed state goes in and out explicitly.
    trainable = [v.value for v in layer.trainable_variables]

    @jax.jit
    def step(non_trainable, inputs):
        outputs, non_trainable = layer.stateless_call(trainable, non_trainable, inputs)
        return fn(outputs), non_trainable

    state, samples = [v.value for v in layer.non_trainable_variables], []
    for _ in range(draws):
        sample, state = step(state, x)
        samples.append(np.asarray(sample))
    for variable, value in zip(layer.non_trainable_variables, state):
        variable.assign(value)
    return np.stack(samples)


def _normal_kl_numpy(mu, sigma, prior_loc, prior_scale):
    return np.sum(
        np.log(prior_scale / sigma)
        + (sigma**2 + (mu - prior_loc) ** 2) / (2 * prior_scale**2)
        - 0.5
    )


# --------------------------------------------------------------------------- noise statistics
def _batch_mean_draws(layer, x, draws):
    return _draws(layer, lambda outputs: ops.mean(outputs, axis=0), x, draws)


@pytest.mark.parametrize("family", ["dense", "conv"])
def test_batch_mean_variance_falls_like_batch_size_with_flipout_and_local_reparam(family):
    """M identical rows: Var(batch mean) is ~M times smaller for Flipout and LR (within 30%)."""
    m, draws = 32, 1000
    classes = DENSE if family == "dense" else CONV
    x = np.repeat(_input(classes[0], batch=1), m, axis=0)
    variance = {}
    for cls in classes:
        layer = _make(cls, posterior_scale_init=0.5, seed=7)
        variance[cls] = _batch_mean_draws(layer, x, draws).var(axis=0, ddof=1).sum()
    reparameterization, flipout, local = (variance[c] for c in classes)
    for name, value in (("flipout", flipout), ("local reparameterization", local)):
        ratio = reparameterization / value
        assert abs(ratio / m - 1.0) < 0.3, f"{family} {name}: ratio {ratio:.1f}, expected ~{m}"


@pytest.mark.parametrize("cls", DENSE, ids=lambda c: c.__name__)
def test_dense_output_has_the_exact_marginal_variance(cls):
    """Per row, every estimator gives Var(out_j) = sum_i x_i^2 sigma_ij^2 + sigma_bj^2."""
    draws = 1000
    layer = _make(cls, seed=3)
    x = _input(cls, batch=2)
    layer(x)
    _randomize_posterior(layer)
    samples = _draws(layer, lambda outputs: outputs[0], x, draws)
    _, kernel_scale = _posterior_numpy(layer, "kernel")
    bias_loc, bias_scale = _posterior_numpy(layer, "bias")
    kernel_loc, _ = _posterior_numpy(layer, "kernel")
    expected_var = (x[0, :, None] ** 2 * kernel_scale**2).sum(axis=0) + bias_scale**2
    expected_mean = x[0] @ kernel_loc + bias_loc
    var_se = expected_var * math.sqrt(2.0 / (draws - 1))
    assert np.all(np.abs(samples.var(axis=0, ddof=1) - expected_var) < 4 * var_se)
    assert np.all(np.abs(samples.mean(axis=0) - expected_mean) < 4 * np.sqrt(expected_var / draws))


@pytest.mark.parametrize("cls", [L.DenseReparameterization, L.Conv2DReparameterization])
def test_reparameterization_draws_one_weight_sample_per_tiled_copy(cls):
    layer = _make(cls, posterior_scale_init=0.5)
    x = np.repeat(_input(cls, batch=1), 4, axis=0)
    layer(x)
    with _scope.recording(_scope.StepScope(num_samples=2)):
        out = _numpy(layer(x))  # rows 0-1: copy 0, rows 2-3: copy 1 (k-major tiling)
    np.testing.assert_allclose(out[0], out[1])
    np.testing.assert_allclose(out[2], out[3])
    assert np.abs(out[0] - out[2]).max() > 1e-3
    assert np.abs(np.diff(_numpy(layer(x)), axis=0)).max() == 0  # outside: one sample
    flipout = _make(L.DenseFlipout if cls in DENSE else L.Conv2DFlipout, posterior_scale_init=0.5)
    assert np.abs(np.diff(_numpy(flipout(x)), axis=0)).max() > 1e-3  # every row its own noise


# --------------------------------------------------------------------------------------- KL
@pytest.mark.parametrize("cls", DENSE + CONV, ids=lambda c: c.__name__)
def test_kl_equals_the_closed_form_of_the_posterior_parameters(cls):
    layer = _make(cls)
    x = _input(cls)
    layer(x)
    _randomize_posterior(layer, seed=1)
    expected = sum(
        _normal_kl_numpy(*_posterior_numpy(layer, n), 0.0, 1.0) for n in ("kernel", "bias")
    )
    np.testing.assert_allclose(float(layer.kl_divergence()), expected, rtol=1e-5)
    scope = _scope.StepScope()
    with _scope.recording(scope):
        layer(x)
        layer(x)  # shared weights: a second call must not count the KL twice
    assert len(scope.weight_kls) == 1 and scope.weight_kls[0][0] is layer
    np.testing.assert_allclose(float(scope.weight_kls[0][1]), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "prior, loc, scale",
    [
        (kvi.priors.Normal(loc=0.3, scale=0.7), 0.3, 0.7),
        (kvi.priors.LearnableNormal(loc=-0.2, scale=2.0, learn_loc=True), -0.2, 2.0),
        (tfd.Normal(0.1, 1.5), 0.1, 1.5),  # a raw TFP distribution, applied elementwise
    ],
    ids=["normal", "learnable_normal", "tfd_normal"],
)
def test_kl_closed_form_with_other_normal_priors(prior, loc, scale):
    layer = L.DenseFlipout(3, prior=prior)
    layer(_input(L.DenseFlipout))
    _randomize_posterior(layer, seed=2)
    expected = sum(
        _normal_kl_numpy(*_posterior_numpy(layer, n), loc, scale) for n in ("kernel", "bias")
    )
    np.testing.assert_allclose(float(layer.kl_divergence()), expected, rtol=1e-5)


def test_learnable_prior_is_trained_by_the_kl_towards_type_two_maximum_likelihood():
    """d KL / d prior scale vanishes at s^2 = mean(mu^2 + sigma^2) and has the right sign."""
    layer = L.DenseFlipout(3, prior=kvi.priors.LearnableNormal(scale=1.0), use_bias=False)
    layer(_input(L.DenseFlipout))
    _randomize_posterior(layer, seed=4)
    mu, sigma = _posterior_numpy(layer, "kernel")
    optimum = math.sqrt(np.mean(mu**2 + sigma**2))
    raw_scale = next(w for w in layer.trainable_weights if "prior_raw_scale" in w.path)
    assert not any("prior_loc" in w.path for w in layer.trainable_weights)  # learn_loc=False
    slopes = []
    for scale in (0.5 * optimum, optimum, 2.0 * optimum):
        raw_scale.assign(scale + math.log(-math.expm1(-scale)))  # softplus^-1
        (slope,) = gradients(layer.kl_divergence, [raw_scale])
        slopes.append(float(slope))
    assert slopes[0] < 0 < slopes[2]
    assert abs(slopes[1]) < 1e-3 * abs(slopes[0])


def _scale_mixture_reference(mu, sigma, pi, s1, s2, n=200_000, seed=0):
    """High-sample E_q[log q - log p] per element, summed (numpy, independent of the layer)."""
    rng = np.random.default_rng(seed)
    total, variance = 0.0, 0.0
    for m, s in zip(mu.ravel(), sigma.ravel()):
        w = m + s * rng.standard_normal(n)
        log_q = -0.5 * ((w - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
        comps = np.stack(
            [
                np.log(pi) - 0.5 * (w / s1) ** 2 - np.log(s1),
                np.log(1 - pi) - 0.5 * (w / s2) ** 2 - np.log(s2),
            ]
        )
        log_p = np.logaddexp(comps[0], comps[1]) - 0.5 * np.log(2 * np.pi)
        total += np.mean(log_q - log_p)
        variance += np.var(log_q - log_p) / n
    return total, math.sqrt(variance)


def _compiled(fn):
    """`fn` traced once and compiled (the variables it reads do not change meanwhile)."""
    if JAX:
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn)


def test_scale_mixture_monte_carlo_kl_is_unbiased():
    pi, s1, s2 = 0.5, 1.0, 0.05
    layer = L.DenseLocalReparameterization(
        2, prior=kvi.priors.ScaleMixture(pi=pi, sigma1=s1, sigma2=s2), kl_samples=20
    )
    layer(_input(L.DenseLocalReparameterization))  # kernel 4x2 + bias 2
    _randomize_posterior(layer, seed=5)
    reference, reference_se = 0.0, 0.0
    for name in layer.weight_names:
        value, se = _scale_mixture_reference(*_posterior_numpy(layer, name), pi, s1, s2)
        reference += value
        reference_se = math.hypot(reference_se, se)
    estimate = _compiled(layer.weight_kl)
    # Each estimate averages kl_samples=20 draws (the log-ratio is heavy-tailed).
    draws = np.array([float(estimate(np.array([i, 17], "int32"))) for i in range(1000)])
    se = math.hypot(draws.std(ddof=1) / math.sqrt(len(draws)), reference_se)
    assert abs(draws.mean() - reference) < 4 * se, (draws.mean(), reference, se)
    assert draws.std() > 0.1  # really a Monte Carlo estimate, not a constant
    with pytest.raises(ValueError, match="MixtureSameFamily"):
        L.DenseFlipout(2, prior=kvi.priors.ScaleMixture(), kl="analytic")(np.ones((1, 4)))


# ----------------------------------------------------------------------- model integration
N_TRAIN = 64


@pytest.fixture(scope="module")
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TRAIN, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) + 0.1 * rng.normal(size=(N_TRAIN, 1))).astype("float32")
    return x, y


def _weight_kl_sum(model):
    return sum(
        float(layer.kl_divergence())
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, L.BayesianLayer)
    )


def test_variational_model_adds_weight_kl_over_n_times_kl_weight(regression_data):
    x, y = regression_data
    inputs = keras.Input((4,))
    h = L.DenseFlipout(8, activation="relu", num_examples=3)(inputs)  # layer N is ignored here
    outputs = L.DenseLocalReparameterization(1)(h)
    model = kvi.VariationalModel(
        inputs, outputs, likelihood="normal", kl_weight=0.5, num_examples=1000
    )
    model.compile(optimizer="adam")
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    expected_kl = _weight_kl_sum(model) / 1000
    np.testing.assert_allclose(result["kl"], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(result["loss"] - result["nll"], 0.5 * expected_kl, rtol=1e-4)
    assert not model.losses  # no add_loss inside a VariationalModel: no double counting


def test_fit_infers_num_examples_or_asks_for_it(regression_data):
    import tensorflow as tf  # tf.data, which Keras takes on every backend

    x, y = regression_data
    inputs = keras.Input((4,))
    model = kvi.VariationalModel(inputs, L.DenseFlipout(1)(inputs), likelihood="normal")
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert float(model._num_examples_var) == N_TRAIN
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    with pytest.raises(ValueError, match="num_examples"):
        model.fit(endless, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)
    # Not needed without Bayesian layers.
    plain = kvi.VariationalModel(inputs, keras.layers.Dense(1)(inputs), likelihood="normal")
    plain.compile(optimizer="adam")
    plain.fit(endless, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)


@pytest.fixture(scope="module")
def all_layers_model():
    """A functional VariationalModel with all six layers and every serializable prior kind."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    h = L.Conv2DReparameterization(2, 3, padding="same", activation="relu", name="c_rep")(inputs)
    h = L.Conv2DFlipout(
        2, 3, activation="relu", prior=kvi.priors.ScaleMixture(0.5, 1.0, 0.1), name="c_flip"
    )(h)
    h = L.Conv2DLocalReparameterization(2, (2, 2), strides=2, name="c_lr")(h)
    h = keras.layers.Flatten()(h)
    h = L.DenseReparameterization(
        4, activation="tanh", prior=kvi.priors.LearnableNormal(), name="d_rep"
    )(h)
    h = L.DenseFlipout(
        4,
        activation="relu",
        prior=kvi.priors.Normal(0.0, 0.5),
        bias_prior="standard_normal",
        name="d_flip",
    )(h)
    logits = L.DenseLocalReparameterization(3, name="d_lr")(h)
    model = kvi.VariationalModel(inputs, logits, likelihood="categorical")
    rng = np.random.default_rng(0)
    x = rng.random((32, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    model.compile(optimizer="adam", jit_compile=True)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model, x, y, history


def test_all_layers_train_under_xla_in_a_functional_model(all_layers_model):
    model, _, _, history = all_layers_model
    assert model.jit_compile is True
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert history.history["kl"][-1] > 0
    learnable = model.get_layer("d_rep").trainable_weights
    assert any("prior_raw_scale" in w.path for w in learnable)


def test_all_layers_save_and_load(all_layers_model, tmp_path):
    model, x, y, _ = all_layers_model
    path = str(tmp_path / "bnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for layer in model.layers:
        other = loaded.get_layer(layer.name)
        assert type(other) is type(layer)
        for a, b in zip(layer.weights, other.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if isinstance(layer, L.BayesianLayer):
            assert other.get_config() == layer.get_config()
            other.seed_generator.state.assign(layer.seed_generator.state)
    # Same weights and same noise state: identical stochastic outputs.
    np.testing.assert_allclose(_numpy(loaded(x[:4])), _numpy(model(x[:4])), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_weight_kl_sum(loaded), _weight_kl_sum(model), rtol=1e-5)
    assert loaded.likelihood == "categorical"


@pytest.mark.parametrize("cls", DENSE + CONV, ids=lambda c: c.__name__)
def test_get_config_round_trip(cls):
    layer = _make(
        cls,
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_constraint="non_neg",
        prior=kvi.priors.ScaleMixture(0.25, 1.5, 0.01),
        posterior_scale_init=0.02,
        kl="mc",
        kl_samples=3,
        num_examples=100,
        seed=5,
        name="bayes",
    )
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert isinstance(clone.prior, kvi.priors.ScaleMixture) and clone.prior.pi == 0.25
    clone(_input(cls))
    assert clone.weight_names == ["kernel"]


def test_sequential_model_adds_kl_over_n_through_add_loss_in_train_and_validation(
    regression_data,
):
    """Plain keras.Sequential: layers with num_examples add KL / N; the others add nothing."""
    x, _ = regression_data
    images, y = x.reshape(N_TRAIN, 2, 2, 1), x[:, :2]
    layers = [cls(2, 2, padding="same", num_examples=N_TRAIN) for cls in CONV] + [
        cls(2, num_examples=N_TRAIN) for cls in DENSE[:2]
    ]
    silent = L.DenseLocalReparameterization(2)  # no num_examples: no add_loss
    model = keras.Sequential(
        [keras.Input((2, 2, 1)), *layers[:3], keras.layers.Flatten(), *layers[3:], silent]
    )
    model(images)
    assert len(model.losses) == len(layers) == 5
    kl = sum(float(layer.kl_divergence()) for layer in layers) / N_TRAIN
    np.testing.assert_allclose(sum(float(loss) for loss in model.losses), kl, rtol=1e-5)
    model.compile(optimizer="adam", loss="mse", metrics=["mse"])
    history = model.fit(images, y, batch_size=32, epochs=1, validation_data=(images, y), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    kl = sum(float(layer.kl_divergence()) for layer in layers) / N_TRAIN
    result = model.evaluate(images, y, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"] - result["mse"], kl, rtol=1e-4)
    # The validation loss is the same quantity as the training loss (likelihood + KL / N).
    logs = history.history
    assert logs["val_loss"][0] - logs["val_mse"][0] == pytest.approx(kl, rel=1e-3)


@pytest.mark.parametrize("cls", DENSE + CONV, ids=lambda c: c.__name__)
def test_mixed_precision_outputs_float16_with_float32_weights_and_kl(cls):
    layer = _make(cls, dtype="mixed_float16", prior=kvi.priors.LearnableNormal())
    assert keras.backend.standardize_dtype(layer(_input(cls)).dtype) == "float16"
    assert all(w.dtype == "float32" for w in layer.weights if "seed" not in w.path)
    assert keras.backend.standardize_dtype(layer.kl_divergence().dtype) == "float32"


def test_raw_distribution_prior_is_accepted_but_not_serializable():
    layer = L.DenseFlipout(2, prior=tfd.Laplace(0.0, 1.0))
    layer(np.ones((2, 4), "float32"))
    assert np.isfinite(float(layer.kl_divergence(seed=1)))  # Monte Carlo: no closed form
    with pytest.raises(ValueError, match="cannot be serialized"):
        layer.get_config()


# ------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.DenseFlipout(0), "units"),
        (lambda: L.DenseFlipout(2.5), "units"),
        (lambda: L.Conv2DFlipout(-1, 3), "filters"),
        (lambda: L.Conv2DFlipout(2, (3,)), "kernel_size"),
        (lambda: L.Conv2DFlipout(2, 3, padding="full"), "padding"),
        (lambda: L.Conv2DFlipout(2, 3, strides=0), "strides"),
        (lambda: L.Conv2DFlipout(2, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (lambda: L.Conv2DFlipout(2, 3, data_format="channels_first"), "channels_last"),
        (lambda: L.DenseFlipout(2, prior=None), "prior"),
        (lambda: L.DenseFlipout(2, prior="laplace"), "prior"),
        (lambda: L.DenseFlipout(2, prior=42), "prior"),
        (lambda: L.DenseFlipout(2, bias_prior="cauchy"), "prior"),
        (lambda: L.DenseFlipout(2, posterior_scale_init=0.0), "posterior_scale_init"),
        (lambda: L.DenseFlipout(2, kl="exact"), "kl"),
        (lambda: L.DenseFlipout(2, kl_samples=0), "kl_samples"),
        (lambda: L.DenseFlipout(2, num_examples=0), "num_examples"),
        (lambda: kvi.priors.LearnableNormal(scale=-1.0), "scale"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_priors_and_inputs_raise_at_build_or_call():
    x = np.ones((2, 4), "float32")
    with pytest.raises(ValueError, match="event shape"):
        L.DenseFlipout(2, prior=tfd.Normal(np.zeros(5, "float32"), 1.0))(x)
    with pytest.raises(ValueError, match="float32"):
        L.DenseFlipout(2, prior=tfd.Normal(np.float64(0.0), np.float64(1.0)))(x)
    with pytest.raises(ValueError, match="rank|height"):
        L.Conv2DFlipout(2, 3)(x)
    latent = kvi.layers.NormalLatent(2, prior=kvi.priors.LearnableNormal())
    with pytest.raises(ValueError, match="LearnableNormal"):
        with _scope.recording(_scope.StepScope()):  # a Latent uses its prior in a model step
            latent(np.ones((2, 4), "float32"))


# ------------------------------------------------------------------------------ predictive
def test_predict_samples_draws_independent_samples_with_the_exact_spread():
    layer = L.DenseFlipout(3, posterior_scale_init=0.3)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer(inputs))
    x = _input(L.DenseFlipout, batch=5)
    samples = kvi.predict_samples(model, x, num_samples=1000, batch_size=2)
    assert samples.shape == (1000, 5, 3)
    kernel_loc, kernel_scale = _posterior_numpy(layer, "kernel")
    bias_loc, bias_scale = _posterior_numpy(layer, "bias")
    expected_var = (x[:, :, None] ** 2 * kernel_scale**2).sum(axis=1) + bias_scale**2
    var_se = expected_var * math.sqrt(2.0 / 999)
    assert np.all(np.abs(samples.var(axis=0, ddof=1) - expected_var) < 4 * var_se)
    mean, std = kvi.predictive_mean_std(samples)
    np.testing.assert_allclose(mean, samples.mean(axis=0))
    mean_se = np.sqrt(expected_var / 1000)
    assert np.all(np.abs(mean - (x @ kernel_loc + bias_loc)) < 4 * mean_se)
    assert not model.losses


def test_predictive_mean_std_with_a_likelihood_uses_the_law_of_total_variance():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(50, 7, 2)).astype("float32")
    mean, std = kvi.predictive_mean_std(
        samples, lambda out: tfd.Normal(out[..., :1], ops.softplus(out[..., 1:]))
    )
    loc, scale = samples[..., :1], _softplus(samples[..., 1:].astype(np.float64))
    np.testing.assert_allclose(mean, loc.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std**2, loc.var(axis=0) + (scale**2).mean(axis=0), rtol=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        kvi.predict_samples(keras.Sequential([keras.Input((1,))]), np.ones((1, 1)), 0)


# ------------------------------------------------------------------------------- examples
def test_regression_example_uncertainty_grows_far_from_the_data(tmp_path):
    import bnn_regression

    summary = bnn_regression.main(
        epochs=30, num_samples=100, output=str(tmp_path / "bnn.png"), seed=0
    )
    assert summary["far_to_near"] >= 2.0, summary
    assert summary["near_rmse"] < 0.2  # it fits the data (noise sd 0.1)
    assert os.path.getsize(summary["png"]) > 10_000


def test_mnist_example_smoke():
    import bnn_mnist

    summary = bnn_mnist.main(
        kind="mlp",
        epochs=2,
        num_train=1000,
        hidden=32,
        num_samples=5,
        jit_compile=JAX,  # compiled steps on JAX, where eager ones are slow; graph steps on TF
        verbose=0,
    )
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    assert 0.0 <= summary["test_ece"] <= 1.0
    calibrated = np.tile([0.75, 0.25] + [0.0] * 8, (4, 1))  # 75% confident, 3 of 4 right
    ece = bnn_mnist.expected_calibration_error(calibrated, np.array([0, 0, 0, 1]))
    assert ece == pytest.approx(0.0)
    confident = np.eye(10)[:4]  # 100% confident, 1 of 4 right
    assert bnn_mnist.expected_calibration_error(confident, np.ones(4, int)) == pytest.approx(0.75)

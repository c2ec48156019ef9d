"""VariationalModel: styles, metrics, likelihoods, saving, XLA and clear errors."""

import math

import keras
import numpy as np
import pytest
import scipy.special

import keras_vi as kvi

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def fit_history(model, data, jit=False, epochs=2, **fit_kwargs):
    model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=jit)
    return model.fit(data, epochs=epochs, batch_size=64, verbose=0, **fit_kwargs).history


@pytest.mark.parametrize("jit", [False, True])
def test_functional_vae_trains_and_reports_all_metrics(binary_data, jit):
    model = small_vae()
    history = fit_history(model, binary_data, jit=jit, epochs=6)
    assert set(history) == {"loss", "elbo", "nll", "kl", "kl_weight", "kl/z", "skipped_steps"}
    assert history["skipped_steps"] == [0.0] * 6
    assert history["loss"][-1] < history["loss"][0]
    for key in ("loss", "elbo", "nll", "kl"):
        assert all(math.isfinite(v) for v in history[key])
    np.testing.assert_allclose(history["elbo"], -np.array(history["loss"]), rtol=1e-5)
    np.testing.assert_allclose(
        history["elbo"], -np.array(history["nll"]) - np.array(history["kl"]), rtol=1e-4
    )
    np.testing.assert_allclose(history["kl"], history["kl/z"], rtol=1e-5)


def test_evaluate_is_the_epoch_mean_over_uneven_batches(binary_data):
    model = small_vae(kl_weight=0.5)
    model.compile(optimizer="adam")
    data = binary_data[:100]
    full = model.evaluate(data, batch_size=100, verbose=0, return_dict=True)
    # Fixed noise is not possible across two batchings, so compare the deterministic parts:
    # the KL (analytic, no sampling) must be the example-weighted mean over batches 64 + 36.
    split = model.evaluate(data, batch_size=64, verbose=0, return_dict=True)
    assert split["kl"] == pytest.approx(full["kl"], rel=1e-5)
    assert split["kl_weight"] == pytest.approx(0.5)
    assert split["loss"] == pytest.approx(split["nll"] + 0.5 * split["kl"], rel=1e-5)


class SubclassVAE(kvi.VariationalModel):
    def __init__(self, units=4, width=20, **kwargs):
        super().__init__(likelihood="bernoulli", **kwargs)
        self.encoder = keras.Sequential(
            [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2 * units)]
        )
        self.latent = kvi.layers.NormalLatent(units, name="code")
        self.decoder = keras.Sequential(
            [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(width)]
        )

    def call(self, x, training=None):
        return self.decoder(self.latent(self.encoder(x), training=training))


def test_subclass_style(binary_data):
    model = SubclassVAE(num_samples=2)
    history = fit_history(model, binary_data, epochs=5)
    assert "kl/code" in history
    assert history["loss"][-1] < history["loss"][0]


def test_supervised_categorical_likelihood():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    inputs = keras.Input((5,))
    z = kvi.layers.NormalLatent(3, name="z")(keras.layers.Dense(6)(inputs))
    model = kvi.VariationalModel(inputs, keras.layers.Dense(3)(z), likelihood="categorical")
    history = fit_history(model, x, y=y, epochs=15)
    assert history["nll"][-1] < 0.8 * history["nll"][0]


def test_compiled_keras_loss_is_the_fallback_nll(binary_data):
    model = small_vae(likelihood=None)
    model.compile(optimizer="adam", loss="mse")
    out = model.compute_objective(binary_data[:8], binary_data[:8], training=False)
    y_pred = to_numpy(out["y_pred"])
    expected = ((y_pred - binary_data[:8]) ** 2).mean(axis=-1).mean()
    assert float(out["nll"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "likelihood,target",
    [
        ("poisson", np.random.default_rng(2).poisson(3.0, size=(32, 20)).astype("float32")),
        ("normal", np.random.default_rng(3).normal(size=(32, 20)).astype("float32")),
    ],
)
def test_likelihood_log_prob_sums_event_axes(likelihood, target):
    model = small_vae(likelihood=likelihood)
    model.compile(optimizer="adam")
    out = model.compute_objective(target, target, training=False)
    # The log densities in float64 NumPy (JAX computes in float32 only).
    y_pred, y = to_numpy(out["y_pred"]).astype("float64"), target.astype("float64")
    if likelihood == "poisson":
        expected = (y * y_pred - np.exp(y_pred) - scipy.special.gammaln(y + 1)).sum(-1)
    else:
        expected = (-0.5 * (y - y_pred) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert float(out["nll"]) == pytest.approx(-expected.mean(), rel=1e-4)


def test_normal_likelihood_with_learned_scale():
    y = np.random.default_rng(4).normal(size=(16, 3)).astype("float32")
    inputs = keras.Input((3,))
    z = kvi.layers.NormalLatent(2)(keras.layers.Dense(4)(inputs))
    model = kvi.VariationalModel(inputs, keras.layers.Dense(6)(z), likelihood="normal")
    model.compile(optimizer="adam")
    out = model.compute_objective(y, y, training=False)
    loc, raw = np.split(to_numpy(out["y_pred"]), 2, axis=-1)
    scale = np.logaddexp(0.0, raw) + 1e-5  # softplus
    expected = to_numpy(tfd.Normal(loc, scale).log_prob(y)).sum(-1)
    assert float(out["nll"]) == pytest.approx(-expected.mean(), rel=1e-4)


def test_callable_likelihood():
    model = small_vae(likelihood=lambda logits: tfd.Independent(tfd.Bernoulli(logits=logits), 1))
    model.compile(optimizer="adam")
    data = np.ones((4, 20), "float32")
    out = model.compute_objective(data, data, training=False)
    expected = -to_numpy(tfd.Bernoulli(logits=out["y_pred"]).log_prob(1.0)).sum(-1).mean()
    assert float(out["nll"]) == pytest.approx(expected, rel=1e-5)


def test_iwae_and_num_samples_train_under_xla(binary_data):
    model = small_vae(num_samples=4, objective="iwae")
    history = fit_history(model, binary_data, jit=True, epochs=4)
    assert history["loss"][-1] < history["loss"][0]
    # The IWAE bound is at least the ELBO of the same samples.
    assert all(-loss >= elbo - 1e-4 for loss, elbo in zip(history["loss"], history["elbo"]))


def test_free_bits_floor_the_kl_term():
    model = small_vae(free_bits=0.5)
    model.compile(optimizer="adam")
    data = np.zeros((8, 20), "float32")
    # Zero kernels make q equal the prior: every per-dimension KL is 0, so the loss carries
    # exactly the floor 0.5 nats x 4 dimensions on top of the NLL.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and layer.units == 8:
            layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
            layer.bias.assign(
                np.concatenate([np.zeros(4), np.full(4, 0.5413248)]).astype("float32")
            )
    out = model.compute_objective(data, data, training=False)
    assert float(out["kl"]) == pytest.approx(0.0, abs=1e-4)
    assert float(out["loss_value"]) == pytest.approx(float(out["nll"]) + 0.5 * 4, rel=1e-5)


def test_elbo_value_is_identical_whatever_the_estimator(binary_data):
    values = []
    for estimator in [
        "reparameterization",
        "score_function",
        "stl",
        kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage()),
    ]:
        latent = kvi.layers.NormalLatent(4, name="z", estimator=estimator, kl="mc", seed=11)
        keras.utils.set_random_seed(7)
        model = small_vae(latent=latent, params_width=8)
        model.compile(optimizer="adam")
        out = model.compute_objective(binary_data[:32], binary_data[:32], training=True)
        values.append((float(out["loss"]), float(out["elbo"])))
    for loss, elbo in values[1:]:
        assert loss == pytest.approx(values[0][0], rel=1e-6)
        assert elbo == pytest.approx(values[0][1], rel=1e-6)


def test_score_function_trains_a_bernoulli_latent(binary_data):
    latent = kvi.layers.BernoulliLatent(8, name="bits")
    model = small_vae(latent=latent, params_width=8)
    history = fit_history(model, binary_data, epochs=15)
    assert history["elbo"][-1] > history["elbo"][0] + 1.0


def test_save_and_load_round_trip(tmp_path, binary_data):
    latent = kvi.layers.BernoulliLatent(
        6,
        name="bits",
        estimator=kvi.estimators.ScoreFunction(
            baseline=kvi.estimators.baselines.MovingAverage(0.8)
        ),
        kl="mc",
        kl_samples=3,
    )
    model = small_vae(
        latent=latent, params_width=6, kl_weight=kvi.schedules.Linear(warmup_steps=7), num_samples=2
    )
    fit_history(model, binary_data, epochs=1)
    path = tmp_path / "vae.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kvi.VariationalModel)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    layer = loaded.get_layer("bits")
    assert isinstance(layer.resolved_estimator, kvi.estimators.ScoreFunction)
    assert layer.resolved_estimator.baseline.decay == 0.8
    assert float(to_numpy(layer.baseline.average)) == pytest.approx(
        float(to_numpy(model.get_layer("bits").baseline.average))
    )
    assert layer.kl == "mc" and layer.kl_samples == 3
    assert loaded.num_samples == 2
    assert isinstance(loaded._kl_schedule, kvi.schedules.Linear)
    assert loaded._kl_schedule.warmup_steps == 7
    assert float(to_numpy(loaded.kl_weight)) == pytest.approx(float(to_numpy(model.kl_weight)))
    loaded.fit(binary_data, epochs=1, batch_size=64, verbose=0)


def test_log_likelihood_is_above_the_elbo(binary_data):
    model = small_vae()
    fit_history(model, binary_data, epochs=3)
    elbo = model.evaluate(binary_data, verbose=0, return_dict=True)["elbo"]
    ll = kvi.log_likelihood(model, binary_data, num_samples=50)
    assert ll.shape == (len(binary_data),)
    assert elbo < ll.mean() < 0

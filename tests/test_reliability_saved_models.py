"""Models saved by keras_vi 0.1.0 (tests/data) must keep loading in every later version.

The fixture is written once by tests/data/make_fixture.py; never regenerate it to make this
test pass: a failure here means a saved user model would no longer load.
"""

import os

import keras
import numpy as np
import pytest

import keras_vi as kvi

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def saved():
    model = keras.models.load_model(os.path.join(DATA, "vae_v0_1_0.keras"))
    expected = np.load(os.path.join(DATA, "vae_v0_1_0.npz"))
    return model, expected


def test_saved_model_config_round_trips(saved):
    model, _ = saved
    assert isinstance(model, kvi.VariationalModel)
    assert model.num_samples == 2 and model.objective == "elbo"
    assert model.free_bits == pytest.approx(0.01) and model.num_examples == 64
    assert isinstance(model._kl_schedule, kvi.schedules.Linear)
    assert model._kl_schedule.warmup_steps == 10
    bits = model.get_layer("bits")
    assert isinstance(bits.resolved_estimator, kvi.estimators.ScoreFunction)
    assert bits.resolved_estimator.baseline.decay == pytest.approx(0.8)
    assert model.get_layer("z").kl == "analytic"
    assert isinstance(model.get_layer("flipout"), kvi.layers.DenseFlipout)


def test_saved_weights_and_state(saved):
    model, expected = saved
    weights = [expected[f"weight_{i}"] for i in range(len(model.weights))]
    for variable, value in zip(model.weights, weights):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert float(model.kl_weight.numpy()) == pytest.approx(float(expected["kl_weight"]))
    average = model.get_layer("bits").baseline.average.numpy()
    assert float(average) == pytest.approx(float(expected["baseline_average"]))


def test_saved_model_computes_the_same_numbers(saved):
    model, expected = saved
    latent = model.get_layer("z")
    params = model.get_layer("zp")(expected["h"]).numpy()
    np.testing.assert_allclose(params, expected["z_params"], rtol=1e-6)
    q = latent.make_distribution(params)
    np.testing.assert_allclose(
        q.kl_divergence(latent.prior_distribution(q)).numpy(), expected["z_kl"], rtol=1e-5
    )


def test_saved_model_keeps_training(saved):
    model, expected = saved
    x = (np.random.default_rng(0).random((64, 12)) > 0.5).astype("float32")
    history = model.fit(x, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert int(model.optimizer.iterations.numpy()) == int(expected["iterations"]) + 4
